//! The real `neo-sessions` binary: `seed`, `api-key create|list|revoke` and `migrate`, each run
//! as a child process against its own fresh database, once per backend (PostgreSQL and SQLite).

use neo_sessions::auth::api_key;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};

use crate::support::{
    assert_error,
    cli::{Cli, Run},
    Backend, TestApp, TestDatabase, ACME_KEY, FIXTURE,
};

const TABLES: [&str; 5] = [
    "tenants",
    "end_companies",
    "agents",
    "chat_sessions",
    "api_keys",
];

fn example_fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("example fixture is JSON")
}

/// Row counts of [`TABLES`], in that order.
async fn counts(pool: &AnyPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"));
        counts.push(count);
    }
    counts
}

/// `text` as a single-quoted SQL string literal (test-controlled values only).
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The base tables of the database, whatever the backend (the migrations table included).
async fn table_names(db: &TestDatabase) -> Vec<String> {
    let sql = match db.backend {
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
             ORDER BY 1"
        }
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master
             WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY 1"
        }
    };
    sqlx::query_scalar(sql)
        .fetch_all(&db.pool)
        .await
        .expect("list tables")
}

/// One column of a row, as the test reads it from either backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Null,
    /// Every non-binary column, cast to text by the database.
    Text(String),
    /// BYTEA / BLOB columns, as stored.
    Bytes(Vec<u8>),
}

impl Cell {
    fn contains(&self, needle: &str) -> bool {
        match self {
            Cell::Null => false,
            Cell::Text(text) => text.contains(needle),
            Cell::Bytes(bytes) => bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes()),
        }
    }
}

/// Every row of `table`, every column (found in the catalogue, so none is missed), sorted.
async fn rows(db: &TestDatabase, table: &str) -> Vec<Vec<Cell>> {
    let sql = match db.backend {
        Backend::Postgres => format!(
            "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT)
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = {}
             ORDER BY ordinal_position",
            sql_literal(table)
        ),
        Backend::Sqlite => format!(
            "SELECT name, type FROM pragma_table_info({}) ORDER BY cid",
            sql_literal(table)
        ),
    };
    let columns: Vec<(String, bool)> = sqlx::query(&sql)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let data_type: String = row.get(1);
            let binary = matches!(data_type.to_ascii_lowercase().as_str(), "bytea" | "blob");
            (name, binary)
        })
        .collect();
    assert!(!columns.is_empty(), "{table} has no columns");
    let select: Vec<String> = columns
        .iter()
        .map(|(name, binary)| {
            if *binary {
                format!("\"{name}\"")
            } else {
                format!("CAST(\"{name}\" AS TEXT)")
            }
        })
        .collect();
    let sql = format!("SELECT {} FROM \"{table}\"", select.join(", "));
    let mut rows: Vec<Vec<Cell>> = sqlx::query(&sql)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("rows of {table}: {e}"))
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (name, binary))| {
                    let cell = if *binary {
                        row.try_get::<Option<Vec<u8>>, _>(i)
                            .map(|v| v.map(Cell::Bytes))
                    } else {
                        row.try_get::<Option<String>, _>(i)
                            .map(|v| v.map(Cell::Text))
                    };
                    cell.unwrap_or_else(|e| panic!("{table}.{name}: {e}"))
                        .unwrap_or(Cell::Null)
                })
                .collect()
        })
        .collect();
    rows.sort();
    rows
}

/// Every row of [`TABLES`], in a stable order.
async fn snapshot(db: &TestDatabase) -> Vec<Vec<Vec<Cell>>> {
    let mut tables = Vec::new();
    for table in TABLES {
        tables.push(rows(db, table).await);
    }
    tables
}

async fn key_hash(pool: &AnyPool, id: &str) -> Vec<u8> {
    sqlx::query_scalar(&format!(
        "SELECT key_hash FROM api_keys WHERE id = {}",
        sql_literal(id)
    ))
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("key {id}: {e}"))
}

