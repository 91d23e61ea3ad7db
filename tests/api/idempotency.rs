//! `Idempotency-Key` on the mint: a retry of the same request gets the token the first one minted
//! (one jti, one mint record), the same key with another body is refused, concurrent retries mint
//! once, and keys are per credential.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_error, Backend, TestApp, ACME_KEY, GLOBEX_KEY};

const KEY: &str = "relay-retry-7f3a";

/// A mint with this `Idempotency-Key`.
async fn send_keyed(app: &TestApp, credential: &str, key: &str, body: Value) -> reqwest::Response {
    app.mint_with(Some(credential), &[("Idempotency-Key", key)], body)
        .await
}

/// A mint with this `Idempotency-Key`, asserting 200: `data` and `meta`.
async fn mint_keyed(app: &TestApp, credential: &str, key: &str, body: Value) -> (Value, Value) {
    let response = send_keyed(app, credential, key, body).await;
    let status = response.status();
    let json: Value = response.json().await.expect("json body");
    assert_eq!(status, StatusCode::OK, "{json}");
    (json["data"].clone(), json["meta"].clone())
}

async fn a_retry_gets_the_first_token_again(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"session_id": "s-acme-1", "end_user": "pat", "ttl_seconds": 600});
    let (first, first_meta) = mint_keyed(&app, ACME_KEY, KEY, body.clone()).await;
    assert!(first_meta
        .get("warnings")
        .is_none_or(|w| w.as_array().is_some_and(|w| w.is_empty())));

    // The same body with its keys in another order is the same request.
    let reordered = json!({"ttl_seconds": 600, "end_user": "pat", "session_id": "s-acme-1"});
    let (again, meta) = mint_keyed(&app, ACME_KEY, KEY, reordered).await;
    assert_eq!(again["jti"], first["jti"]);
    assert_eq!(again["expires_at"], first["expires_at"]);
    assert_eq!(again["session_id"], "s-acme-1");
    let expires_in = again["expires_in"].as_u64().expect("expires_in");
    assert!((590..=600).contains(&expires_in), "{expires_in}");
    assert!(meta["warnings"][0]
        .as_str()
        .is_some_and(|w| w.contains("Idempotency-Key replay")));
    assert_eq!(app.mint_count().await, 1, "a replay records no new mint");

    // The replayed token is a valid token with the first one's claims.
    let claims_first = app.verify(first["token"].as_str().expect("token")).await;
    let claims_again = app.verify(again["token"].as_str().expect("token")).await;
    assert_eq!(claims_first, claims_again);

    // Without the key, or with another key, the same body mints a new token.
    let (fresh, _) = app.mint_ok(ACME_KEY, body.clone()).await;
    assert_ne!(fresh["jti"], first["jti"]);
    let (other, _) = mint_keyed(&app, ACME_KEY, "another-key", body.clone()).await;
    assert_ne!(other["jti"], first["jti"]);
    assert_eq!(app.mint_count().await, 3);
}

async fn the_same_key_with_another_body_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    mint_keyed(&app, ACME_KEY, KEY, json!({"session_id": "s-acme-1"})).await;
    let response = send_keyed(
        &app,
        ACME_KEY,
        KEY,
        json!({"session_id": "s-acme-1", "end_user": "mallory"}),
    )
    .await;
    assert_error(response, StatusCode::CONFLICT, "idempotency_key_reused").await;
    assert_eq!(app.mint_count().await, 1);
}

async fn keys_belong_to_one_credential(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (acme, _) = mint_keyed(&app, ACME_KEY, KEY, json!({"session_id": "s-acme-1"})).await;
    // Another tenant using the same key string neither sees acme's token nor is refused.
    let response = send_keyed(&app, GLOBEX_KEY, KEY, json!({"session_id": "s-acme-1"})).await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    let (globex, _) = mint_keyed(&app, GLOBEX_KEY, KEY, json!({"session_id": "s-globex-1"})).await;
    assert_ne!(globex["jti"], acme["jti"]);
    assert_eq!(globex["session_id"], "s-globex-1");
}

async fn a_refused_request_does_not_use_up_its_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = send_keyed(
        &app,
        ACME_KEY,
        KEY,
        json!({"session_id": "no-such-session"}),
    )
    .await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    // The same request again is tried again (and refused again), not answered from a claim.
    let response = send_keyed(
        &app,
        ACME_KEY,
        KEY,
        json!({"session_id": "no-such-session"}),
    )
    .await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    // And after a failure the key may carry another request.
    mint_keyed(&app, ACME_KEY, KEY, json!({"session_id": "s-acme-1"})).await;
    assert_eq!(app.mint_count().await, 1);
}

async fn concurrent_retries_mint_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"session_id": "s-acme-1", "end_user": "pat"});
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = app
            .client
            .post(app.url("/public-api/sessions"))
            .bearer_auth(ACME_KEY)
            .header("Idempotency-Key", KEY)
            .json(&body);
        attempts.spawn(async move { request.send().await.expect("request") });
    }
    let responses = attempts.join_all().await;
    let mut jtis = std::collections::HashSet::new();
    for response in responses {
        let status = response.status();
        let json: Value = response.json().await.expect("json");
        match status {
            StatusCode::OK => {
                jtis.insert(json["data"]["jti"].as_str().expect("jti").to_owned());
            }
            // A retry that outwaits the first request is told so, never given a second token.
            StatusCode::CONFLICT => {
                assert_eq!(json["error"]["code"], "idempotency_key_in_use", "{json}")
            }
            other => panic!("{other}: {json}"),
        }
    }
    assert_eq!(jtis.len(), 1, "{jtis:?}");
    assert_eq!(app.mint_count().await, 1);
}

