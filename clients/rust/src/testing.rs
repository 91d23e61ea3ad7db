//! For the unit tests: Ed25519 keys as JWKs, tokens signed with them, and a JWKS server whose
//! answers a test controls.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc, Mutex,
};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An Ed25519 key pair and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn new(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
        }
    }

    /// `claims` signed with this key, with our `typ`, as `alg`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(crate::SESSION_TOKEN_TYP.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

struct Served {
    keys: Mutex<Vec<Value>>,
    cache_control: Mutex<Option<String>>,
    down: AtomicBool,
    hits: AtomicUsize,
    /// While `true`, requests are held unanswered.
    hang: tokio::sync::watch::Sender<bool>,
    /// Requests held right now.
    held: AtomicUsize,
}

/// A JWKS on 127.0.0.1: publishes what the test says, answers 503 while down, or holds requests
/// unanswered while hanging.
pub struct FakeJwks {
    pub url: String,
    served: Arc<Served>,
}

async fn serve(State(served): State<Arc<Served>>) -> axum::response::Response {
    served.hits.fetch_add(1, Ordering::SeqCst);
    let mut hang = served.hang.subscribe();
    if *hang.borrow() {
        served.held.fetch_add(1, Ordering::SeqCst);
        let _ = hang.wait_for(|hanging| !*hanging).await;
        served.held.fetch_sub(1, Ordering::SeqCst);
    }
    if served.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let body = json!({ "keys": *served.keys.lock().expect("keys") }).to_string();
    match served.cache_control.lock().expect("header").clone() {
        Some(value) => ([("cache-control", value)], body).into_response(),
        None => body.into_response(),
    }
}

impl FakeJwks {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let served = Arc::new(Served {
            keys: Mutex::default(),
            cache_control: Mutex::default(),
            down: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
            hang: tokio::sync::watch::channel(false).0,
            held: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve))
            .with_state(Arc::clone(&served));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let fake = Self { url, served };
        fake.publish(keys);
        fake
    }

    pub fn publish(&self, keys: &[&TestKey]) {
        *self.served.keys.lock().expect("keys") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn publish_raw(&self, keys: Vec<Value>) {
        *self.served.keys.lock().expect("keys") = keys;
    }

    pub fn cache_control(&self, value: &str) {
        *self.served.cache_control.lock().expect("header") = Some(value.to_owned());
    }

    pub fn set_down(&self, down: bool) {
        self.served.down.store(down, Ordering::SeqCst);
    }

    /// Holds every request unanswered until `set_hanging(false)`.
    pub fn set_hanging(&self, hanging: bool) {
        self.served.hang.send_replace(hanging);
    }

    /// How many requests are held unanswered right now.
    pub fn held(&self) -> usize {
        self.served.held.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.served.hits.load(Ordering::SeqCst)
    }
}
