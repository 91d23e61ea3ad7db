//! Micro-benchmarks of the mint path's CPU work: signing per algorithm, API-key verification
//! (warm cache), Entra token validation (warm JWKS cache), and request body parsing/validation.
//! `cargo bench --bench hot_paths`

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der},
    rsa::KeySize,
    signature::{KeyPair, RsaKeyPair, RsaPublicKeyComponents},
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header};
use neo_sessions::{
    auth::{
        entra::{EntraKeySource, EntraVerifier, Key, KeyLookup},
        ApiKeyVerifier, Lookups,
    },
    config::{EntraConfig, SigningAlgorithm, SigningConfig, TokenConfig},
    mint::{MintRequest, TtlBounds},
    seed::Fixture,
    store::{self, Store},
    tokens::{ClaimsMac, KeyRing, SigningKey, TokenGrant, TokenIssuer},
};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;

const FIXTURE: &str = include_str!("../config/seed.example.json");
const ACME_KEY: &str = "neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd";
const TID: &str = "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a";

fn grant() -> TokenGrant {
    TokenGrant {
        session_id: "s-acme-1".into(),
        client_id: "acme".into(),
        end_company_id: Some("contoso".into()),
        end_user: Some("29:1a-teams-user".into()),
        end_user_email: Some("pat@contoso.com".into()),
        allowed_agent_ids: vec![101, 102],
        ttl_seconds: 900,
    }
}

fn signing(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("sign");
    for algorithm in [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ] {
        let config = SigningConfig {
            key_file: None,
            algorithm,
            ..SigningConfig::default()
        };
        let key = SigningKey::load_or_generate(&config, dir.path()).expect("key");
        let issuer = TokenIssuer::new(
            KeyRing::single(key).expect("key ring"),
            &TokenConfig::default(),
            ClaimsMac::derive(b"bench"),
        );
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| issuer.issue(grant()).expect("sign"))
        });
    }
    group.finish();
}

fn api_key_verification(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store: Arc<Store> = runtime.block_on(async {
        let store = store::connect(&url, 2).await.expect("store");
        store.migrate().await.expect("migrate");
        let plan = Fixture::from_json(FIXTURE)
            .expect("fixture")
            .prepare("test")
            .expect("plan")
            .plan;
        store.apply_seed(&plan).await.expect("seed");
        store
    });
    let verifier = ApiKeyVerifier::new(
        store,
        "test".into(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        live_feed(),
    );
    runtime
        .block_on(verifier.verify(ACME_KEY, Lookups::Allowed))
        .expect("valid key");
    c.bench_function("api_key_verify_warm_cache", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.verify(ACME_KEY, Lookups::Allowed))
                .expect("valid key")
        })
    });
}

/// A change feed that is up (the caches answer), as in a running service.
fn live_feed() -> Arc<neo_sessions::freshness::Freshness> {
    let freshness = neo_sessions::freshness::Freshness::down();
    freshness.restored();
    freshness
}

struct StaticKey(Arc<Key>);

#[async_trait]
impl EntraKeySource for StaticKey {
    async fn key(&self, _kid: &str) -> KeyLookup {
        KeyLookup::Found(Arc::clone(&self.0))
    }

    fn cached_key(&self, _kid: &str) -> Option<Arc<Key>> {
        Some(Arc::clone(&self.0))
    }
}

fn entra_validation(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("keygen");
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).expect("pkcs8");
    let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    let decoding = DecodingKey::from_rsa_components(
        &URL_SAFE_NO_PAD.encode(&public.n),
        &URL_SAFE_NO_PAD.encode(&public.e),
    )
    .expect("decoding key");
    // Every validation verified afresh (the verified-token cache off), then a token repeated.
    let config = EntraConfig {
        audience: Some("api://neo-sessions".into()),
        required_scope: Some("Sessions.Mint".into()),
        token_cache_entries: 0,
        ..EntraConfig::default()
    };
    let cached_config = EntraConfig {
        token_cache_entries: 100,
        ..config.clone()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = runtime.block_on(store::connect(&url, 1)).expect("store");
    let key = Arc::new(Key {
        algorithm: Algorithm::RS256,
        decoding,
    });
    let verifier = EntraVerifier::new(
        Arc::new(StaticKey(Arc::clone(&key))),
        &config,
        Arc::clone(&store),
        live_feed(),
        Counter::default(),
    );
    let caching_verifier = EntraVerifier::new(
        Arc::new(StaticKey(key)),
        &cached_config,
        store,
        live_feed(),
        Counter::default(),
    );

    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"), "aud": "api://neo-sessions",
        "tid": TID, "oid": "5f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f", "scp": "User.Read Sessions.Mint",
        "iat": now, "nbf": now, "exp": now + 7200,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k".into());
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(pem_text.as_bytes()).expect("pem"),
    )
    .expect("sign");
    let parsed_header = jsonwebtoken::decode_header(&token).expect("header");
    c.bench_function("entra_validate_warm_jwks", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.validate(&token, &parsed_header, Lookups::Allowed))
                .expect("valid")
        })
    });
    c.bench_function("entra_validate_repeated_token", |b| {
        b.iter(|| {
            runtime
                .block_on(caching_verifier.validate(&token, &parsed_header, Lookups::Allowed))
                .expect("valid")
        })
    });
}

fn body_parsing(c: &mut Criterion) {
    let body = br#"{"session_id":"s-acme-wl","end_user":"29:1a-teams-user","end_user_email":"pat@contoso.com","allowed_agent_ids":[101,102,101],"end_company_id":"contoso","ttl_seconds":900}"#;
    c.bench_function("parse_and_validate_body", |b| {
        b.iter(|| {
            let value: serde_json::Value = serde_json::from_slice(body).expect("json");
            MintRequest::from_json(value, TtlBounds::SHIPPED).expect("valid")
        })
    });
}

criterion_group!(
    benches,
    signing,
    api_key_verification,
    entra_validation,
    body_parsing
);
criterion_main!(benches);
