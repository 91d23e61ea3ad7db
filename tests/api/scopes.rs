//! API-key scopes from the outside: a key does what its scopes say and nothing else (403
//! `insufficient_scope` naming the scope it lacks, and nothing changed), a verifier's key reads
//! every tenant's revocations without being able to mint, and keys made before scopes keep what
//! they could do.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    assert_error, cli::Cli, www_authenticate, Backend, TestApp, TestDatabase, ACME_KEY, GLOBEX_KEY,
    JSON,
};

const FEED: &str = "/public-api/sessions/revocations";

/// Creates a key with `args` on `db` through the CLI, and returns it.
async fn create_key(db: &TestDatabase, args: &[&str]) -> String {
    let mut all = vec!["api-key", "create"];
    all.extend_from_slice(args);
    let run = Cli::new(db).run(&all).await;
    run.assert_success();
    let keys = run.key_lines();
    assert_eq!(keys.len(), 1, "one key printed: {}", run.stdout);
    keys[0].trim().to_owned()
}

/// A 403 `insufficient_scope` that names `scope` in the body and in the challenge.
async fn assert_lacks(response: reqwest::Response, scope: &str) {
    let www = www_authenticate(&response);
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains(&format!("scope=\"{scope}\"")),
        "{www}"
    );
    let body = assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(body["error"]["details"]["required_scope"], scope, "{body}");
}

async fn mint_and_revoke(app: &TestApp, key: &str, session_id: &str) -> String {
    let (data, _) = app.mint_ok(key, json!({"session_id": session_id})).await;
    let jti = data["jti"].as_str().expect("jti").to_owned();
    let response = app
        .request(
            Method::DELETE,
            &format!("/public-api/sessions/{jti}"),
            Some(key),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    jti
}

async fn introspect(app: &TestApp, key: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/public-api/sessions/introspect"))
        .bearer_auth(key)
        .header("content-type", JSON)
        .body(json!({ "token": token }).to_string())
        .send()
        .await
        .expect("introspect")
}

/// The key a chat service holds: the platform's, with `revocations:read` only. It reads every
/// tenant's revocations; it can neither mint (into any tenant's Neo Support session, as a
/// platform key otherwise could) nor read, revoke or introspect tokens.
async fn a_feed_reading_key_reads_every_tenants_feed_and_does_nothing_else(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let feed_key = create_key(
        &db,
        &[
            "--tenant",
            "neo",
            "--name",
            "chat service",
            "--scope",
            "revocations:read",
        ],
    )
    .await;
    let app = TestApp::builder(backend).database(db).spawn().await;

    let acme_jti = mint_and_revoke(&app, ACME_KEY, "s-acme-1").await;
    let globex_jti = mint_and_revoke(&app, GLOBEX_KEY, "s-globex-1").await;
    let jtis = app.revoked_jtis(&feed_key, 2).await;
    assert!(
        jtis.contains(&acme_jti) && jtis.contains(&globex_jti),
        "{jtis:?}"
    );

    let mints = app.mint_count().await;
    for body in [
        json!({"session_id": "s-acme-1"}),
        json!({"session_id": "s-acme-support", "client_id": "acme"}),
    ] {
        assert_lacks(app.mint(&feed_key, body).await, "sessions:mint").await;
    }
    assert_eq!(app.mint_count().await, mints, "nothing minted");

    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let jti = data["jti"].as_str().expect("jti");
    let token = data["token"].as_str().expect("token");
    let record = format!("/public-api/sessions/{jti}");
    assert_lacks(
        app.request(Method::GET, &record, Some(&feed_key)).await,
        "tokens:manage",
    )
    .await;
    assert_lacks(
        app.request(Method::GET, "/public-api/sessions", Some(&feed_key))
            .await,
        "tokens:manage",
    )
    .await;
    assert_lacks(
        app.request(Method::DELETE, &record, Some(&feed_key)).await,
        "tokens:manage",
    )
    .await;
    let bulk = app
        .client
        .post(app.url("/public-api/sessions/revoke"))
        .bearer_auth(&feed_key)
        .header("content-type", JSON)
        .body(json!({"session_id": "s-acme-1"}).to_string())
        .send()
        .await
        .expect("bulk revoke");
    assert_lacks(bulk, "tokens:manage").await;
    assert_lacks(introspect(&app, &feed_key, token).await, "tokens:manage").await;

    // The token the refused calls aimed at is untouched.
    let response = app.request(Method::GET, &record, Some(ACME_KEY)).await;
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["active"], true, "{body}");
}

