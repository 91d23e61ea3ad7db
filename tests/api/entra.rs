//! Dashboard users with Microsoft Entra ID access tokens, against a fake Entra in this process:
//! a real HTTP JWKS server on loopback with RSA keys made here, and a token factory.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc, OnceLock, RwLock,
};

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    rsa::KeySize,
    signature::{KeyPair, RsaKeyPair, RsaPublicKeyComponents},
};
use axum::{
    extract::State, http::StatusCode as AxumStatus, response::IntoResponse, routing::get, Json,
    Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use neo_sessions::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{assert_error, www_authenticate, Backend, TestApp, ACME_KEY};

/// Acme's directory in `config/seed.example.json`.
pub const TID: &str = "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a";
pub const OID: &str = "5f1c7d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
pub const AUD_GUID: &str = "6e2f1a4b-8c3d-4e5f-9a0b-1c2d3e4f5a6b";
pub const AUD_URI: &str = "api://neo-sessions";
pub const SCOPE: &str = "Sessions.Mint";

pub struct RsaKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    pub public_pem: String,
}

fn make_key(kid: &str) -> RsaKey {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).expect("pkcs8");
    let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let public = pair.public_key();
    let components = RsaPublicKeyComponents::<Vec<u8>>::from(public);
    let spki = AsDer::<PublicKeyX509Der>::as_der(public).expect("spki");
    RsaKey {
        kid: kid.to_owned(),
        encoding: EncodingKey::from_rsa_pem(pem_text.as_bytes()).expect("encoding key"),
        jwk: json!({
            "kty": "RSA", "use": "sig", "kid": kid, "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e),
        }),
        public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref().to_vec())),
    }
}

/// Three keys, made once per test process (RSA generation is slow in debug builds).
pub fn keys() -> &'static [RsaKey; 3] {
    static KEYS: OnceLock<[RsaKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            make_key("entra-key-1"),
            make_key("entra-key-2"),
            make_key("attacker-key"),
        ]
    })
}
pub fn current() -> &'static RsaKey {
    &keys()[0]
}
pub fn rolled() -> &'static RsaKey {
    &keys()[1]
}
pub fn attacker() -> &'static RsaKey {
    &keys()[2]
}

#[derive(Clone)]
struct FakeState {
    jwks: Arc<RwLock<Value>>,
    hits: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

/// A JWKS endpoint on loopback that counts its hits and can be taken down.
pub struct FakeEntra {
    pub url: String,
    state: FakeState,
}

async fn serve_jwks(State(state): State<FakeState>) -> impl IntoResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return (AxumStatus::SERVICE_UNAVAILABLE, Json(json!({}))).into_response();
    }
    let jwks = state.jwks.read().expect("jwks lock").clone();
    Json(jwks).into_response()
}

impl FakeEntra {
    pub async fn start(published: &[&RsaKey]) -> Self {
        let state = FakeState {
            jwks: Arc::new(RwLock::new(json!({"keys": []}))),
            hits: Arc::new(AtomicUsize::new(0)),
            up: Arc::new(AtomicBool::new(true)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/common/discovery/v2.0/keys",
            listener.local_addr().expect("addr")
        );
        let app = Router::new()
            .route("/common/discovery/v2.0/keys", get(serve_jwks))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let fake = Self { url, state };
        fake.publish(published);
        fake
    }

    pub fn publish(&self, keys: &[&RsaKey]) {
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        *self.state.jwks.write().expect("jwks lock") = jwks;
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the service's start-up fetch has reached us, so later counts
    /// measure only what the test provokes.
    pub async fn wait_for_first_hit(&self) {
        for _ in 0..400 {
            if self.hits() > 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the service never fetched the JWKS");
    }

    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }
}

/// The claims of a valid delegated (user) v2 access token for Acme's directory.
pub fn user_claims(overrides: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": format!("https://login.microsoftonline.com/{TID}/v2.0"),
        "aud": AUD_GUID,
        "tid": TID,
        "oid": OID,
        "scp": format!("User.Read {SCOPE}"),
        "name": "Pat Example",
        "preferred_username": "pat@acme.example",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "ver": "2.0",
    });
    if let (Some(claims), Value::Object(overrides)) = (claims.as_object_mut(), overrides) {
        for (name, value) in overrides {
            if value.is_null() {
                claims.remove(&name);
            } else {
                claims.insert(name, value);
            }
        }
    }
    claims
}

