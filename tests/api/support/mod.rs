//! `TestApp::spawn(backend)` (or `TestApp::builder(backend)` ... `.spawn()`): a real router on a
//! random port, on its own fresh database seeded with `config/seed.example.json`, and typed
//! helpers to talk to it.

pub mod cli;
pub mod postgres;
pub mod redis;

use std::num::NonZero;
use std::sync::{Arc, OnceLock};

use jsonwebtoken::{jwk::JwkSet, DecodingKey, Validation};
use neo_sessions::{app::App, config::Config, seed::Fixture, tokens::SessionClaims};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sqlx::{any::AnyPoolOptions, postgres::PgPoolOptions, AnyPool};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// Keys of `config/seed.example.json`.
pub const ACME_KEY: &str = "neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd";
pub const ACME_REVOKED_KEY: &str = "neo_sk_test_Hh2Jk9Lm4Nn7Pp1Qq5Rr8Ss3";
pub const GLOBEX_KEY: &str = "neo_sk_test_Gx7Lb2Qm9Tz4Wc8Nv3Kd6Rp1";
/// The platform tenant's key.
pub const NEO_KEY: &str = "neo_sk_test_Np5Vw8Xc2Bz7Mq4Lt9Rf3Hs6";

pub const FIXTURE: &str = include_str!("../../../config/seed.example.json");

/// The key-encryption key test apps on PostgreSQL are given (it is required off the embedded
/// database); tests that seal keys themselves use it too.
pub const TEST_KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The mint route.
pub const MINT_PATH: &str = "/public-api/sessions";
pub const JSON: &str = "application/json";

/// The server that holds the test databases. Tests fail (never skip) when it does not answer.
pub fn admin_url() -> String {
    std::env::var("NEO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `admin_url` with its database name replaced.
pub fn database_url(name: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].rfind('/') {
        Some(i) => base[..scheme_end + i].to_owned(),
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Once per test process: logs when `TEST_LOG` is set, and the TLS crypto provider that
/// reqwest (built with rustls and no default provider) needs before any client is built.
pub fn init_test_process() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        neo_sessions_verify::install_crypto_provider();
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .try_init();
        }
    });
}

/// The database backends the whole suite runs against (see `backend_tests!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh database of its own for one test: a new PostgreSQL database (dropped with the guard)
/// or a new SQLite file in a temporary directory. `pool` is a backend-neutral `AnyPool` for the
/// test's own checks; keep those queries portable (cast UUIDs and timestamps to text).
pub struct TestDatabase {
    pub backend: Backend,
    pub name: String,
    pub url: String,
    pub pool: AnyPool,
    _dir: Option<TempDir>,
    /// Whether dropping this handle drops the database (false for [`TestDatabase::attach`]).
    owned: bool,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        init_test_process();
        sqlx::any::install_default_drivers();
        let name = format!("neo_test_{}", uuid::Uuid::new_v4().simple());
        let (url, dir) = match backend {
            Backend::Postgres => {
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url())
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL at {} does not answer ({e}); start it (see README) or set NEO_TEST_DATABASE_URL",
                            admin_url()
                        )
                    });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .expect("create test database");
                admin.close().await;
                (database_url(&name), None)
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join(format!("{name}.db")).display()
                );
                (url, Some(dir))
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect to test database");
        Self {
            backend,
            name,
            url,
            pool,
            _dir: dir,
            owned: true,
        }
    }

    /// A database the test placed itself (on a PostgreSQL server of its own, or a SQLite file in
    /// a directory of its choosing), migrated and seeded like [`TestDatabase::seeded`]. `name`
    /// must be unique to the test.
    pub async fn seeded_at(backend: Backend, name: &str, url: String) -> Self {
        init_test_process();
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect to test database");
        let db = Self {
            backend,
            name: name.to_owned(),
            url,
            pool,
            _dir: None,
            owned: true,
        };
        db.migrate_and_seed().await;
        db
    }

    /// Another handle on a database a test already has (e.g. for a second app on it): dropping
    /// it leaves the database alone.
    pub async fn attach(backend: Backend, name: &str, url: String) -> Self {
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connect to test database");
        Self {
            backend,
            name: name.to_owned(),
            url,
            pool,
            _dir: None,
            owned: false,
        }
    }

    /// A fresh database, migrated and seeded with `config/seed.example.json`.
    pub async fn seeded(backend: Backend) -> Self {
        let db = Self::create(backend).await;
        db.migrate_and_seed().await;
        db
    }

    pub async fn migrate_and_seed(&self) {
        let store = neo_sessions::store::connect(&self.url, 2)
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let prepared = Fixture::from_json(FIXTURE)
            .expect("fixture parses")
            .prepare("test")
            .expect("fixture is valid");
        store.apply_seed(&prepared.plan).await.expect("seed");
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }
}

