//! The `neo-sessions-verify` crate, as the chat service would use it against a running token service:
//! a good token passes, and each thing a verifier must check is checked. The example service
//! (`clients/rust/examples/verify_token.rs`) guards a chat route with it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use neo_sessions_verify::{Verifier, VerifierConfig, VerifyError, SESSION_TOKEN_TYP};
use serde_json::{json, Value};

use crate::support::{Backend, TestApp, ACME_KEY};

fn verifier_for(app: &TestApp) -> VerifierConfig {
    let mut config =
        VerifierConfig::for_issuer(&app.config.token.issuer, &app.config.token.audience);
    config.jwks_url = app.url("/.well-known/jwks.json");
    config.leeway = Duration::from_secs(5);
    config
}

/// Revokes one token as Acme (`DELETE /public-api/sessions/{jti}`).
async fn revoke(app: &TestApp, jti: &str) -> reqwest::Response {
    app.request(
        reqwest::Method::DELETE,
        &format!("/public-api/sessions/{jti}"),
        Some(ACME_KEY),
    )
    .await
}

async fn minted(app: &TestApp) -> String {
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-1", "end_user": "pat"}),
        )
        .await;
    data["token"].as_str().expect("token").to_owned()
}

/// Claims like the server's, for tokens the test signs itself.
fn claims(app: &TestApp, overrides: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": app.config.token.issuer, "aud": app.config.token.audience, "sub": "pat",
        "jti": uuid::Uuid::new_v4(), "iat": now, "nbf": now, "exp": now + 600,
        "session_id": "s-acme-1", "client_id": "acme", "end_company_id": null,
        "end_user": "pat", "end_user_email": null, "allowed_agent_ids": [], "scope": "chat:session",
    });
    if let (Some(claims), Value::Object(overrides)) = (claims.as_object_mut(), overrides) {
        claims.extend(overrides);
    }
    claims
}

async fn server_kid(app: &TestApp) -> String {
    let jwks = app.get_json("/.well-known/jwks.json").await;
    jwks["keys"][0]["kid"].as_str().expect("kid").to_owned()
}

pub(crate) async fn signed(app: &TestApp, overrides: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(server_kid(app).await);
    header.typ = Some(SESSION_TOKEN_TYP.to_owned());
    let key = EncodingKey::from_ec_pem(&app.signing_key_pem()).expect("key");
    encode(&header, &claims(app, overrides), &key).expect("sign")
}

async fn the_verify_module_accepts_good_tokens_and_refuses_each_bad_one(backend: Backend) {
    let app = TestApp::builder(backend).static_signing_key().spawn().await;
    let verifier = Verifier::new(verifier_for(&app)).expect("verifier");

    let token = minted(&app).await;
    let verified = verifier.verify(&token, "s-acme-1").await.expect("valid");
    assert_eq!(verified.client_id, "acme");
    assert_eq!(verified.sub, "pat");
    // A token the test signed with the server's key and the server's claims is just as good.
    verifier
        .verify(&signed(&app, json!({})).await, "s-acme-1")
        .await
        .expect("valid");

    let refused = |result: Result<_, VerifyError>| result.expect_err("refused");
    assert!(matches!(
        refused(verifier.verify(&token, "s-acme-2").await),
        VerifyError::WrongSession
    ));
    let now = chrono::Utc::now().timestamp();
    for (overrides, expected) in [
        (json!({"aud": "https://elsewhere"}), "audience"),
        (json!({"iss": "https://evil.example"}), "issuer"),
        (
            json!({"exp": now - 3600, "iat": now - 4000, "nbf": now - 4000}),
            "expired",
        ),
    ] {
        let error = refused(
            verifier
                .verify(&signed(&app, overrides).await, "s-acme-1")
                .await,
        );
        assert!(
            error.to_string().contains(expected),
            "{expected}: got {error}"
        );
    }

    // A key that is not published, under a made-up kid.
    let (_, der) =
        neo_sessions::tokens::SigningKey::generate(neo_sessions::config::SigningAlgorithm::ES256)
            .expect("key");
    let foreign = EncodingKey::from_ec_der(&der);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("not-a-published-kid".to_owned());
    header.typ = Some(SESSION_TOKEN_TYP.to_owned());
    let unknown = encode(&header, &claims(&app, json!({})), &foreign).expect("sign");
    assert!(matches!(
        refused(verifier.verify(&unknown, "s-acme-1").await),
        VerifyError::UnknownKey { .. }
    ));

    // The header asks for another algorithm than the key's (HS256 with the public key as the
    // "secret", the classic confusion), and `alg: none`.
    let kid = server_kid(&app).await;
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    hs.typ = Some(SESSION_TOKEN_TYP.to_owned());
    let confused = encode(
        &hs,
        &claims(&app, json!({})),
        &EncodingKey::from_secret(b"public"),
    )
    .expect("sign");
    assert!(matches!(
        refused(verifier.verify(&confused, "s-acme-1").await),
        VerifyError::AlgorithmMismatch
    ));
    let b64 = |v: &Value| {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": kid, "typ": SESSION_TOKEN_TYP})),
        b64(&claims(&app, json!({})))
    );
    assert!(refused(verifier.verify(&none, "s-acme-1").await)
        .to_string()
        .contains("JWT"));

    // Another JWT altogether (no typ of ours).
    let mut plain = Header::new(Algorithm::ES256);
    plain.kid = Some(kid);
    let key = EncodingKey::from_ec_pem(&app.signing_key_pem()).expect("key");
    let untyped = encode(&plain, &claims(&app, json!({})), &key).expect("sign");
    assert!(matches!(
        refused(verifier.verify(&untyped, "s-acme-1").await),
        VerifyError::WrongType
    ));
}