pub fn sign(key: &RsaKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    encode(&header, claims, &key.encoding).expect("sign")
}

/// Entra login on, against `fake`, for our audiences and scope, retrying at once.
fn entra_config(fake: &FakeEntra) -> impl FnOnce(&mut Config) {
    let url = fake.url.clone();
    move |c| {
        c.entra.jwks_url = url;
        c.entra.audience = Some(format!("{AUD_URI}, {AUD_GUID}"));
        c.entra.required_scope = Some(SCOPE.to_owned());
        c.entra.retry_seconds = 0;
    }
}

const BODY: fn() -> Value = || json!({"session_id": "s-acme-1", "end_user": "pat"});

async fn assert_invalid(app: &TestApp, token: &str) {
    let response = app.mint(token, BODY()).await;
    let www = www_authenticate(&response);
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert!(www.contains("error=\"invalid_token\""), "{www}");
}

async fn a_valid_user_token_mints_and_the_record_names_the_user(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;

    let (data, _) = app
        .mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;
    assert_eq!(
        app.verify(data["token"].as_str().unwrap()).await.client_id,
        "acme"
    );
    let record: (String, String, String) =
        sqlx::query_as("SELECT tenant_id, minted_by_kind, minted_by FROM session_token_mints")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        record,
        (
            "acme".to_owned(),
            "entra_user".to_owned(),
            format!("{TID}:{OID}")
        )
    );

    // A v1 token (sts.windows.net issuer, App ID URI audience) of the same directory is fine too.
    let v1 = user_claims(
        json!({"iss": format!("https://sts.windows.net/{TID}/"), "aud": AUD_URI, "ver": "1.0"}),
    );
    app.mint_ok(&sign(current(), &v1), BODY()).await;
    // Within the leeway, a token from a slightly fast clock is accepted.
    let now = chrono::Utc::now().timestamp();
    app.mint_ok(
        &sign(
            current(),
            &user_claims(json!({"nbf": now + 30, "iat": now + 30})),
        ),
        BODY(),
    )
    .await;
    assert_eq!(app.mint_count().await, 3);
}

async fn time_claims_are_required_and_checked(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    let now = chrono::Utc::now().timestamp();
    for overrides in [
        json!({"exp": now - 120, "iat": now - 4000, "nbf": now - 4000}),
        json!({"nbf": now + 600}),
        json!({"exp": (now + 3600).to_string()}),
        json!({"nbf": (now - 10).to_string()}),
        json!({"exp": null}),
        json!({"nbf": null}),
    ] {
        assert_invalid(&app, &sign(current(), &user_claims(overrides))).await;
    }
    assert_eq!(app.mint_count().await, 0);
}

async fn audience_and_issuer_must_be_ours_and_match_the_tenant(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    let other = "11111111-2222-4333-8444-555555555555";
    for overrides in [
        json!({"aud": "https://graph.microsoft.com"}),
        json!({"aud": "00000003-0000-0000-c000-000000000000"}),
        json!({"aud": "api://someone-else"}),
        json!({"iss": format!("https://login.microsoftonline.com/{other}/v2.0")}),
        json!({"tid": other}),
        json!({"iss": format!("https://login.microsoftonline.com/{TID}/v2.0/")}),
        json!({"iss": "https://login.microsoftonline.com/common/v2.0", "tid": "common"}),
        json!({"iss": format!("https://login.microsoftonline.com/{{{TID}}}/v2.0"), "tid": format!("{{{TID}}}")}),
        json!({"iss": [format!("https://login.microsoftonline.com/{TID}/v2.0")]}),
        json!({"iss": null}),
        json!({"oid": null}),
    ] {
        assert_invalid(&app, &sign(current(), &user_claims(overrides))).await;
    }
    assert_eq!(app.mint_count().await, 0);
}