/// Parses a timestamp read as text from either backend.
pub fn parse_timestamp(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .unwrap_or_else(|e| panic!("unparsable timestamp {text:?}: {e}"))
        .with_timezone(&chrono::Utc)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres || !self.owned {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a thread with its own runtime can block on it.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url())
                    .await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub config: Config,
    /// The running app's state (e.g. to read the rate limiter's size).
    pub state: std::sync::Arc<neo_sessions::app::AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Field order matters: the server stops before its database is dropped.
    pub db: TestDatabase,
    /// Kept alive for the generated signing key.
    _data_dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// One adjustment of the test configuration.
type ConfigTweak<'a> = Box<dyn FnOnce(&mut Config) + 'a>;

/// How a test asks for its app: `TestApp::builder(backend)`, any configuration tweaks and
/// perhaps a database of its own, then `spawn()`.
pub struct TestAppBuilder<'a> {
    backend: Backend,
    tweaks: Vec<ConfigTweak<'a>>,
    database: Option<TestDatabase>,
}

impl<'a> TestAppBuilder<'a> {
    /// Adjusts the test configuration before the app is built. Tweaks apply in the order given,
    /// after the test defaults (so they may override those too).
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + 'a) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Signs with one static ES256 key file (`signing.key_file`) instead of the database's keys,
    /// so the test can read the private key and forge tokens with it.
    pub fn static_signing_key(self) -> Self {
        self.config(|c| {
            let (_, der) = neo_sessions::tokens::SigningKey::generate(
                neo_sessions::config::SigningAlgorithm::ES256,
            )
            .expect("generate a key");
            let path = c.data.dir.with_file_name("static-signing-key.pem");
            std::fs::create_dir_all(path.parent().expect("parent")).expect("key dir");
            std::fs::write(&path, pem::encode(&pem::Pem::new("PRIVATE KEY", der)))
                .expect("write the key");
            c.signing.key_file = Some(path);
        })
    }

    /// Serves from a database the test prepared itself (e.g. seeded by the CLI) instead of a
    /// fresh one seeded with `config/seed.example.json`.
    pub fn database(mut self, db: TestDatabase) -> Self {
        assert_eq!(
            db.backend, self.backend,
            "the database is not of the app's backend"
        );
        self.database = Some(db);
        self
    }

    pub async fn spawn(self) -> TestApp {
        init_test_process();
        let db = match self.database {
            Some(db) => db,
            None => TestDatabase::seeded(self.backend).await,
        };
        let data_dir = tempfile::tempdir().expect("tempdir");

        let mut config = Config::default();
        config.database.url = Some(db.url.clone().into());
        config.database.max_connections = NonZero::new(5).unwrap();
        config.data.dir = data_dir.path().join("data");
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        // Every request sees the database as it is (the key cache has a test of its own).
        config.api_key.cache_seconds = 0;
        // Rate limits out of the way of tests that are not about them (those set their own).
        config.rate_limit.per_minute = NonZero::new(1_000_000).unwrap();
        config.rate_limit.burst = NonZero::new(100_000).unwrap();
        config.rate_limit.auth_failure_per_minute = NonZero::new(1_000_000).unwrap();
        config.rate_limit.auth_failure_burst = NonZero::new(100_000).unwrap();
        // Required on PostgreSQL; on SQLite one is generated in the data directory, as for a
        // developer.
        if self.backend == Backend::Postgres {
            config.signing.key_encryption_key = Some(TEST_KEK.to_owned().into());
        }
        for tweak in self.tweaks {
            tweak(&mut config);
        }

        let app = App::build(config.clone()).await.expect("build the app");
        let address = format!("http://{}", app.address());
        let state = Arc::clone(app.state());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));

        TestApp {
            address,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            config,
            state,
            shutdown: Some(tx),
            server: Some(server),
            db,
            _data_dir: data_dir,
        }
    }
}

impl TestApp {
    /// Asks the server to shut down (as SIGTERM does) and returns its task, which ends when
    /// `serve` returns.
    pub fn shut_down(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server
            .take()
            .expect("the server was shut down already")
    }

    pub fn builder<'a>(backend: Backend) -> TestAppBuilder<'a> {
        TestAppBuilder {
            backend,
            tweaks: Vec::new(),
            database: None,
        }
    }

    /// The app with the test defaults on a fresh seeded database:
    /// `TestApp::builder(backend).spawn()`.
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::builder(backend).spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `POST /public-api/sessions` with `Authorization: Bearer <credential>` and a JSON body.
    pub async fn mint(&self, credential: &str, body: Value) -> Response {
        self.mint_with(Some(credential), &[], body).await
    }

    /// `POST /public-api/sessions` with a JSON body, an optional bearer credential and further
    /// headers, sent as given (a repeated name is sent twice).
    pub async fn mint_with(
        &self,
        credential: Option<&str>,
        headers: &[(&str, &str)],
        body: Value,
    ) -> Response {
        let mut request = self.client.post(self.url(MINT_PATH)).json(&body);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request")
    }