/// A tenant's key that may only mint: no feed, no revoking, even of its own tokens.
async fn a_mint_only_key_mints_and_nothing_else(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let key = create_key(
        &db,
        &[
            "--tenant",
            "acme",
            "--name",
            "teams relay",
            "--scope",
            "sessions:mint",
        ],
    )
    .await;
    let app = TestApp::builder(backend).database(db).spawn().await;

    let (data, _) = app.mint_ok(&key, json!({"session_id": "s-acme-1"})).await;
    let jti = data["jti"].as_str().expect("jti");
    assert_lacks(
        app.request(
            Method::DELETE,
            &format!("/public-api/sessions/{jti}"),
            Some(&key),
        )
        .await,
        "tokens:manage",
    )
    .await;
    assert_lacks(
        app.request(Method::GET, FEED, Some(&key)).await,
        "revocations:read",
    )
    .await;
    assert!(
        app.revoked_jtis(ACME_KEY, 0).await.is_empty(),
        "nothing was revoked"
    );
}

/// A key stored before scopes existed (no scopes in its row) mints, manages tokens and reads
/// the feed as it did; a key of the same tenant made with `--scope` does not inherit that.
async fn keys_made_before_scopes_keep_what_they_could_do(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    sqlx::query("UPDATE api_keys SET scopes = NULL WHERE id = 'k-acme'")
        .execute(&db.pool)
        .await
        .expect("make k-acme a key from before scopes");
    let app = TestApp::builder(backend).database(db).spawn().await;

    let jti = mint_and_revoke(&app, ACME_KEY, "s-acme-1").await;
    assert!(app.revoked_jtis(ACME_KEY, 1).await.contains(&jti));
    let response = app
        .request(Method::GET, "/public-api/sessions", Some(ACME_KEY))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// A scope name that a newer build wrote and this one does not know grants nothing (it is not
/// read as "no scopes stored", which would grant the pre-scope set).
async fn an_unknown_stored_scope_grants_nothing(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    sqlx::query("UPDATE api_keys SET scopes = 'admin:everything' WHERE id = 'k-acme'")
        .execute(&db.pool)
        .await
        .expect("store an unknown scope");
    let app = TestApp::builder(backend).database(db).spawn().await;
    assert_lacks(
        app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})).await,
        "sessions:mint",
    )
    .await;
    assert_eq!(app.mint_count().await, 0);
}

backend_tests!(
    a_feed_reading_key_reads_every_tenants_feed_and_does_nothing_else,
    a_mint_only_key_mints_and_nothing_else,
    keys_made_before_scopes_keep_what_they_could_do,
    an_unknown_stored_scope_grants_nothing,
);

/// `api-key create --scope`: known names only, `directory:write` only for the platform, and a
/// platform key that cannot act in other tenants needs no `--platform`; refusals write nothing.
#[tokio::test]
async fn api_key_create_checks_the_scopes_it_is_given() {
    let db = TestDatabase::seeded(Backend::Postgres).await;
    let cli = Cli::new(&db);
    let keys_before = db.count("api_keys").await;

    for (args, says) in [
        (
            vec!["--tenant", "acme", "--name", "x", "--scope", "tokens:write"],
            "unknown scope",
        ),
        (
            vec![
                "--tenant",
                "acme",
                "--name",
                "x",
                "--scope",
                "directory:write",
            ],
            "platform",
        ),
        (
            vec!["--tenant", "neo", "--name", "x", "--scope", "sessions:mint"],
            "--platform",
        ),
        (vec!["--tenant", "neo", "--name", "x"], "--platform"),
    ] {
        let mut all = vec!["api-key", "create"];
        all.extend_from_slice(&args);
        let run = cli.run(&all).await;
        run.assert_failure();
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(run.key_lines().is_empty(), "{args:?}: no key printed");
    }
    assert_eq!(db.count("api_keys").await, keys_before, "nothing written");

    // Comma-separated and repeated forms both work; the listing says what each key may do.
    create_key(
        &db,
        &[
            "--tenant",
            "neo",
            "--name",
            "verifier",
            "--scope",
            "revocations:read",
        ],
    )
    .await;
    create_key(
        &db,
        &[
            "--tenant",
            "acme",
            "--name",
            "relay",
            "--scope",
            "sessions:mint,revocations:read",
        ],
    )
    .await;
    let run = cli
        .run(&["api-key", "list", "--tenant", "acme", "--output", "json"])
        .await;
    run.assert_success();
    let keys: Value = serde_json::from_str(&run.stdout).expect("json listing");
    let relay = keys
        .as_array()
        .expect("array")
        .iter()
        .find(|k| k["name"] == "relay")
        .expect("relay listed");
    assert_eq!(
        relay["scopes"],
        json!(["sessions:mint", "revocations:read"])
    );
    let seeded = keys
        .as_array()
        .expect("array")
        .iter()
        .find(|k| k["id"] == "k-acme")
        .expect("k-acme listed");
    assert_eq!(
        seeded["scopes"],
        json!([
            "sessions:mint",
            "tokens:manage",
            "revocations:read",
            "directory:read"
        ])
    );
}
