//! Signing keys with a life cycle, from the outside: two replicas on one database rotate with no
//! token ever signed by a key a verifier could not have fetched first, a retired key's token is
//! still an end user, the retired key leaves the JWKS after its last token expired, a wrong
//! key-encryption key stops start-up without touching a key, and the JWKS is cacheable. Off the
//! embedded database the key-encryption key is required; a wrong one writes nothing; a `next`
//! key is discarded (even one no replica can open) and leaves the JWKS. A compromised key is
//! withdrawn at once on every replica: out of the JWKS, a successor signing, its live tokens
//! revoked through the feed, other keys' tokens untouched.

use std::num::NonZero;
use std::time::{Duration, Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use neo_sessions::config::{Config, SigningAlgorithm};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    assert_error, cli::Cli, header, Backend, TestApp, TestDatabase, ACME_KEY, NEO_KEY, TEST_KEK,
};

const BODY: fn() -> Value = || json!({"session_id": "s-acme-1", "ttl_seconds": 4});
const KEK: &str = TEST_KEK;
const OTHER_KEK: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

/// Shortened timings: published 4 s before signing, JWKS cached 1 s, reloaded every second,
/// tokens live at most 4 s, 1 s leeway (so a retired key stays published 5 s).
fn short_life_cycle(c: &mut Config) {
    c.signing.key_encryption_key = Some(KEK.to_owned().into());
    c.signing.lead_seconds = 4;
    c.signing.jwks_max_age_seconds = 1;
    c.signing.reload_seconds = NonZero::new(1).unwrap();
    c.token.min_ttl = NonZero::new(1).unwrap();
    c.token.default_ttl = 4;
    c.token.max_ttl = 4;
    c.token.leeway_seconds = 1;
}

fn kek_of(config: &Config) -> neo_sessions::tokens::seal::Kek {
    neo_sessions::signing::key_encryption_key(config).expect("the key-encryption key")
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64")).expect("json");
    header["kid"].as_str().expect("kid").to_owned()
}

