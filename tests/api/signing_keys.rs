//! Signing keys with a life cycle, from the outside: two replicas on one database rotate with no
//! token ever signed by a key a verifier could not have fetched first, a retired key's token is
//! still an end user, the retired key leaves the JWKS after its last token expired, a wrong
//! key-encryption key stops start-up without touching a key, and the JWKS is cacheable.

use std::num::NonZero;
use std::time::{Duration, Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use neo_sessions::config::{Config, SigningAlgorithm};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_error, header, Backend, TestApp, TestDatabase, ACME_KEY};

const BODY: fn() -> Value = || json!({"session_id": "s-acme-1", "ttl_seconds": 4});
const KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
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

backend_tests!(
    rs256_keys_sign_and_verify,
    the_key_an_earlier_version_generated_is_imported,
    a_rotation_across_two_replicas_rejects_no_token,
    a_retired_keys_token_is_still_an_end_user,
    a_wrong_key_encryption_key_stops_start_up_and_changes_nothing,
    the_jwks_is_cacheable_and_discoverable,
);
