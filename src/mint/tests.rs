//! Rules 1 to 7 and the `Idempotency-Key` protocol without a router: a `Minter` over the seeded
//! embedded database (config/seed.example.json) and a key generated for the test.

use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde_json::{json, Value};
use sha2::Digest;

use super::*;
use crate::{
    config::{SigningConfig, TokenConfig},
    freshness::Freshness,
    metrics::Metrics,
    store::MintQuery,
    tokens::{KeyRing, SigningKey},
};

struct Fixture {
    minter: Minter,
    store: Arc<Store>,
    url: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (dir, url, store) = crate::store::seeded_sqlite_for_tests().await;
    let key = SigningKey::load_or_generate(&SigningConfig::default(), dir.path()).unwrap();
    let issuer = TokenIssuer::new(
        KeyRing::single(key).unwrap(),
        &TokenConfig::default(),
        crate::tokens::ClaimsMac::derive(b"test"),
    );
    let minter = Minter::new(
        SessionCache::new(Arc::clone(&store), 64, &Freshness::down()),
        Arc::new(issuer),
        MintRecorder::spawn(Arc::clone(&store), 16, Arc::new(Metrics::new())),
        Arc::clone(&store),
        TtlBounds::SHIPPED,
    );
    Fixture {
        minter,
        store,
        url,
        _dir: dir,
    }
}

fn api_key(tenant_id: &str, key_id: &str, platform: bool) -> Principal {
    Principal::ApiKey {
        tenant_id: tenant_id.into(),
        key_id: key_id.into(),
        platform,
        scopes: crate::auth::principal::Scopes::LEGACY,
    }
}

fn acme() -> Principal {
    api_key("acme", "k-acme", false)
}

fn globex() -> Principal {
    api_key("globex", "k-globex", false)
}

fn neo() -> Principal {
    api_key("neo", "k-neo", true)
}

fn dashboard_user() -> Principal {
    Principal::EntraUser {
        tenant_id: "acme".into(),
        tid: "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a".into(),
        oid: "pat".into(),
    }
}

/// The claims a token carries (its signature is the issuer's business, tested there).
fn claims_of(token: &str) -> SessionClaims {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("claims")
}

impl Fixture {
    async fn mint(&self, principal: &Principal, body: Value) -> Result<Minted, MintRefusal> {
        self.minter.mint(principal, body, None).await
    }

    /// Mint records of every tenant.
    async fn recorded(&self) -> usize {
        let mut count = 0;
        for tenant in ["acme", "globex", "neo"] {
            let query = MintQuery {
                tenant_id: tenant.into(),
                minted_by_tenant: None,
                session_id: None,
                active: None,
                after: None,
                limit: 1000,
            };
            count += self.store.list_mints(&query).await.unwrap().len();
        }
        count
    }
}

/// What a refusal must be.
type Expected = fn(&MintRefusal) -> bool;