async fn forged_and_confused_signatures_are_refused(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    let claims = user_claims(json!({}));
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());

    // alg: none, with and without a signature part.
    let none = json!({"alg": "none", "typ": "JWT", "kid": current().kid});
    assert_invalid(&app, &format!("{}.{}.", b64(&none), b64(&claims))).await;

    // HS256 keyed with the RSA public key (the classic RS/HS confusion).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(current().kid.clone());
    let confused = encode(
        &header,
        &claims,
        &EncodingKey::from_secret(current().public_pem.as_bytes()),
    )
    .unwrap();
    assert_invalid(&app, &confused).await;

    // Signed by a key that is not in the JWKS, under its own kid and under the real one.
    assert_invalid(&app, &sign(attacker(), &claims)).await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(current().kid.clone());
    assert_invalid(
        &app,
        &encode(&header, &claims, &attacker().encoding).unwrap(),
    )
    .await;

    // jku / x5u / jwk headers pointing at the attacker's key are never followed.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(attacker().kid.clone());
    header.jku = Some(format!("{}?attacker", fake.url));
    header.x5u = Some("https://attacker.example/cert.pem".to_owned());
    header.jwk = Some(serde_json::from_value(attacker().jwk.clone()).unwrap());
    assert_invalid(
        &app,
        &encode(&header, &claims, &attacker().encoding).unwrap(),
    )
    .await;
    header.kid = Some(current().kid.clone());
    assert_invalid(
        &app,
        &encode(&header, &claims, &attacker().encoding).unwrap(),
    )
    .await;
    assert_eq!(app.mint_count().await, 0);
}

async fn valid_tokens_without_the_right_to_mint_get_403(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;

    // App-only: roles, no scp.
    let app_only =
        user_claims(json!({"scp": null, "roles": ["Sessions.Mint.All"], "idtyp": "app"}));
    let response = app.mint(&sign(current(), &app_only), BODY()).await;
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;

    // A user token without the required scope.
    let response = app
        .mint(
            &sign(current(), &user_claims(json!({"scp": "User.Read"}))),
            BODY(),
        )
        .await;
    let www = www_authenticate(&response);
    assert_error(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");

    // A directory that maps to no tenant.
    let stranger = "99999999-8888-4777-8666-555555555555";
    let claims = user_claims(
        json!({"tid": stranger, "iss": format!("https://login.microsoftonline.com/{stranger}/v2.0")}),
    );
    let response = app.mint(&sign(current(), &claims), BODY()).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;

    // A dashboard user may not pick another tenant.
    let token = sign(current(), &user_claims(json!({})));
    let response = app
        .mint(
            &token,
            json!({"session_id": "s-globex-support", "client_id": "globex"}),
        )
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    // Nor reach another tenant's session without it.
    let response = app.mint(&token, json!({"session_id": "s-globex-1"})).await;
    assert_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    assert_eq!(app.mint_count().await, 0);
}

async fn a_rolled_key_is_picked_up_after_one_refetch(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    app.mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;
    let before = fake.hits();

    fake.publish(&[current(), rolled()]);
    app.mint_ok(&sign(rolled(), &user_claims(json!({}))), BODY())
        .await;
    assert_eq!(
        fake.hits(),
        before + 1,
        "exactly one refetch for the new kid"
    );
    // Both keys keep working, from the cache.
    app.mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;
    app.mint_ok(&sign(rolled(), &user_claims(json!({}))), BODY())
        .await;
    assert_eq!(fake.hits(), before + 1);
}

async fn a_flood_of_unknown_kids_causes_at_most_one_fetch(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = Arc::new(
        TestApp::builder(backend)
            .config(entra_config(&fake))
            .spawn()
            .await,
    );
    fake.wait_for_first_hit().await;
    app.mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;
    let before = fake.hits();

    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(format!("random-kid-{i}-{}", uuid::Uuid::new_v4()));
            let token = encode(&header, &user_claims(json!({})), &attacker().encoding).unwrap();
            app.mint(&token, BODY()).await.status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert!(
        fake.hits() <= before + 1,
        "{} fetches for 100 unknown kids",
        fake.hits() - before
    );
    // Valid tokens were never held up.
    app.mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;
}

async fn a_failed_refetch_keeps_the_last_good_key_set(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    fake.wait_for_first_hit().await;
    app.mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;

    // Entra goes down; a token with a new kid makes the service refetch, which fails.
    fake.set_up(false);
    let before = fake.hits();
    assert_invalid(&app, &sign(rolled(), &user_claims(json!({})))).await;
    assert_eq!(fake.hits(), before + 1, "the unknown kid was looked for");
    // The keys fetched before still verify tokens.
    app.mint_ok(&sign(current(), &user_claims(json!({}))), BODY())
        .await;
}

async fn an_unreachable_jwks_at_start_is_503_for_entra_only_until_it_answers(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    fake.set_up(false);
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;

    let token = sign(current(), &user_claims(json!({})));
    let response = app.mint(&token, BODY()).await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "entra_unavailable",
    )
    .await;
    app.mint_ok(ACME_KEY, BODY()).await;

    fake.set_up(true);
    app.mint_ok(&token, BODY()).await;
    assert_eq!(app.mint_count().await, 2);
}