async fn a_malformed_key_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long = "k".repeat(256);
    for key in ["", "has space", long.as_str()] {
        let response = send_keyed(&app, ACME_KEY, key, json!({"session_id": "s-acme-1"})).await;
        let body = assert_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(
            body["error"]["details"].get("Idempotency-Key").is_some(),
            "{body}"
        );
    }
    let response = app
        .mint_with(
            Some(ACME_KEY),
            &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
            json!({"session_id": "s-acme-1"}),
        )
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(app.mint_count().await, 0);
}

/// Whoever can write `mint_idempotency` must not get tokens: a replay whose stored claims were
/// changed outside the service (another tenant's session, another end user, a far expiry) is
/// refused with a 500 that says nothing, and no token is signed.
async fn a_replay_of_edited_claims_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"session_id": "s-acme-1", "end_user": "pat", "ttl_seconds": 600});
    let (first, _) = mint_keyed(&app, ACME_KEY, KEY, body.clone()).await;

    let stored: String = sqlx::query_scalar("SELECT claims FROM mint_idempotency")
        .fetch_one(&app.db.pool)
        .await
        .expect("the settled claim");
    let mut claims: Value = serde_json::from_str(&stored).expect("claims JSON");
    assert_eq!(claims["jti"], first["jti"]);
    let far = chrono::Utc::now().timestamp() + 10 * 365 * 24 * 3600;
    claims["session_id"] = json!("s-globex-1");
    claims["client_id"] = json!("globex");
    claims["end_user"] = json!("mallory");
    claims["sub"] = json!("mallory");
    claims["exp"] = json!(far);
    sqlx::query("UPDATE mint_idempotency SET claims = $1")
        .bind(claims.to_string())
        .execute(&app.db.pool)
        .await
        .expect("edit the stored claims");

    let response = send_keyed(&app, ACME_KEY, KEY, body).await;
    let refused = assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert!(refused.get("data").is_none(), "{refused}");
    let text = refused.to_string();
    assert!(!text.contains("eyJ") && !text.contains("globex"), "{text}");
    assert_eq!(app.mint_count().await, 1, "no mint was recorded");

    // Putting the first claims back makes the replay work again: the row is refused for what
    // it says, not for having been touched.
    sqlx::query("UPDATE mint_idempotency SET claims = $1")
        .bind(stored)
        .execute(&app.db.pool)
        .await
        .expect("restore the stored claims");
    let (again, _) = mint_keyed(
        &app,
        ACME_KEY,
        KEY,
        json!({"session_id": "s-acme-1", "end_user": "pat", "ttl_seconds": 600}),
    )
    .await;
    assert_eq!(again["jti"], first["jti"]);
}

/// The MAC binds the claims to their caller and key: another caller (here with a key of its
/// own and write access to the table) cannot take over a row that verifies for someone else.
async fn claims_moved_to_another_caller_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"session_id": "s-globex-1"});
    mint_keyed(&app, ACME_KEY, KEY, json!({"session_id": "s-acme-1"})).await;
    mint_keyed(&app, GLOBEX_KEY, KEY, body.clone()).await;
    sqlx::query(
        "UPDATE mint_idempotency SET
             claims = (SELECT claims FROM mint_idempotency WHERE claims LIKE '%s-acme-1%'),
             claims_mac = (SELECT claims_mac FROM mint_idempotency WHERE claims LIKE '%s-acme-1%')
         WHERE claims LIKE '%s-globex-1%'",
    )
    .execute(&app.db.pool)
    .await
    .expect("copy acme's claims onto globex's row");

    let response = send_keyed(&app, GLOBEX_KEY, KEY, body).await;
    assert_error(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert_eq!(app.mint_count().await, 2);
}

/// With a static signing key file (no key-encryption key), the MAC key comes from that key:
/// replays work as with keys in the database.
async fn a_replay_works_with_a_static_signing_key(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    let body = json!({"session_id": "s-acme-1", "end_user": "pat"});
    let (first, _) = mint_keyed(&app, ACME_KEY, KEY, body.clone()).await;
    let (again, _) = mint_keyed(&app, ACME_KEY, KEY, body).await;
    assert_eq!(again["jti"], first["jti"]);
    assert_eq!(app.mint_count().await, 1);
}

backend_tests!(
    a_retry_gets_the_first_token_again,
    the_same_key_with_another_body_is_refused,
    keys_belong_to_one_credential,
    a_refused_request_does_not_use_up_its_key,
    concurrent_retries_mint_once,
    a_malformed_key_is_refused,
    a_replay_of_edited_claims_is_refused,
    claims_moved_to_another_caller_are_refused,
    a_replay_works_with_a_static_signing_key,
);