/// One row per refusal of rules 1 to 6: who asks, what, and why it is refused. None records a
/// mint.
#[tokio::test]
async fn each_rule_refuses_in_the_order_of_the_spec() {
    let f = fixture().await;
    let refused: Vec<(Principal, Value, Expected)> = vec![
        // Rule 1, before any session rule: a closed session of another tenant with a bad TTL.
        (
            globex(),
            json!({"session_id": "s-acme-old", "client_id": "acme", "ttl_seconds": 1}),
            |r| matches!(r, MintRefusal::InvalidRequest(_)),
        ),
        // Rule 2: client_id from a caller that is not a platform service account...
        (
            acme(),
            json!({"session_id": "s-acme-support", "client_id": "acme"}),
            |r| matches!(r, MintRefusal::ClientIdNotAllowed),
        ),
        (
            dashboard_user(),
            json!({"session_id": "s-acme-1", "client_id": "acme"}),
            |r| matches!(r, MintRefusal::ClientIdNotAllowed),
        ),
        (
            globex(),
            json!({"session_id": "no-such-session", "client_id": "acme"}),
            |r| matches!(r, MintRefusal::ClientIdNotAllowed),
        ),
        // ... and, from a platform key, anything but the target tenant's Neo Support session.
        (
            neo(),
            json!({"session_id": "s-globex-1", "client_id": "globex"}),
            |r| matches!(r, MintRefusal::NotSupportSession),
        ),
        (
            neo(),
            json!({"session_id": "s-globex-support", "client_id": "acme"}),
            |r| matches!(r, MintRefusal::NotSupportSession),
        ),
        (
            neo(),
            json!({"session_id": "s-globex-support", "client_id": "no-such-tenant"}),
            |r| matches!(r, MintRefusal::NotSupportSession),
        ),
        (
            neo(),
            json!({"session_id": "no-such-session", "client_id": "globex"}),
            |r| matches!(r, MintRefusal::NotSupportSession),
        ),
        // Rule 3: missing, or another tenant's (also closed or scoped ones), is one answer.
        (acme(), json!({"session_id": "no-such-session"}), |r| {
            matches!(r, MintRefusal::SessionNotFound)
        }),
        (
            acme(),
            json!({"session_id": "s-globex-support-closed"}),
            |r| matches!(r, MintRefusal::SessionNotFound),
        ),
        (
            globex(),
            json!({"session_id": "s-acme-wl", "end_company_id": "initech", "allowed_agent_ids": [201]}),
            |r| matches!(r, MintRefusal::SessionNotFound),
        ),
        // Without client_id a platform key is its own tenant's key.
        (neo(), json!({"session_id": "s-globex-support"}), |r| {
            matches!(r, MintRefusal::SessionNotFound)
        }),
        // Rule 4, before the scope and agent checks; for a Neo Support session too.
        (
            acme(),
            json!({"session_id": "s-acme-old", "end_company_id": "nope", "allowed_agent_ids": [999]}),
            |r| matches!(r, MintRefusal::SessionClosed),
        ),
        (
            neo(),
            json!({"session_id": "s-globex-support-closed", "client_id": "globex"}),
            |r| matches!(r, MintRefusal::SessionClosed),
        ),
        // Rule 5, before rule 6: an unscoped session narrowed to no end company of the tenant.
        (
            acme(),
            json!({"session_id": "s-acme-1", "end_company_id": "nope", "allowed_agent_ids": [999]}),
            |r| matches!(r, MintRefusal::UnknownEndCompany),
        ),
        (
            acme(),
            json!({"session_id": "s-acme-1", "end_company_id": "initech"}),
            |r| matches!(r, MintRefusal::UnknownEndCompany),
        ),
        // Rule 6: agents of the target tenant, the unknown ones named once, in order.
        (
            acme(),
            json!({"session_id": "s-acme-1", "allowed_agent_ids": [101, 999, 201, 999]}),
            |r| matches!(r, MintRefusal::UnknownAgents(ids) if ids == &[999, 201]),
        ),
        (
            neo(),
            json!({"session_id": "s-globex-support", "client_id": "globex", "allowed_agent_ids": [101]}),
            |r| matches!(r, MintRefusal::UnknownAgents(ids) if ids == &[101]),
        ),
    ];
    for (principal, body, expected) in refused {
        let text = body.to_string();
        match f.mint(&principal, body).await {
            Err(refusal) => assert!(expected(&refusal), "{text}: {refusal:?}"),
            Ok(minted) => panic!("{text} minted {}", minted.jti),
        }
    }
    assert_eq!(f.recorded().await, 0);
}

/// Rule 7: the token carries what the rules decided, and the mint is recorded with who minted it.
#[tokio::test]
async fn a_mint_signs_and_records_what_the_rules_decided() {
    let f = fixture().await;
    let minted = f
        .mint(
            &acme(),
            json!({"session_id": "s-acme-1", "end_user": "29:1a-teams-user",
                   "end_user_email": "pat@contoso.com", "end_company_id": "fabrikam",
                   "allowed_agent_ids": [102, 101, 102, 101], "ttl_seconds": 300}),
        )
        .await
        .unwrap();
    let claims = claims_of(&minted.token);
    assert_eq!(claims.jti, minted.jti);
    assert_eq!(claims.sub, "29:1a-teams-user");
    assert_eq!(claims.session_id, "s-acme-1");
    assert_eq!(claims.client_id, "acme");
    assert_eq!(claims.end_company_id.as_deref(), Some("fabrikam"));
    assert_eq!(claims.end_user_email.as_deref(), Some("pat@contoso.com"));
    assert_eq!(
        claims.allowed_agent_ids,
        [102, 101],
        "deduplicated, in order"
    );
    assert_eq!(claims.exp - claims.iat, 300);
    assert_eq!(
        (minted.expires_in, minted.expires_at.timestamp()),
        (300, claims.exp)
    );
    assert_eq!(minted.session_id, "s-acme-1");
    assert!(minted.warnings.is_empty());

    let record = f
        .store
        .find_mint(minted.jti)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        (record.session_id.as_str(), record.tenant_id.as_str()),
        ("s-acme-1", "acme")
    );
    assert_eq!(
        (record.minted_by_kind.as_str(), record.minted_by.as_str()),
        ("api_key", "k-acme")
    );
    assert_eq!(record.end_user.as_deref(), Some("29:1a-teams-user"));
    assert_eq!(record.end_company_id.as_deref(), Some("fabrikam"));
    assert_eq!(record.issued_at.timestamp(), claims.iat);

    // The default TTL; a platform mint is the target tenant's, recorded as the platform's.
    let minted = f
        .mint(
            &neo(),
            json!({"session_id": "s-globex-support", "client_id": "globex", "allowed_agent_ids": [201]}),
        )
        .await
        .unwrap();
    let claims = claims_of(&minted.token);
    assert_eq!(
        (claims.client_id.as_str(), claims.exp - claims.iat),
        ("globex", 900)
    );
    assert_eq!(
        claims.sub, "s-globex-support",
        "sub falls back to the session id"
    );
    let record = f
        .store
        .find_mint(minted.jti)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(record.tenant_id, "globex");
    assert_eq!(record.minted_by_tenant.as_deref(), Some("neo"));
}