async fn published_kids(app: &TestApp) -> Vec<String> {
    let jwks = app.get_json("/.well-known/jwks.json").await;
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Two replicas on one database; a rotation while both mint. Every token verifies against the
/// JWKS (by an independent JWT library, not our signing path); the new key signs only after
/// both replicas have published it for longer than the JWKS max-age; the retired key leaves the
/// JWKS once its last token expired.
async fn a_rotation_across_two_replicas_rejects_no_token(backend: Backend) {
    let first = TestApp::builder(backend)
        .config(short_life_cycle)
        .spawn()
        .await;
    let shared = TestDatabase::seeded_at(backend, &first.db.name, first.db.url.clone()).await;
    let second = TestApp::builder(backend)
        .database(shared)
        .config(short_life_cycle)
        .spawn()
        .await;
    let old_kid = {
        let (data, _) = first.mint_ok(ACME_KEY, BODY()).await;
        kid_of(data["token"].as_str().expect("token"))
    };
    assert_eq!(
        published_kids(&second).await,
        std::slice::from_ref(&old_kid)
    );
    let apps = std::sync::Arc::new([first, second]);

    let rotated_at = Instant::now();
    let (new_kid, activates_at) = neo_sessions::signing::rotate(
        &apps[0].config,
        apps[0].state.store.as_ref(),
        &kek_of(&apps[0].config),
        SigningAlgorithm::ES256,
    )
    .await
    .expect("rotate");

    // A poller notes, as precisely as it can, when each replica first publishes the new key (a
    // note is never earlier than the truth).
    let poller = {
        let apps = std::sync::Arc::clone(&apps);
        let new_kid = new_kid.clone();
        tokio::spawn(async move {
            let mut seen: [Option<chrono::DateTime<chrono::Utc>>; 2] = [None, None];
            while seen.iter().any(Option::is_none) && rotated_at.elapsed() < Duration::from_secs(8)
            {
                for (i, app) in apps.iter().enumerate() {
                    if seen[i].is_none() && published_kids(app).await.contains(&new_kid) {
                        seen[i] = Some(chrono::Utc::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };

    // Meanwhile both replicas mint; every token verifies against the JWKS of that moment.
    let mut new_key_tokens = 0;
    while rotated_at.elapsed() < Duration::from_secs(7) {
        for app in apps.iter() {
            let (data, _) = app.mint_ok(ACME_KEY, BODY()).await;
            let token = data["token"].as_str().expect("token");
            let kid = kid_of(token);
            assert!(kid == old_kid || kid == new_kid, "signed by {kid}");
            let claims = app.verify(token).await;
            if kid == new_kid {
                new_key_tokens += 1;
                // Never before the stored switch time (iat is whole seconds).
                assert!(
                    claims.iat >= activates_at.timestamp(),
                    "signed before its time"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(new_key_tokens > 0, "the new key signs after the lead time");
    let seen = poller.await.expect("poller");
    for (i, at) in seen.iter().enumerate() {
        let at = at.expect("both replicas publish the new key");
        // Published longer than the JWKS max-age (1 s) before it signs.
        assert!(
            at + chrono::Duration::seconds(1) < activates_at,
            "replica {i} published the key at {at}, it signs from {activates_at}"
        );
    }

    // Until max TTL plus leeway after the switch the old key stays published; then it goes.
    let mut removed = false;
    while rotated_at.elapsed() < Duration::from_secs(20) {
        let kids = published_kids(&apps[0]).await;
        assert!(kids.contains(&new_kid));
        if !kids.contains(&old_kid) {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        removed,
        "the retired key is removed after its last token expired"
    );
}

/// A token signed by the key that was active before a rotation, presented as a credential
/// right after the switch: an end user (403), not a failed authentication.
async fn a_retired_keys_token_is_still_an_end_user(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(short_life_cycle)
        .config(|c| {
            c.token.max_ttl = 60;
            c.token.default_ttl = 60;
        })
        .spawn()
        .await;
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let old_token = data["token"].as_str().expect("token").to_owned();
    let (new_kid, _) = neo_sessions::signing::rotate(
        &app.config,
        app.state.store.as_ref(),
        &kek_of(&app.config),
        SigningAlgorithm::ES256,
    )
    .await
    .expect("rotate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (data, _) = app
            .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
            .await;
        if kid_of(data["token"].as_str().expect("token")) == new_kid {
            break;
        }
        assert!(Instant::now() < deadline, "the new key never signed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(kid_of(&old_token), new_kid);
    let response = app
        .mint(&old_token, json!({"session_id": "s-acme-1"}))
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
}

/// Another key-encryption key cannot open the stored keys: start-up stops with a message that
/// says so and names the key, and no stored key is changed.
async fn a_wrong_key_encryption_key_stops_start_up_and_changes_nothing(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(short_life_cycle)
        .spawn()
        .await;
    let before: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kid, sealed_private_key FROM signing_keys ORDER BY kid")
            .fetch_all(&app.db.pool)
            .await
            .expect("keys");
    assert_eq!(before.len(), 1);

    let mut config = app.config.clone();
    config.signing.key_encryption_key = Some(OTHER_KEK.to_owned().into());
    let error = match neo_sessions::app::App::build(config).await {
        Ok(_) => panic!("started with the wrong key-encryption key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("cannot be decrypted"), "{error}");
    assert!(error.contains(&before[0].0), "{error}");
    assert!(!error.contains(OTHER_KEK), "{error}");

    let after: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kid, sealed_private_key FROM signing_keys ORDER BY kid")
            .fetch_all(&app.db.pool)
            .await
            .expect("keys");
    assert_eq!(before, after);
}

/// The JWKS is served with the configured max-age and an ETag; `If-None-Match` gets 304. The
/// discovery document points at it.
async fn the_jwks_is_cacheable_and_discoverable(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| c.signing.jwks_max_age_seconds = 123)
        .spawn()
        .await;
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some("public, max-age=123")
    );
    let etag = header(&response, "etag").expect("ETag");
    let keys: Value = response.json().await.expect("json");
    let key = &keys["keys"][0];
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "ES256");
    assert!(key.get("d").is_none(), "no private part");

    let again = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, "etag").as_deref(), Some(etag.as_str()));
    let stale = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .expect("request");
    assert_eq!(stale.status(), StatusCode::OK);

    let discovery = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], app.config.token.issuer);
    assert_eq!(
        discovery["jwks_uri"],
        format!("{}/.well-known/jwks.json", app.config.token.issuer)
    );
}

/// Upgrading from a version that generated its key into the data directory: the first start
/// imports that key, so the tokens it signed keep verifying.
async fn the_key_an_earlier_version_generated_is_imported(backend: Backend) {
    let (key, der) =
        neo_sessions::tokens::SigningKey::generate(SigningAlgorithm::ES256).expect("key");
    let kid = key.kid().to_owned();
    let app = TestApp::builder(backend)
        .config(move |c| {
            std::fs::create_dir_all(&c.data.dir).expect("data dir");
            std::fs::write(
                c.data.dir.join("signing-key-es256.pem"),
                pem::encode(&pem::Pem::new("PRIVATE KEY", der)),
            )
            .expect("write");
        })
        .spawn()
        .await;
    assert_eq!(published_kids(&app).await, [kid]);
}

/// RS256 keys sign (on the blocking pool) and verify against the published JWKS like the others.
async fn rs256_keys_sign_and_verify(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(|c| c.signing.algorithm = SigningAlgorithm::RS256)
        .spawn()
        .await;
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let token = data["token"].as_str().expect("token");
    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(app.verify(token).await.client_id, "acme");
}

/// The stored keys as (kid, sealed bytes), to show that nothing changed.
async fn stored_keys(db: &TestDatabase) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as("SELECT kid, sealed_private_key FROM signing_keys ORDER BY kid")
        .fetch_all(&db.pool)
        .await
        .expect("keys")
}

/// The names of the files in a directory.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// On PostgreSQL without a key-encryption key, `serve`, `signing-key rotate` and `signing-key
/// import` refuse, naming the variables to set, and write nothing: no key file in the data
/// directory, no key in the database. On the embedded SQLite database one is generated.
async fn without_a_key_encryption_key_only_the_embedded_database_gets_keys(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    let (_, der) =
        neo_sessions::tokens::SigningKey::generate(SigningAlgorithm::ES256).expect("key");
    let pem_path = cli.work_dir.path().join("key.pem");
    std::fs::write(&pem_path, pem::encode(&pem::Pem::new("PRIVATE KEY", der))).expect("write");

    let rotate = cli.run(&["signing-key", "rotate"]).await;
    let import = cli
        .run(&["signing-key", "import", &pem_path.to_string_lossy()])
        .await;
    let mut config = Config::default();
    config.database.url = Some(db.url.clone().into());
    config.data.dir = cli.data_dir.path().to_owned();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    let serve = neo_sessions::app::App::build(config).await;

    if backend == Backend::Sqlite {
        rotate.assert_success();
        import.assert_success();
        serve.expect("serves on the embedded database");
        assert!(files_in(cli.data_dir.path()).contains(&"key-encryption-key".to_owned()));
        return;
    }
    for run in [&rotate, &import] {
        run.assert_failure();
        assert!(run.stderr.contains("NEO_KEY_ENCRYPTION_KEY"), "{run}");
        assert!(run.stderr.contains("NEO_KEY_ENCRYPTION_KEY_FILE"), "{run}");
    }
    let error = match serve {
        Ok(_) => panic!("served on PostgreSQL without a key-encryption key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("NEO_KEY_ENCRYPTION_KEY"), "{error}");
    assert_eq!(files_in(cli.data_dir.path()), Vec::<String>::new());
    assert_eq!(files_in(cli.work_dir.path()), ["key.pem"]);
    assert!(stored_keys(&db).await.is_empty());
}

/// A key-encryption key that cannot open the stored keys: `rotate` and `import` refuse, name the
/// key it cannot open, and write nothing.
async fn a_wrong_key_encryption_key_writes_no_key(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    cli.run_with(
        &["signing-key", "rotate"],
        &[("NEO_KEY_ENCRYPTION_KEY", KEK)],
    )
    .await
    .assert_success();
    let before = stored_keys(&db).await;
    assert_eq!(before.len(), 1);
    let (_, der) =
        neo_sessions::tokens::SigningKey::generate(SigningAlgorithm::ES256).expect("key");
    let pem_path = cli.work_dir.path().join("key.pem");
    std::fs::write(&pem_path, pem::encode(&pem::Pem::new("PRIVATE KEY", der))).expect("write");

    let wrong = [("NEO_KEY_ENCRYPTION_KEY", OTHER_KEK)];
    for args in [
        vec!["signing-key", "rotate"],
        vec!["signing-key", "import", &pem_path.to_string_lossy()],
    ] {
        let run = cli.run_with(&args, &wrong).await;
        run.assert_failure();
        assert!(run.stderr.contains("cannot open signing key"), "{run}");
        assert!(run.stderr.contains(&before[0].0), "{run}");
        assert!(!run.stderr.contains(OTHER_KEK), "{run}");
    }
    assert_eq!(stored_keys(&db).await, before);
    assert_eq!(files_in(cli.data_dir.path()), Vec::<String>::new());
}

/// `signing-key discard` removes a `next` key: every replica stops publishing it, and `list` no
/// longer shows it. It refuses the active key and a kid it does not know. A `next` key sealed
/// under another key-encryption key (as the previous version's `rotate` could leave behind)
/// stops start-up and rotations until it is discarded, which needs no key-encryption key.
async fn a_next_key_is_discarded_and_leaves_the_jwks(backend: Backend) {
    let app = TestApp::builder(backend)
        .config(short_life_cycle)
        // Time enough to discard it (the margin is reload plus leeway: 2 s).
        .config(|c| c.signing.lead_seconds = 60)
        .spawn()
        .await;
    let cli = Cli::new(&app.db);
    let kek = [("NEO_KEY_ENCRYPTION_KEY", KEK)];
    let active = published_kids(&app).await;
    assert_eq!(active.len(), 1);
    cli.run_with(&["signing-key", "rotate"], &kek)
        .await
        .assert_success();
    let next = wait_for_kids(&app, |kids| kids.len() == 2).await;
    let next = next
        .into_iter()
        .find(|kid| *kid != active[0])
        .expect("the next key");

    let run = cli.run(&["signing-key", "discard", &next]).await;
    run.assert_success();
    assert!(run.stdout.contains(&next), "{run}");
    assert_eq!(wait_for_kids(&app, |kids| kids.len() == 1).await, active);
    let listed = cli.run(&["signing-key", "list", "--output", "json"]).await;
    listed.assert_success();
    let listed: Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    let refused = cli.run(&["signing-key", "discard", &active[0]]).await;
    refused.assert_failure();
    assert!(refused.stderr.contains("is active"), "{refused}");
    let unknown = cli.run(&["signing-key", "discard", "no-such-kid"]).await;
    unknown.assert_failure();
    assert!(unknown.stderr.contains("no-such-kid"), "{unknown}");

    // A next key sealed under another key-encryption key.
    let mut other = app.config.clone();
    other.signing.key_encryption_key = Some(OTHER_KEK.to_owned().into());
    let other_kek = neo_sessions::signing::key_encryption_key(&other).expect("kek");
    let (bad, der) =
        neo_sessions::tokens::SigningKey::generate(SigningAlgorithm::ES256).expect("key");
    let inserted = app
        .state
        .store
        .insert_signing_key(&neo_sessions::store::SigningKeyRow {
            kid: bad.kid().to_owned(),
            generation: 2,
            algorithm: "ES256".to_owned(),
            sealed_private_key: other_kek.seal(bad.kid(), &der).expect("seal"),
            created_at: chrono::Utc::now(),
            // As `rotate` sets it with the default lead time.
            activates_at: chrono::Utc::now() + chrono::Duration::seconds(600),
            withdrawn_at: None,
        })
        .await
        .expect("insert");
    assert!(inserted);
    match neo_sessions::app::App::build(app.config.clone()).await {
        Ok(_) => panic!("started with a key it cannot open"),
        Err(error) => assert!(format!("{error:#}").contains(bad.kid()), "{error:#}"),
    }
    let rotate = cli.run_with(&["signing-key", "rotate"], &kek).await;
    rotate.assert_failure();
    assert!(rotate.stderr.contains("signing-key discard"), "{rotate}");
    // No key-encryption key at all: discarding opens nothing.
    cli.run(&["signing-key", "discard", bad.kid()])
        .await
        .assert_success();
    neo_sessions::app::App::build(app.config.clone())
        .await
        .expect("starts again");
    cli.run_with(&["signing-key", "rotate"], &kek)
        .await
        .assert_success();
}

/// The JWKS's kids once `done` holds for them (the replica reloads every second).
async fn wait_for_kids(app: &TestApp, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids = published_kids(app).await;
        if done(&kids) {
            return kids;
        }
        assert!(Instant::now() < deadline, "the JWKS stayed at {kids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replicas that reload their keys on the timer only every 9 s: whatever they do sooner, the
/// change notification did. Tokens live 15 minutes; verifiers allow 1 s of skew.
fn slow_reload(c: &mut Config) {
    c.signing.key_encryption_key = Some(KEK.to_owned().into());
    c.signing.lead_seconds = 10;
    c.signing.jwks_max_age_seconds = 1;
    c.signing.reload_seconds = NonZero::new(9).unwrap();
    c.token.leeway_seconds = 1;
}

/// The same configuration for the CLI.
const CLI_ENV: [(&str, &str); 2] = [
    ("NEO_KEY_ENCRYPTION_KEY", KEK),
    ("NEO_TOKEN_LEEWAY_SECONDS", "1"),
];

/// A key `next` for `lead_seconds`, added as `signing-key rotate` does.
async fn rotate_with_lead(app: &TestApp, lead_seconds: u64) -> String {
    let mut config = app.config.clone();
    config.signing.lead_seconds = lead_seconds;
    neo_sessions::signing::rotate(
        &config,
        app.state.store.as_ref(),
        &kek_of(&config),
        SigningAlgorithm::ES256,
    )
    .await
    .expect("rotate")
    .0
}

/// A token minted by `app`, once `app` signs with `kid` (within 10 s).
async fn token_signed_by(app: &TestApp, kid: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (data, _) = app
            .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
            .await;
        let token = data["token"].as_str().expect("token").to_owned();
        if kid_of(&token) == kid {
            return (token, data["jti"].as_str().expect("jti").to_owned());
        }
        assert!(Instant::now() < deadline, "{kid} never signed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn introspect_active(app: &TestApp, token: &str) -> bool {
    app.introspect(ACME_KEY, token).await["active"]
        .as_bool()
        .expect("active")
}

/// A mint record written as an earlier version (no `kid`), issued at `issued_at`.
async fn unrecorded_key_mint(app: &TestApp, issued_at: chrono::DateTime<chrono::Utc>) -> String {
    let record = neo_sessions::store::MintRecord {
        jti: uuid::Uuid::new_v4(),
        session_id: "s-acme-1".to_owned(),
        tenant_id: "acme".to_owned(),
        minted_by_kind: "api_key",
        minted_by: "k-acme".to_owned(),
        minted_by_tenant: "acme".to_owned(),
        end_user: None,
        end_company_id: None,
        allowed_agent_ids: ",".to_owned(),
        issued_at,
        expires_at: issued_at + chrono::Duration::minutes(15),
        kid: "unrecorded".to_owned(),
    };
    app.state
        .store
        .record_mints(std::slice::from_ref(&record))
        .await
        .expect("record");
    sqlx::query("UPDATE session_token_mints SET kid = NULL WHERE kid = 'unrecorded'")
        .execute(&app.db.pool)
        .await
        .expect("forget the kid");
    record.jti.to_string()
}

/// The JWKS of `app` once it no longer lists `kid`; how long that took.
async fn time_until_unpublished(
    app: &TestApp,
    kid: &str,
    since: Instant,
) -> (Vec<String>, Duration) {
    let deadline = since + Duration::from_secs(8);
    loop {
        let kids = published_kids(app).await;
        if !kids.iter().any(|k| k == kid) {
            return (kids, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "{kid} is still published: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `signing-key withdraw` of the key signing now on two replicas: both stop publishing it at
/// once (the change notification, not the 9 s reload), a generated key signs in its place, the
/// live tokens it signed (and the records of an earlier version within its signing window) are
/// in the revocation feed and introspect inactive, the retired key's token is untouched, a
/// record a lagging replica writes for it afterwards is revoked as it is written, and it cannot
/// be withdrawn twice.
async fn withdrawing_the_signing_key_revokes_its_tokens_on_every_replica(backend: Backend) {
    let first = TestApp::builder(backend).config(slow_reload).spawn().await;
    let shared = TestDatabase::seeded_at(backend, &first.db.name, first.db.url.clone()).await;
    let second = TestApp::builder(backend)
        .database(shared)
        .config(slow_reload)
        .spawn()
        .await;
    let cli = Cli::new(&first.db);
    let old_kid = published_kids(&first).await.remove(0);
    let (old_token, old_jti) = token_signed_by(&first, &old_kid).await;

    // A rotation (2 s lead) makes `old_kid` retired; both replicas sign with the new key.
    let kid = rotate_with_lead(&first, 2).await;
    let (token_a, jti_a) = token_signed_by(&first, &kid).await;
    let (token_b, jti_b) = token_signed_by(&second, &kid).await;
    let activated = chrono::Utc::now();
    // Records of an earlier version: one within the key's window, one from long before it.
    let unrecorded_in = unrecorded_key_mint(&first, activated).await;
    let unrecorded_out =
        unrecorded_key_mint(&first, activated - chrono::Duration::seconds(30)).await;

    let run = cli
        .run_with(&["signing-key", "withdraw", &kid], &CLI_ENV)
        .await;
    let withdrawn = Instant::now();
    run.assert_success();
    assert!(
        run.stdout
            .contains(&format!("withdrew key {kid} (it was active)")),
        "{run}"
    );
    assert!(run.stdout.contains("revoked 3 live token(s)"), "{run}");
    let (on_second, second_took) = time_until_unpublished(&second, &kid, withdrawn).await;
    let (on_first, first_took) = time_until_unpublished(&first, &kid, withdrawn).await;
    eprintln!("{backend:?}: the withdrawn key left the JWKS within {second_took:?} (second replica), {first_took:?} (first)");
    // Far sooner than the 9 s reload: the change notification (SQLite: the change log polled
    // every 200 ms).
    assert!(second_took < Duration::from_secs(2), "{second_took:?}");
    let successor = on_second
        .iter()
        .find(|k| **k != old_kid)
        .expect("a successor is published")
        .clone();
    assert!(
        run.stdout
            .contains(&format!("key {successor} was generated")),
        "{run}"
    );
    assert_eq!(on_second, [old_kid.clone(), successor.clone()]);
    assert_eq!(on_first, on_second);
    for app in [&first, &second] {
        let (data, _) = app
            .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
            .await;
        assert_eq!(kid_of(data["token"].as_str().expect("token")), successor);
    }

    // Its tokens (and the earlier version's record within its window) are in the feed on both
    // replicas, nothing else is; they introspect inactive, the retired key's token active.
    for app in [&first, &second] {
        let mut revoked = app.revoked_jtis(NEO_KEY, 3).await;
        revoked.sort();
        let mut expected = vec![jti_a.clone(), jti_b.clone(), unrecorded_in.clone()];
        expected.sort();
        assert_eq!(revoked, expected);
        assert!(!introspect_active(app, &token_a).await);
        assert!(!introspect_active(app, &token_b).await);
        assert!(introspect_active(app, &old_token).await);
    }
    assert!(!first.revoked_jtis(NEO_KEY, 0).await.contains(&old_jti));
    assert!(!first
        .revoked_jtis(NEO_KEY, 0)
        .await
        .contains(&unrecorded_out));

    // A replica that had not heard of it yet: its record is revoked as it is written.
    let late = neo_sessions::store::MintRecord {
        jti: uuid::Uuid::new_v4(),
        session_id: "s-acme-1".to_owned(),
        tenant_id: "acme".to_owned(),
        minted_by_kind: "api_key",
        minted_by: "k-acme".to_owned(),
        minted_by_tenant: "acme".to_owned(),
        end_user: None,
        end_company_id: None,
        allowed_agent_ids: ",".to_owned(),
        issued_at: chrono::Utc::now(),
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(15),
        kid: kid.clone(),
    };
    second
        .state
        .store
        .record_mints(std::slice::from_ref(&late))
        .await
        .expect("record");
    let row = second
        .state
        .store
        .find_mint(late.jti)
        .await
        .expect("read")
        .expect("recorded");
    assert!(row.revoked_at.is_some(), "{row:?}");
    assert_eq!(
        row.revoked_by.as_deref(),
        Some(format!("signing-key withdraw {kid}").as_str())
    );
    assert!(second
        .revoked_jtis(NEO_KEY, 4)
        .await
        .contains(&late.jti.to_string()));

    let again = cli
        .run_with(&["signing-key", "withdraw", &kid], &CLI_ENV)
        .await;
    again.assert_failure();
    assert!(again.stderr.contains("withdrawn"), "{again}");
    let unknown = cli
        .run_with(&["signing-key", "withdraw", "no-such-kid"], &CLI_ENV)
        .await;
    unknown.assert_failure();
    assert!(unknown.stderr.contains("no-such-kid"), "{unknown}");
    let listed = cli.run(&["signing-key", "list", "--output", "json"]).await;
    listed.assert_success();
    let listed: Value = serde_json::from_str(&listed.stdout).expect("json");
    let state_of = |k: &str| {
        listed
            .as_array()
            .expect("keys")
            .iter()
            .find(|key| key["kid"] == k)
            .map(|key| key["state"].as_str().expect("state").to_owned())
    };
    assert_eq!(state_of(&kid).as_deref(), Some("withdrawn"));
    assert_eq!(state_of(&successor).as_deref(), Some("active"));
    assert_eq!(state_of(&old_kid).as_deref(), Some("retired"));
}

/// Withdrawing the key signing now brings the `next` key forward: it signs at once. Without the
/// key-encryption key the replicas use, nothing changes (a successor no replica could open would
/// leave them signing with the withdrawn key). A `next` key is withdrawn without one, and the
/// key signing stays.
async fn withdrawing_the_signing_key_brings_the_next_key_forward(backend: Backend) {
    let app = TestApp::builder(backend).config(slow_reload).spawn().await;
    let cli = Cli::new(&app.db);
    let active = published_kids(&app).await.remove(0);
    let (_, jti) = token_signed_by(&app, &active).await;
    let next = rotate_with_lead(&app, 600).await;
    wait_for_kids(&app, |kids| kids.len() == 2).await;
    let before = stored_keys(&app.db).await;

    // No key-encryption key (PostgreSQL), or another one (SQLite generates one in the CLI's own
    // data directory): refused, nothing written.
    let refused = cli.run(&["signing-key", "withdraw", &active]).await;
    refused.assert_failure();
    assert!(refused.stderr.contains("key-encryption key"), "{refused}");
    assert_eq!(stored_keys(&app.db).await, before);
    let withdrawn: i64 =
        sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE withdrawn_at IS NOT NULL")
            .fetch_one(&app.db.pool)
            .await
            .expect("count");
    assert_eq!(withdrawn, 0);
    assert_eq!(published_kids(&app).await, [active.clone(), next.clone()]);

    let run = cli
        .run_with(&["signing-key", "withdraw", &active], &CLI_ENV)
        .await;
    run.assert_success();
    assert!(
        run.stdout
            .contains(&format!("key {next} (the next key) was brought forward")),
        "{run}"
    );
    assert!(run.stdout.contains("revoked 1 live token(s)"), "{run}");
    assert_eq!(
        time_until_unpublished(&app, &active, Instant::now())
            .await
            .0,
        std::slice::from_ref(&next)
    );
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    assert_eq!(kid_of(data["token"].as_str().expect("token")), next);
    assert!(app.revoked_jtis(ACME_KEY, 1).await.contains(&jti));

    // A `next` key: withdrawn without a key-encryption key; the key signing stays.
    let pending = rotate_with_lead(&app, 600).await;
    wait_for_kids(&app, |kids| kids.len() == 2).await;
    let run = cli
        .run(&["signing-key", "withdraw", &pending, "--output", "json"])
        .await;
    run.assert_success();
    let done: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(done["was"], "next");
    assert_eq!(done["successor"], Value::Null);
    assert_eq!(done["revoked_tokens"], 0);
    assert_eq!(
        time_until_unpublished(&app, &pending, Instant::now())
            .await
            .0,
        std::slice::from_ref(&next)
    );
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    assert_eq!(kid_of(data["token"].as_str().expect("token")), next);
    // A rotation is possible again (the withdrawn key is not pending).
    rotate_with_lead(&app, 600).await;
}

backend_tests!(
    without_a_key_encryption_key_only_the_embedded_database_gets_keys,
    a_wrong_key_encryption_key_writes_no_key,
    a_next_key_is_discarded_and_leaves_the_jwks,
    rs256_keys_sign_and_verify,
    the_key_an_earlier_version_generated_is_imported,
    a_rotation_across_two_replicas_rejects_no_token,
    a_retired_keys_token_is_still_an_end_user,
    a_wrong_key_encryption_key_stops_start_up_and_changes_nothing,
    the_jwks_is_cacheable_and_discoverable,
    withdrawing_the_signing_key_revokes_its_tokens_on_every_replica,
    withdrawing_the_signing_key_brings_the_next_key_forward,
);