fn assert_key_shape(key: &str) {
    let secret = key
        .strip_prefix("neo_sk_test_")
        .unwrap_or_else(|| panic!("{key:?} does not start with neo_sk_test_"));
    assert_eq!(secret.len(), 32, "{key:?}");
    assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()), "{key:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a key with `api-key create` and returns it, asserting success.
async fn create_key(cli: &Cli, tenant: &str, name: &str) -> String {
    let run = cli
        .run(&["api-key", "create", "--tenant", tenant, "--name", name])
        .await;
    run.assert_success();
    let lines = run.key_lines();
    assert_eq!(lines.len(), 1, "one key printed:\n{run}");
    let key = lines[0].trim().to_owned();
    assert_key_shape(&key);
    key
}

async fn key_id_by_name(pool: &AnyPool, name: &str) -> String {
    sqlx::query_scalar(&format!(
        "SELECT id FROM api_keys WHERE name = {}",
        sql_literal(name)
    ))
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("key named {name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// seed

async fn seed_is_idempotent(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    let fixture = example_fixture();
    let expected: Vec<i64> = TABLES
        .iter()
        .map(|table| {
            let key = if *table == "chat_sessions" {
                "sessions"
            } else {
                table
            };
            fixture[key].as_array().expect("fixture array").len() as i64
        })
        .collect();

    let first = cli.seed_example().await;
    assert!(first.stdout.contains("seeded 3 tenants"), "{first}");
    assert_eq!(counts(&db.pool).await, expected);
    let before = snapshot(&db).await;

    cli.seed_example().await;
    assert_eq!(counts(&db.pool).await, expected);
    assert_eq!(snapshot(&db).await, before, "a second seed changed rows");
}

async fn seed_prints_a_generated_key_once_and_keeps_it(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    let mut fixture = example_fixture();
    fixture["api_keys"]
        .as_array_mut()
        .expect("api_keys")
        .push(json!({"id": "k-generated", "tenant_id": "acme", "name": "generated"}));
    let path = cli.write_fixture("with-generated-key.json", &fixture);
    let path = path.to_str().expect("utf-8 path");

    let first = cli.run(&["seed", path]).await;
    first.assert_success();
    let lines = first.key_lines();
    assert_eq!(
        lines.len(),
        1,
        "the generated key is printed once:\n{first}"
    );
    assert!(lines[0].contains("k-generated"), "{first}");
    let key = lines[0]
        .split_whitespace()
        .find(|word| word.starts_with("neo_sk_"))
        .expect("key on the line");
    assert_key_shape(key);
    assert_eq!(
        first.stdout.matches(key).count(),
        1,
        "printed more than once:\n{first}"
    );
    assert!(!first.stderr.contains(key), "key on stderr:\n{first}");
    // The fixture's own secrets are never printed.
    assert!(
        !first.stdout.contains("4qZt8WcJr2LmX9vB7nKp3sYd"),
        "{first}"
    );
    let hash = key_hash(&db.pool, "k-generated").await;
    assert_eq!(
        hash,
        api_key::hash(key).to_vec(),
        "stored hash is not the printed key's"
    );

    let second = cli.run(&["seed", path]).await;
    second.assert_success();
    assert!(
        second.key_lines().is_empty(),
        "a key is printed again:\n{second}"
    );
    assert!(!second.stdout.contains(key) && !second.stderr.contains(key));
    assert_eq!(
        key_hash(&db.pool, "k-generated").await,
        hash,
        "a second seed replaced the generated key"
    );
    assert_eq!(counts(&db.pool).await[4], 5);
}

async fn a_bad_fixture_fails_and_writes_nothing(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.run(&["migrate"]).await.assert_success();

    let cases = [
        (
            "field typo",
            json!({"tenants": [{"id": "acme", "name": "Acme", "platfrom": true}]}),
            "platfrom",
        ),
        (
            "section typo",
            json!({"tenant": [{"id": "acme", "name": "Acme"}]}),
            "tenant",
        ),
        (
            "session kind",
            json!({
                "tenants": [{"id": "acme", "name": "Acme"}],
                "sessions": [{"id": "s-1", "tenant_id": "acme", "kind": "vip"}],
            }),
            "kind",
        ),
        (
            "session status",
            json!({
                "tenants": [{"id": "acme", "name": "Acme"}],
                "sessions": [{"id": "s-1", "tenant_id": "acme", "status": "paused"}],
            }),
            "status",
        ),
        (
            "bad secret",
            json!({
                "tenants": [{"id": "acme", "name": "Acme"}],
                "api_keys": [{"id": "k", "tenant_id": "acme", "name": "k", "secret": "hunter2"}],
            }),
            "secret",
        ),
        // Valid on its face; fails in the database halfway: the transaction must roll back.
        (
            "unknown tenant of a session",
            json!({
                "tenants": [{"id": "acme", "name": "Acme"}],
                "sessions": [{"id": "s-1", "tenant_id": "ghost"}],
            }),
            "nothing was written",
        ),
    ];
    for (what, fixture, mentioned) in cases {
        let path = cli.write_fixture("bad.json", &fixture);
        let run = cli.run(&["seed", path.to_str().expect("utf-8")]).await;
        run.assert_failure();
        assert!(
            run.stderr.contains(mentioned),
            "{what}: stderr should mention {mentioned:?}:\n{run}"
        );
        assert!(!run.stdout.contains("seeded"), "{what}:\n{run}");
        assert!(
            !run.stderr.contains("hunter2"),
            "{what}: secret echoed:\n{run}"
        );
        assert_eq!(
            counts(&db.pool).await,
            [0, 0, 0, 0, 0],
            "{what}: rows were written"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// api-key

/// The key is meant to be captured by a script (`KEY=$(neo-sessions api-key create ...)`): stdout
/// must hold the key and nothing else.
async fn api_key_create_prints_exactly_the_key_on_stdout(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;

    let run = cli
        .run(&["api-key", "create", "--tenant", "acme", "--name", "relay"])
        .await;
    run.assert_success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be exactly the key:\n{run}");
    assert_key_shape(lines[0]);
    assert!(!run.stderr.contains(lines[0]), "key on stderr:\n{run}");
}

async fn api_key_create_list_revoke_round_trip(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;

    let key = create_key(&cli, "acme", "relay").await;
    let id = key_id_by_name(&db.pool, "relay").await;
    let hash = key_hash(&db.pool, &id).await;

    let app = TestApp::builder(backend).database(db).spawn().await;
    let (data, _) = app.mint_ok(&key, json!({"session_id": "s-acme-1"})).await;
    let claims = app.verify(data["token"].as_str().expect("token")).await;
    assert_eq!(claims.client_id, "acme");

    let list = cli.run(&["api-key", "list", "--tenant", "acme"]).await;
    list.assert_success();
    assert!(list.stdout.contains(&id), "{list}");
    assert!(list.stdout.contains("relay"), "{list}");
    let secret = key.trim_start_matches("neo_sk_test_");
    let hash_hex = hex(&hash);
    for leaked in [
        key.as_str(),
        secret,
        hash_hex.as_str(),
        hash_hex.to_uppercase().as_str(),
        "4qZt8WcJr2LmX9vB7nKp3sYd",
    ] {
        assert!(
            !list.stdout.contains(leaked) && !list.stderr.contains(leaked),
            "list shows {leaked}:\n{list}"
        );
    }
    assert!(!list.stdout.contains("neo_sk_"), "{list}");

    let revoke = cli.run(&["api-key", "revoke", &id]).await;
    revoke.assert_success();
    let response = app.mint(&key, json!({"session_id": "s-acme-1"})).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(app.mint_count().await, 1);

    let unknown = cli.run(&["api-key", "revoke", "key_doesnotexist"]).await;
    unknown.assert_failure();
    assert!(unknown.stderr.contains("key_doesnotexist"), "{unknown}");
}

async fn api_key_create_enforces_the_platform_flag(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    let keys_before = counts(&db.pool).await[4];

    let run = cli
        .run(&["api-key", "create", "--tenant", "neo", "--name", "x"])
        .await;
    run.assert_failure();
    assert!(run.stderr.contains("--platform"), "{run}");
    assert!(run.key_lines().is_empty(), "{run}");

    let run = cli
        .run(&[
            "api-key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "x",
            "--platform",
        ])
        .await;
    run.assert_failure();
    assert!(run.key_lines().is_empty(), "{run}");

    let run = cli
        .run(&["api-key", "create", "--tenant", "initrode", "--name", "x"])
        .await;
    run.assert_failure();
    assert!(run.stderr.contains("initrode"), "{run}");
    assert!(run.key_lines().is_empty(), "{run}");

    assert_eq!(
        counts(&db.pool).await[4],
        keys_before,
        "a refused create wrote a key"
    );

    // The positive control: a platform key, confirmed, that can mint for Acme's support session.
    let run = cli
        .run(&[
            "api-key",
            "create",
            "--tenant",
            "neo",
            "--name",
            "console",
            "--platform",
        ])
        .await;
    run.assert_success();
    let key = run.key_lines()[0].trim().to_owned();
    assert_key_shape(&key);
    assert_eq!(counts(&db.pool).await[4], keys_before + 1);

    let app = TestApp::builder(backend).database(db).spawn().await;
    let (data, _) = app
        .mint_ok(
            &key,
            json!({"session_id": "s-acme-support", "client_id": "acme"}),
        )
        .await;
    let claims = app.verify(data["token"].as_str().expect("token")).await;
    assert_eq!(claims.client_id, "acme");
}

async fn the_database_never_holds_the_plaintext_key(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    let key = create_key(&cli, "acme", "relay").await;
    let id = key_id_by_name(&db.pool, "relay").await;

    // The stored hashes, compared as bytes in Rust (no backend's text rendering of a blob).
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(&db.pool)
        .await
        .expect("key hashes");
    assert_eq!(hashes.len() as i64, counts(&db.pool).await[4]);
    for hash in &hashes {
        assert_eq!(
            hash.len(),
            32,
            "a stored hash is not a SHA-256: {}",
            hex(hash)
        );
        assert!(
            !Cell::Bytes(hash.clone()).contains("neo_sk"),
            "a stored hash holds key text: {}",
            hex(hash)
        );
    }
    assert_eq!(key_hash(&db.pool, &id).await, api_key::hash(&key).to_vec());

    // No column of any table holds the key, its secret part, or the fixture's secrets.
    let tables = table_names(&db).await;
    assert!(tables.iter().any(|t| t == "api_keys"), "{tables:?}");
    let secret = key.trim_start_matches("neo_sk_test_");
    for table in &tables {
        let rows = rows(&db, table).await;
        for needle in [key.as_str(), secret, "4qZt8WcJr2LmX9vB7nKp3sYd"] {
            assert!(
                !rows.iter().flatten().any(|cell| cell.contains(needle)),
                "{table} holds a key in plaintext"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// configuration

async fn a_bad_config_value_exits_2_naming_the_key(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);

    let run = cli
        .run_with(&["migrate"], &[("NEO_TOKEN_MAX_TTL", "lots")])
        .await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("token.max_ttl"), "{run}");
    assert!(run.stderr.contains("NEO_TOKEN_MAX_TTL"), "{run}");

    let run = cli
        .run_with(&["migrate"], &[("NEO_TOKEN_MIN_TTL", "7200")])
        .await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("token.min_ttl"), "{run}");

    // The configuration is refused before the database is touched: not even the migrations
    // table exists.
    let tables = table_names(&db).await;
    assert!(
        tables.is_empty(),
        "migrate ran despite a bad configuration: {tables:?}"
    );
}

/// A key revoked by an operator stays revoked when the fixture is seeded again (as every
/// `serve --demo` start does): a seed never un-revokes.
async fn seeding_again_never_unrevokes_a_key(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    cli.run(&["api-key", "revoke", "k-acme"])
        .await
        .assert_success();
    cli.seed_example().await;

    let app = TestApp::builder(backend).database(db).spawn().await;
    let response = app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

/// `healthcheck` with nothing listening fails, and says why on stderr.
async fn healthcheck_says_why_it_failed(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let run = cli
        .run_with(&["healthcheck"], &[("NEO_LISTEN", &listen)])
        .await;
    run.assert_failure();
    assert!(run.stderr.contains(&listen), "{run}");
    assert!(run.stderr.contains("cannot connect"), "{run}");
}

/// `signing-key import` puts a PEM key into an empty database (it signs at once), `list
/// --output json` shows it active, `rotate` adds a `next` key and refuses a second pending one,
/// and a server on that database publishes both and signs with the imported one.
async fn signing_keys_are_imported_listed_and_rotated_from_the_cli(backend: Backend) {
    const KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    let (key, der) =
        neo_sessions::tokens::SigningKey::generate(neo_sessions::config::SigningAlgorithm::ES256)
            .expect("key");
    let path = cli.work_dir.path().join("key.pem");
    std::fs::write(&path, pem::encode(&pem::Pem::new("PRIVATE KEY", der))).expect("write");
    let kek = [("NEO_KEY_ENCRYPTION_KEY", KEK)];

    cli.run_with(&["signing-key", "import", &path.to_string_lossy()], &kek)
        .await
        .assert_success();
    let list = |run: Run| -> Vec<Value> {
        run.assert_success();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"))
    };
    let keys = list(
        cli.run_with(&["signing-key", "list", "--output", "json"], &kek)
            .await,
    );
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], key.kid());
    assert_eq!(keys[0]["state"], "active");

    cli.run_with(&["signing-key", "rotate"], &kek)
        .await
        .assert_success();
    let keys = list(
        cli.run_with(&["signing-key", "list", "--output", "json"], &kek)
            .await,
    );
    let states: Vec<&str> = keys.iter().filter_map(|k| k["state"].as_str()).collect();
    assert_eq!(states, ["active", "next"]);
    let pending = cli.run_with(&["signing-key", "rotate"], &kek).await;
    pending.assert_failure();
    assert!(pending.stderr.contains("pending"), "{pending}");

    let app = TestApp::builder(backend)
        .database(db)
        .config(|c| c.signing.key_encryption_key = Some(KEK.to_owned().into()))
        .spawn()
        .await;
    let jwks = app.get_json("/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let claims = app.verify(data["token"].as_str().expect("token")).await;
    assert_eq!(claims.client_id, "acme");
    let header =
        jsonwebtoken::decode_header(data["token"].as_str().expect("token")).expect("header");
    assert_eq!(header.kid.as_deref(), Some(key.kid()));
}

/// `config show` prints the effective configuration as JSON, with the variable's value in
/// place and every secret redacted.
async fn config_show_prints_the_effective_configuration_without_secrets(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    let run = cli
        .run_with(
            &["config", "show"],
            &[
                ("NEO_TOKEN_DEFAULT_TTL", "120"),
                ("NEO_RATE_LIMIT_REDIS_URL", "redis://:hunter2@cache:6379"),
                (
                    "NEO_KEY_ENCRYPTION_KEY",
                    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                ),
            ],
        )
        .await;
    run.assert_success();
    let shown: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(shown["token"]["default_ttl"], 120);
    assert_eq!(shown["signing"]["key_encryption_key"], "***");
    assert!(!run.stdout.contains("hunter2"), "{run}");
    assert!(!run.stdout.contains("MDEyMzQ1"), "{run}");
}

/// Errors an operator can act on: a seed row that names a missing tenant says which row and
/// what is missing; an unknown NEO_* variable is warned about; a cause is said once.
async fn errors_name_their_object_once(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    let fixture = cli.write_fixture(
        "orphan.json",
        &json!({"sessions": [{"id": "s-orphan", "tenant_id": "no-such-tenant"}]}),
    );
    let run = cli.run(&["seed", &fixture.to_string_lossy()]).await;
    run.assert_failure();
    assert!(run.stderr.contains("session \"s-orphan\""), "{run}");
    assert!(run.stderr.contains("tenant"), "{run}");
    assert!(
        !run.stderr.contains("FOREIGN KEY constraint failed"),
        "{run}"
    );

    let run = cli
        .run_with(
            &["api-key", "list", "--tenant", "acme"],
            &[("NEO_TOKEN_DEFUALT_TTL", "60")],
        )
        .await;
    run.assert_success();
    assert!(run.stderr.contains("NEO_TOKEN_DEFUALT_TTL"), "{run}");

    // An unreachable database: the host is named, and no cause is repeated.
    let run = Cli {
        database_url: "postgres://neo:secret@no-such-host.invalid:5432/neo".to_owned(),
        data_dir: tempfile::tempdir().expect("dir"),
        work_dir: tempfile::tempdir().expect("dir"),
    }
    .run(&["migrate"])
    .await;
    run.assert_failure();
    assert!(run.stderr.contains("no-such-host.invalid"), "{run}");
    assert!(!run.stderr.contains("secret"), "{run}");
    let causes: Vec<&str> = run.stderr.trim().split(": ").collect();
    let mut seen = std::collections::HashSet::new();
    for cause in &causes {
        assert!(seen.insert(*cause), "{cause:?} said twice:\n{run}");
    }
}

/// For scripts: listings and `token decode` in JSON (parsed here, not string-matched), `migrate
/// --status`, `rate-limit list`, an unknown tenant is an error, and shell completions.
async fn the_cli_speaks_json_for_scripts(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let cli = Cli::new(&db);
    cli.seed_example().await;
    let json = |run: Run| -> Value {
        run.assert_success();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"))
    };

    let keys = json(
        cli.run(&["api-key", "list", "--tenant", "acme", "--output", "json"])
            .await,
    );
    let ids: Vec<&str> = keys
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert!(ids.contains(&"k-acme") && ids.contains(&"k-old"), "{keys}");
    assert!(!keys.to_string().contains("neo_sk_"), "{keys}");
    let unknown = cli.run(&["api-key", "list", "--tenant", "nope"]).await;
    unknown.assert_failure();
    assert!(unknown.stderr.contains("nope"), "{unknown}");

    let migrations = json(cli.run(&["migrate", "--status", "--output", "json"]).await);
    let migrations = migrations.as_array().expect("array");
    assert!(migrations.len() >= 4);
    assert!(
        migrations.iter().all(|m| m["applied"] == true),
        "{migrations:?}"
    );

    cli.run(&[
        "rate-limit",
        "set",
        "--tenant",
        "globex",
        "--per-minute",
        "5",
        "--burst",
        "2",
    ])
    .await
    .assert_success();
    let limits = json(cli.run(&["rate-limit", "list", "--output", "json"]).await);
    assert_eq!(
        limits,
        json!([{"tenant_id": "globex", "per_minute": 5, "burst": 2}])
    );

    let app = TestApp::builder(backend).database(db).spawn().await;
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let token = data["token"].as_str().expect("token");
    let decoded = json(
        cli.run(&["token", "decode", token, "--output", "json"])
            .await,
    );
    assert_eq!(decoded["claims"]["session_id"], "s-acme-1");
    assert_eq!(decoded["header"]["typ"], "neo-session+jwt");
    let text = cli.run(&["token", "decode", token]).await;
    text.assert_success();
    assert!(text.stdout.contains("expires at: 20"), "{text}");

    let completions = cli.run(&["completions", "bash"]).await;
    completions.assert_success();
    assert!(completions.stdout.contains("neo-sessions"), "{completions}");
    assert!(completions.stdout.contains("signing-key"), "{completions}");
}

/// A database password is never printed, whether it is in the URL's userinfo or in a
/// `password` query parameter: not by `config show`, not in a start-up error (a database that
/// refuses connections), where the rest of the URL still says which database it was.
#[tokio::test]
async fn a_database_password_is_redacted_everywhere() {
    for url in [
        "postgres://neo:hunter2@127.0.0.1:1/neo",
        "postgres://neo@127.0.0.1:1/neo?password=hunter2&sslmode=disable",
        "postgres://neo@127.0.0.1:1/neo?sslmode=disable&password=hunter2",
        "postgresql://127.0.0.1:1/neo?user=neo&password=hunter2",
    ] {
        let cli = Cli {
            database_url: url.to_owned(),
            data_dir: tempfile::tempdir().expect("dir"),
            work_dir: tempfile::tempdir().expect("dir"),
        };
        let shown = cli.run(&["config", "show"]).await;
        shown.assert_success();
        assert!(!shown.stdout.contains("hunter2"), "{url}: {shown}");
        assert!(!shown.stderr.contains("hunter2"), "{url}: {shown}");
        let config: Value = serde_json::from_str(&shown.stdout).expect("JSON");
        assert!(
            config["database"]["url"]
                .as_str()
                .is_some_and(|shown| shown.contains("127.0.0.1:1/neo")),
            "{url}: {shown}"
        );

        let migrate = cli.run(&["migrate"]).await;
        migrate.assert_failure();
        assert!(!migrate.stderr.contains("hunter2"), "{url}: {migrate}");
        assert!(migrate.stderr.contains("127.0.0.1:1"), "{url}: {migrate}");
    }
}

/// CI's schemathesis run (`.ci/schemathesis.sh`) serves the binary cargo built, wherever
/// `CARGO_TARGET_DIR` puts it, not `./target`. The fuzzer is a stand-in here (a `schemathesis`
/// package first on `PYTHONPATH`) that fetches the document the script points it at, as the
/// real one does first.
#[tokio::test]
async fn the_schemathesis_script_finds_the_binary_in_cargo_target_dir() {
    let binary = std::path::Path::new(crate::support::cli::BIN);
    let target_dir = binary
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the binary lies in <target>/debug");
    let fake = tempfile::tempdir().expect("dir");
    std::fs::create_dir(fake.path().join("schemathesis")).expect("mkdir");
    std::fs::write(fake.path().join("schemathesis/__init__.py"), "").expect("write");
    std::fs::write(
        fake.path().join("schemathesis/cli.py"),
        "import sys, urllib.request\n\
         url = sys.argv[sys.argv.index('run') + 1]\n\
         document = urllib.request.urlopen(url, timeout=10).read()\n\
         sys.exit(0 if b'\"openapi\"' in document else 1)\n",
    )
    .expect("write");
    let script = format!("{}/.ci/schemathesis.sh", env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new("bash");
    command
        .arg(&script)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("PYTHONPATH", fake.path());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run bash");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

backend_tests!(
    the_cli_speaks_json_for_scripts,
    errors_name_their_object_once,
    config_show_prints_the_effective_configuration_without_secrets,
    signing_keys_are_imported_listed_and_rotated_from_the_cli,
    seeding_again_never_unrevokes_a_key,
    healthcheck_says_why_it_failed,
    seed_is_idempotent,
    seed_prints_a_generated_key_once_and_keeps_it,
    a_bad_fixture_fails_and_writes_nothing,
    api_key_create_prints_exactly_the_key_on_stdout,
    api_key_create_list_revoke_round_trip,
    api_key_create_enforces_the_platform_flag,
    the_database_never_holds_the_plaintext_key,
    a_bad_config_value_exits_2_naming_the_key,
);