async fn with_entra_off_every_foreign_jwt_is_401(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(|c| c.entra.jwks_url = fake.url.clone())
        .spawn()
        .await;
    assert_invalid(&app, &sign(current(), &user_claims(json!({})))).await;
    assert_eq!(fake.hits(), 0, "Entra is never called while it is off");
}

/// A JWKS endpoint that misbehaves: `/redirect` sends the client to the real (fake) Entra, which
/// would serve valid keys; `/huge` streams a chunked body past the 1 MiB cap.
async fn hostile_jwks_server(real: &FakeEntra) -> String {
    let target = real.url.clone();
    let app = Router::new()
        .route(
            "/redirect",
            get(move || {
                let target = target.clone();
                async move { (AxumStatus::FOUND, [("location", target)]) }
            }),
        )
        .route(
            "/huge",
            get(|| async {
                let chunks = std::iter::once(Ok::<_, std::io::Error>(
                    axum::body::Bytes::from_static(b"{\"keys\": [], \"pad\": \""),
                ))
                .chain((0..64).map(|_| Ok(axum::body::Bytes::from(vec![b'a'; 32 * 1024]))))
                .chain(std::iter::once(Ok(axum::body::Bytes::from_static(b"\"}"))));
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Keys come only from the configured URL, in at most 1 MiB: a redirect is not followed (even
/// to a server with valid keys) and an oversized chunked body is refused; both leave Entra
/// callers with 503 `entra_unavailable`, API keys unaffected.
async fn the_jwks_fetch_follows_no_redirect_and_caps_a_streamed_body(backend: Backend) {
    let real = FakeEntra::start(&[current()]).await;
    let hostile = hostile_jwks_server(&real).await;
    for path in ["/redirect", "/huge"] {
        let url = format!("{hostile}{path}");
        let app = TestApp::builder(backend)
            .config(entra_config(&real))
            .config(move |c| c.entra.jwks_url = url)
            .spawn()
            .await;
        let response = app
            .mint(&sign(current(), &user_claims(json!({}))), BODY())
            .await;
        assert_error(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "entra_unavailable",
        )
        .await;
        assert_eq!(
            app.mint(ACME_KEY, BODY()).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(real.hits(), 0, "the redirect was followed");
}

/// A dashboard user (Entra) manages its tenant's tokens, but introspection is for service
/// accounts: 403, in the envelope, whatever the token asked about.
async fn an_entra_user_may_not_introspect(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    let user = sign(current(), &user_claims(json!({})));
    let (data, _) = app.mint_ok(ACME_KEY, BODY()).await;
    let token = data["token"].as_str().expect("token");

    let response = app
        .client
        .post(app.url("/public-api/sessions/introspect"))
        .bearer_auth(&user)
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("request");
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;

    // The same user lists its tenant's tokens: the refusal is about introspection alone.
    let listed = app
        .client
        .get(app.url("/public-api/sessions"))
        .bearer_auth(&user)
        .send()
        .await
        .expect("request");
    assert_eq!(listed.status(), StatusCode::OK);
}

/// `neo_sessions_entra_token_cache_hits_total` as scraped.
async fn token_cache_hits(app: &TestApp) -> u64 {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("neo_sessions_entra_token_cache_hits_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no token cache counter in:\n{text}"))
}

/// A token repeated is verified once (the counter proves the second mint skipped the RSA
/// check), and a remembered token stops working the moment its key leaves the JWKS.
async fn a_repeated_token_is_verified_once_and_refused_once_its_key_is_withdrawn(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    let token = sign(current(), &user_claims(json!({})));
    app.mint_ok(&token, BODY()).await;
    assert_eq!(token_cache_hits(&app).await, 0);
    app.mint_ok(&token, BODY()).await;
    app.mint_ok(&token, BODY()).await;
    assert_eq!(
        token_cache_hits(&app).await,
        2,
        "verified once, then remembered"
    );

    // Entra withdraws the key; a token under the new kid makes the service refetch.
    fake.publish(&[rolled()]);
    app.mint_ok(&sign(rolled(), &user_claims(json!({}))), BODY())
        .await;
    let hits = token_cache_hits(&app).await;
    assert_invalid(&app, &token).await;
    assert_eq!(
        token_cache_hits(&app).await,
        hits,
        "no hit for a withdrawn key"
    );
}

/// A remembered token is refused once it expires (no leeway here), like any other.
async fn a_remembered_token_still_expires(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(|c| {
            entra_config(&fake)(c);
            c.entra.leeway_seconds = 0;
        })
        .spawn()
        .await;
    let exp = chrono::Utc::now().timestamp() + 2;
    let token = sign(current(), &user_claims(json!({"exp": exp})));
    app.mint_ok(&token, BODY()).await;
    app.mint_ok(&token, BODY()).await;
    assert_eq!(token_cache_hits(&app).await, 1);
    while chrono::Utc::now().timestamp() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_invalid(&app, &token).await;
}

/// Only the very token verified is remembered: the same signature under other claims, or the
/// same claims under a damaged signature, is verified afresh and refused. With the cache off
/// (`token_cache_entries = 0`) every request is verified.
async fn a_token_differing_from_a_remembered_one_is_verified_afresh(backend: Backend) {
    let fake = FakeEntra::start(&[current()]).await;
    let app = TestApp::builder(backend)
        .config(entra_config(&fake))
        .spawn()
        .await;
    let token = sign(current(), &user_claims(json!({})));
    app.mint_ok(&token, BODY()).await;
    let parts: Vec<&str> = token.split('.').collect();
    let other_claims = user_claims(json!({"oid": "00000000-0000-4000-8000-000000000001"}));
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other_claims).unwrap()),
        parts[2]
    );
    assert_invalid(&app, &swapped).await;
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[0] ^= 1;
    let damaged = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert_invalid(&app, &damaged).await;
    assert_eq!(token_cache_hits(&app).await, 0);
    assert_eq!(app.mint_count().await, 1);

    let uncached = TestApp::builder(backend)
        .config(|c| {
            entra_config(&fake)(c);
            c.entra.token_cache_entries = 0;
        })
        .spawn()
        .await;
    uncached.mint_ok(&token, BODY()).await;
    uncached.mint_ok(&token, BODY()).await;
    assert_eq!(token_cache_hits(&uncached).await, 0);
}

backend_tests!(
    a_repeated_token_is_verified_once_and_refused_once_its_key_is_withdrawn,
    a_remembered_token_still_expires,
    a_token_differing_from_a_remembered_one_is_verified_afresh,
    an_entra_user_may_not_introspect,
    the_jwks_fetch_follows_no_redirect_and_caps_a_streamed_body,
    a_valid_user_token_mints_and_the_record_names_the_user,
    time_claims_are_required_and_checked,
    audience_and_issuer_must_be_ours_and_match_the_tenant,
    forged_and_confused_signatures_are_refused,
    valid_tokens_without_the_right_to_mint_get_403,
    a_rolled_key_is_picked_up_after_one_refetch,
    a_flood_of_unknown_kids_causes_at_most_one_fetch,
    a_failed_refetch_keeps_the_last_good_key_set,
    an_unreachable_jwks_at_start_is_503_for_entra_only_until_it_answers,
    with_entra_off_every_foreign_jwt_is_401,
);