/// The example chat service, run as a process, serves a session's route to the holder of that
/// session's token minted by a running server, and refuses everyone else.
async fn the_example_service_verifies_a_token_minted_by_a_running_server(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = minted(&app).await;

    // Examples are built next to the test binary (target/<profile>/examples).
    let example = std::env::current_exe()
        .expect("test binary")
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples/verify_token");
    let mut child: Child = Command::new(&example)
        .env("NEO_VERIFY_ISSUER", &app.config.token.issuer)
        .env("NEO_VERIFY_AUDIENCE", &app.config.token.audience)
        .env("NEO_VERIFY_JWKS_URL", app.url("/.well-known/jwks.json"))
        .env("NEO_VERIFY_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", example.display()));
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("the example prints its address");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    let get = |session: &str, credential: &str| {
        app.client
            .get(format!("http://{address}/chat/sessions/{session}/messages"))
            .bearer_auth(credential)
            .send()
    };
    let ok = get("s-acme-1", &token).await.expect("request");
    assert_eq!(ok.status(), reqwest::StatusCode::OK);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["session_id"], "s-acme-1");
    assert_eq!(
        get("s-acme-2", &token).await.expect("request").status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("s-acme-1", "garbage").await.expect("request").status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    let _ = child.kill();
    let _ = child.wait();
}

async fn jti_of(app: &TestApp, token: &str) -> String {
    app.verify(token).await.jti.to_string()
}

/// With the revocation feed, a revoked token is refused (and only that one), by an explicit
/// refresh and by the polling task within its interval; tokens of another tenant's key are not
/// in the feed a tenant key reads, and a feed the key may not read is an error, not a silence.
async fn the_verify_module_refuses_revoked_tokens_from_the_feed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut config = verifier_for(&app).with_revocation_feed(ACME_KEY, Duration::from_millis(100));
    if let Some(feed) = config.revocations.as_mut() {
        feed.url = app.url("/public-api/sessions/revocations");
    }
    let verifier = std::sync::Arc::new(Verifier::new(config).expect("verifier"));

    let (first, second, third) = (minted(&app).await, minted(&app).await, minted(&app).await);
    assert_eq!(verifier.refresh_revocations().await.expect("feed"), 0);
    verifier.verify(&first, "s-acme-1").await.expect("valid");

    let jti = jti_of(&app, &first).await;
    let response = revoke(&app, &jti).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_revoked(&verifier, &first, "s-acme-1", "the revoked token").await;
    assert_eq!(verifier.refresh_revocations().await.expect("feed"), 1);
    verifier
        .verify(&second, "s-acme-1")
        .await
        .expect("still valid");

    // The polling task picks a revocation up by itself.
    let polling = verifier
        .spawn_revocation_polling()
        .expect("a feed is configured");
    let jti = jti_of(&app, &second).await;
    revoke(&app, &jti).await;
    let started = std::time::Instant::now();
    while verifier.verify(&second, "s-acme-1").await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the polled feed never refused the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    verifier
        .verify(&third, "s-acme-1")
        .await
        .expect("never revoked");
    assert!(verifier.revocations_age().expect("refreshed") < Duration::from_secs(2));
    polling.abort();

    // A key that may not read the feed: the refresh says so.
    let mut config = verifier_for(&app).with_revocation_feed(
        "neo_sk_test_000000000000000000000000",
        Duration::from_secs(1),
    );
    if let Some(feed) = config.revocations.as_mut() {
        feed.url = app.url("/public-api/sessions/revocations");
    }
    let refused = Verifier::new(config).expect("verifier");
    assert!(matches!(
        refused.refresh_revocations().await,
        Err(VerifyError::RevocationFeed(_))
    ));
}