/// Rule 5: a scoped session carries its own end company; a different caller value is ignored
/// with a warning.
#[tokio::test]
async fn a_scoped_session_keeps_its_end_company() {
    let f = fixture().await;
    for (asked, warned) in [
        (json!("fabrikam"), true),
        (json!("initech"), true),
        (json!("contoso"), false),
        (Value::Null, false),
    ] {
        let minted = f
            .mint(
                &acme(),
                json!({"session_id": "s-acme-wl", "end_company_id": asked}),
            )
            .await
            .unwrap();
        let claims = claims_of(&minted.token);
        assert_eq!(claims.end_company_id.as_deref(), Some("contoso"), "{asked}");
        assert_eq!(minted.warnings.len(), usize::from(warned), "{asked}");
        if warned {
            assert!(
                minted.warnings[0].contains("end_company_id"),
                "{:?}",
                minted.warnings
            );
        }
    }
}

/// Rule 7: a token whose record is not committed is refused, naming its jti for the log.
#[tokio::test]
async fn a_mint_that_is_not_recorded_is_refused_with_its_jti() {
    let f = fixture().await;
    let pool = sqlx::SqlitePool::connect(&f.url).await.unwrap();
    sqlx::query("ALTER TABLE session_token_mints RENAME TO session_token_mints_gone")
        .execute(&pool)
        .await
        .unwrap();
    let refusal = f
        .mint(&acme(), json!({"session_id": "s-acme-1"}))
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, MintRefusal::NotRecorded { .. }),
        "{refusal:?}"
    );
    assert!(refusal.jti().is_some());
    // Before a token is signed there is no jti to log.
    let refusal = f
        .mint(&acme(), json!({"session_id": "s-acme-old"}))
        .await
        .unwrap_err();
    assert_eq!(refusal.jti(), None);
}

/// A retry with the same key and body gets the first token again; another body is refused; a
/// refused request leaves its key free.
#[tokio::test]
async fn an_idempotency_key_mints_once() {
    let f = fixture().await;
    let body = json!({"session_id": "s-acme-1", "end_user": "pat", "ttl_seconds": 600});
    let key = Some("relay-retry-7f3a");
    let first = f.minter.mint(&acme(), body.clone(), key).await.unwrap();
    assert!(first.warnings.is_empty());

    let reordered = json!({"ttl_seconds": 600, "end_user": "pat", "session_id": "s-acme-1"});
    let again = f.minter.mint(&acme(), reordered, key).await.unwrap();
    assert_eq!((again.jti, again.expires_at), (first.jti, first.expires_at));
    assert_eq!(claims_of(&again.token), claims_of(&first.token));
    assert!(
        (590..=600).contains(&again.expires_in),
        "{}",
        again.expires_in
    );
    assert!(again.warnings[0].contains("Idempotency-Key replay"));
    assert_eq!(f.recorded().await, 1, "a replay records no new mint");

    let other = json!({"session_id": "s-acme-1", "end_user": "mallory"});
    let refusal = f.minter.mint(&acme(), other, key).await.unwrap_err();
    assert!(
        matches!(refusal, MintRefusal::IdempotencyKeyReused),
        "{refusal:?}"
    );

    // Keys are per credential; a refusal does not use one up.
    let key = Some("another-key");
    let missing = json!({"session_id": "no-such-session"});
    for _ in 0..2 {
        let refusal = f
            .minter
            .mint(&acme(), missing.clone(), key)
            .await
            .unwrap_err();
        assert!(
            matches!(refusal, MintRefusal::SessionNotFound),
            "{refusal:?}"
        );
    }
    let minted = f.minter.mint(&acme(), body.clone(), key).await.unwrap();
    assert_ne!(minted.jti, first.jti);
    let globex_mint = f
        .minter
        .mint(&globex(), json!({"session_id": "s-globex-1"}), key)
        .await
        .unwrap();
    assert_eq!(globex_mint.session_id, "s-globex-1");

    // A malformed body claims nothing.
    let refusal = f
        .minter
        .mint(&acme(), json!({"session_id": ""}), Some("fresh"))
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, MintRefusal::InvalidRequest(_)),
        "{refusal:?}"
    );
    assert_eq!(f.recorded().await, 3);
}

/// A retry while the first request with its key is still minting waits, then is refused; it never
/// mints a second token.
#[tokio::test]
async fn a_key_still_minting_is_in_use() {
    let f = fixture().await;
    let body = json!({"session_id": "s-acme-1"});
    let hash = <[u8; 32]>::from(sha2::Sha256::digest(serde_json::to_vec(&body).unwrap()));
    let now = chrono::Utc::now();
    // The first request's claim, not settled yet.
    let claimed = f
        .store
        .claim_idempotency("api_key:k-acme", "in-flight", &hash, now, now, now)
        .await
        .unwrap();
    assert!(claimed.is_none());
    let started = std::time::Instant::now();
    let refusal = f
        .minter
        .mint(&acme(), body, Some("in-flight"))
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, MintRefusal::IdempotencyKeyInUse),
        "{refusal:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    assert_eq!(f.recorded().await, 0);
}