    /// `POST /public-api/sessions` with raw bytes, an optional bearer credential and an optional
    /// content type.
    pub async fn mint_raw(
        &self,
        credential: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut request = self.client.post(self.url(MINT_PATH)).body(body);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request")
    }

    /// Mints with `credential` every 100 ms until one is answered 200, at most `attempts`
    /// times; whether one was. (For a service coming back from a fault.)
    pub async fn mints_again(&self, credential: &str, body: Value, attempts: usize) -> bool {
        for _ in 0..attempts {
            if self.mint(credential, body.clone()).await.status() == StatusCode::OK {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// Mints and returns `data` and `meta`, asserting 200.
    pub async fn mint_ok(&self, credential: &str, body: Value) -> (Value, Value) {
        let response = self.mint(credential, body).await;
        let status = response.status();
        let json: Value = response.json().await.expect("json body");
        assert_eq!(status, StatusCode::OK, "{json}");
        (json["data"].clone(), json["meta"].clone())
    }

    /// Asserts the error envelope (see [`assert_error`]) and that no mint was recorded.
    pub async fn refused(&self, response: Response, status: StatusCode, code: &str) -> Value {
        let body = assert_error(response, status, code).await;
        assert_eq!(
            self.mint_count().await,
            0,
            "a refused request recorded a mint: {body}"
        );
        body
    }

    /// `method path` without a body, with an optional bearer credential.
    pub async fn request(&self, method: Method, path: &str, credential: Option<&str>) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        request.send().await.expect("request")
    }

    /// Revokes one token by jti (`DELETE /public-api/sessions/{jti}`) as `credential`.
    pub async fn revoke(&self, credential: &str, jti: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("/public-api/sessions/{jti}"),
            Some(credential),
        )
        .await
    }

    /// The envelope introspection's answer (`data`) for `token`, asked as `credential`; the
    /// request itself must succeed.
    pub async fn introspect(&self, credential: &str, token: &str) -> Value {
        let response = self
            .client
            .post(self.url("/public-api/sessions/introspect"))
            .bearer_auth(credential)
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .expect("introspect");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        body["data"].clone()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, None).await
    }

    /// `GET path`, the body parsed as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("JSON body")
    }

    /// Verifies `token` against the served JWKS exactly as the chat service would.
    pub async fn verify(&self, token: &str) -> SessionClaims {
        let jwks: JwkSet = self
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .expect("jwks");
        let header = jsonwebtoken::decode_header(token).expect("header");
        let kid = header.kid.expect("kid in header");
        let jwk = jwks.find(&kid).expect("kid is published");
        let key = DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.config.token.issuer.as_str()]);
        validation.set_audience(&[self.config.token.audience.as_str()]);
        jsonwebtoken::decode::<SessionClaims>(token, &key, &validation)
            .expect("token verifies against the JWKS")
            .claims
    }

    /// The PEM of the server's static signing key (tests forge tokens with it); the app must be
    /// built with [`TestAppBuilder::static_signing_key`].
    pub fn signing_key_pem(&self) -> Vec<u8> {
        let path = self
            .config
            .signing
            .key_file
            .as_ref()
            .expect("built with static_signing_key()");
        std::fs::read(path).expect("signing key file")
    }

    pub async fn mint_count(&self) -> i64 {
        self.db.count("session_token_mints").await
    }

    /// The revocation feed's jtis as `credential` reads them, once it holds at least `expected`
    /// (within 10 s): on PostgreSQL a revocation is handed out once no older transaction on the
    /// server (other tests' included) is in flight.
    pub async fn revoked_jtis(&self, credential: &str, expected: usize) -> Vec<String> {
        let started = std::time::Instant::now();
        loop {
            let response = self
                .request(
                    Method::GET,
                    "/public-api/sessions/revocations",
                    Some(credential),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.expect("json");
            let jtis: Vec<String> = body["data"]["revocations"]
                .as_array()
                .expect("revocations")
                .iter()
                .map(|r| r["jti"].as_str().expect("jti").to_owned())
                .collect();
            if jtis.len() >= expected || started.elapsed() > std::time::Duration::from_secs(10) {
                return jtis;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// A response header as text, if present (and visible ASCII).
pub fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `WWW-Authenticate` challenge, which must be there.
pub fn www_authenticate(response: &Response) -> String {
    header(response, "www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate header on {}", response.status()))
}

/// The `X-Request-Id` the service answered with, which must be there.
pub fn request_id(response: &Response) -> String {
    header(response, "x-request-id").expect("x-request-id header")
}

/// Asserts the error envelope of docs/api.md, "Envelope, request ids, errors" and returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let request_id = request_id(&response);
    let content_type = header(&response, "content-type");
    let text = response.text().await.expect("body");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    assert_eq!(content_type.as_deref(), Some("application/json"), "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["meta"]["request_id"], request_id, "{body}");
    assert!(body.get("data").is_none(), "{body}");
    body
}