/// A verifier following the feed with `verifier`, and tokens A (session s-acme-1) and B
/// (session s-acme-wl) with their jtis.
async fn feed_and_two_tokens(app: &TestApp) -> (Verifier, [(String, String); 2]) {
    let mut config = verifier_for(app).with_revocation_feed(ACME_KEY, Duration::from_secs(60));
    if let Some(feed) = config.revocations.as_mut() {
        feed.url = app.url("/public-api/sessions/revocations");
    }
    let verifier = Verifier::new(config).expect("verifier");
    let a = minted(app).await;
    let (data, _) = app
        .mint_ok(
            ACME_KEY,
            json!({"session_id": "s-acme-wl", "end_user": "pat"}),
        )
        .await;
    let b = data["token"].as_str().expect("token").to_owned();
    let (a_jti, b_jti) = (jti_of(app, &a).await, jti_of(app, &b).await);
    assert_eq!(verifier.refresh_revocations().await.expect("feed"), 0);
    (verifier, [(a, a_jti), (b, b_jti)])
}

/// Refreshes the verifier's deny-list until it refuses `token` as revoked (within 10 s: the feed
/// hands a revocation out once no transaction older than its own is in flight on the whole
/// PostgreSQL server, other tests' included).
async fn assert_revoked(verifier: &Verifier, token: &str, session: &str, what: &str) {
    let started = std::time::Instant::now();
    loop {
        verifier.refresh_revocations().await.expect("feed");
        match verifier.verify(token, session).await {
            Err(VerifyError::Revoked) => return,
            other => assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: the verifier following the feed still accepts it ({other:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 20, item 1, as it happens: a bulk revoke of A's session blocks on a row lock, B is
/// revoked and commits, a verifier polls, then the bulk revoke commits with a `revoked_at`
/// before B's. Following the feed's cursor, the verifier must still learn of A.
#[tokio::test]
async fn a_revocation_that_commits_late_still_reaches_a_verifier_following_the_feed() {
    use sqlx::Connection;
    let app = TestApp::spawn(Backend::Postgres).await;
    let (verifier, [(a, a_jti), (b, b_jti)]) = feed_and_two_tokens(&app).await;

    let mut holder = sqlx::PgConnection::connect(&app.db.url)
        .await
        .expect("connect");
    let mut lock = holder.begin().await.expect("begin");
    sqlx::query("SELECT jti FROM session_token_mints WHERE CAST(jti AS TEXT) = $1 FOR UPDATE")
        .bind(&a_jti)
        .fetch_one(&mut *lock)
        .await
        .expect("lock A");
    let bulk = {
        let (client, url) = (app.client.clone(), app.url("/public-api/sessions/revoke"));
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(ACME_KEY)
                .json(&json!({"session_id": "s-acme-1"}))
                .send()
                .await
                .expect("request")
        })
    };
    // Until the bulk revoke waits for A's lock (its `revoked_at` is taken by then).
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db.pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the bulk revoke never blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = revoke(&app, &b_jti).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // The verifier polls while the bulk revoke is in flight (today's code hands B out here and
    // moves its cursor past A's time; a feed with a horizon may hold B back until it is safe).
    verifier.refresh_revocations().await.expect("feed");
    verifier
        .verify(&a, "s-acme-1")
        .await
        .expect("not revoked yet");

    lock.rollback().await.expect("release A");
    let response = bulk.await.expect("bulk revoke");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["revoked"], 1, "{body}");

    assert_revoked(&verifier, &b, "s-acme-wl", "B, committed first").await;
    assert_revoked(&verifier, &a, "s-acme-1", "A, committed late").await;
}

/// The same on both backends, the late commit written by the test itself (as a statement that
/// took its time before B's and committed after it, on any replica or tool, would write it):
/// a revocation stamped earlier than one the verifier already has still reaches it.
async fn a_revocation_stamped_before_one_already_fed_still_reaches_the_verifier(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (verifier, [(a, a_jti), (b, b_jti)]) = feed_and_two_tokens(&app).await;
    let response = revoke(&app, &b_jti).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let b_revoked_at =
        crate::support::parse_timestamp(body["data"]["revoked_at"].as_str().expect("revoked_at"));
    assert_revoked(&verifier, &b, "s-acme-wl", "B").await;

    let earlier = b_revoked_at - chrono::Duration::seconds(1);
    let sql = match backend {
        Backend::Postgres => {
            "UPDATE session_token_mints SET revoked_at = CAST($1 AS TIMESTAMPTZ),
             revoked_by = 'a-late-statement' WHERE CAST(jti AS TEXT) = $2"
        }
        Backend::Sqlite => {
            "UPDATE session_token_mints SET revoked_at = $1, revoked_by = 'a-late-statement'
             WHERE jti = $2"
        }
    };
    let updated = sqlx::query(sql)
        .bind(earlier.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(&a_jti)
        .execute(&app.db.pool)
        .await
        .expect("revoke A late");
    assert_eq!(updated.rows_affected(), 1);

    assert_revoked(&verifier, &a, "s-acme-1", "A, stamped before B").await;
}

backend_tests!(
    a_revocation_stamped_before_one_already_fed_still_reaches_the_verifier,
    the_verify_module_refuses_revoked_tokens_from_the_feed,
    the_verify_module_accepts_good_tokens_and_refuses_each_bad_one,
    the_example_service_verifies_a_token_minted_by_a_running_server,
);
