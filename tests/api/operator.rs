//! What an operator meets first, through the real binary: `serve --listen` and a taken port,
//! the start-up line, the demo banner, one fatal error said once, `config show`'s origins, shell
//! completions run in bash, `migrate --status` on a database that does not exist, and readiness
//! soon after a database that was unreachable at start comes back.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{cli::Cli, Backend, TestApp, TestDatabase, TEST_KEK};

const BIN: &str = env!("CARGO_BIN_EXE_neo-sessions");

/// `neo-sessions` with nothing of the developer's configuration, in `dir`.
fn command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("NEO_") || name == "DATABASE_URL" {
            command.env_remove(&*name);
        }
    }
    command
        .current_dir(dir)
        .env("NEO_LOG_FORMAT", "json")
        .stdin(Stdio::null());
    command
}

/// A running `serve` whose stdout lines arrive on a channel.
struct Serving {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Serving {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `until`; returns it.
    fn read_until(&mut self, until: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no such line; seen:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            if until(&line) {
                return line;
            }
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"))
}

/// `serve --listen` is server.listen's top layer; a taken port fails naming the address, the
/// setting and where its value came from, said once (one JSON log line, nothing on stderr).
#[test]
fn serve_listen_sets_the_address_and_a_taken_port_names_its_setting_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let _holder = std::net::TcpListener::bind(&taken);
    for (args, env, origin) in [
        (
            vec!["serve", "--listen", taken.as_str()],
            vec![("NEO_LISTEN", "127.0.0.1:0")],
            "flag --listen",
        ),
        (
            vec!["serve"],
            vec![("NEO_LISTEN", taken.as_str())],
            "environment variable NEO_LISTEN",
        ),
    ] {
        let output = command(dir.path())
            .args(&args)
            .envs(env)
            .output()
            .expect("run");
        assert!(!output.status.success());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.trim().is_empty(),
            "said twice (stderr too): {stderr}"
        );
        let errors: Vec<Value> = stdout
            .lines()
            .map(json_line)
            .filter(|l| l["level"] == "ERROR")
            .collect();
        assert_eq!(errors.len(), 1, "{stdout}");
        let message = errors[0]["message"].as_str().expect("message");
        for needle in [
            taken.as_str(),
            "already in use",
            "--listen",
            "NEO_LISTEN",
            "server.listen",
            origin,
        ] {
            assert!(message.contains(needle), "{needle:?} missing: {message}");
        }
    }

    // A free address given by the flag is where it listens.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let mut flagged = command(dir.path());
    flagged
        .args(["serve", "--listen", &free])
        .env("NEO_LISTEN", "127.0.0.1:1");
    let mut serving = Serving::start(flagged);
    let line = serving.read_until(|l| l.contains("neo-sessions listening"));
    assert_eq!(json_line(&line)["address"], free.as_str());
    serving.stop();
}

/// The start-up line names the database backend and where it is (no password), the key
/// environment and where the key-encryption key came from; the Redis warning names the host,
/// never the password.
#[tokio::test]
async fn the_startup_line_and_the_redis_warning_say_what_they_are_about() {
    let db = TestDatabase::seeded(Backend::Postgres).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let with_password = db
        .url
        .replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    assert_ne!(with_password, db.url, "the test URL has a user");
    let mut serve = command(dir.path());
    serve
        .arg("serve")
        .env("NEO_LISTEN", "127.0.0.1:0")
        .env("NEO_DATABASE_URL", &with_password)
        .env("NEO_DATA_DIR", dir.path().join("data"))
        .env("NEO_KEY_ENCRYPTION_KEY", TEST_KEK)
        .env(
            "NEO_RATE_LIMIT_REDIS_URL",
            format!("redis://:s3cret@127.0.0.1:{closed}"),
        );
    let mut serving = Serving::start(serve);
    let line = serving.read_until(|l| l.contains("neo-sessions listening"));
    let log = serving.seen.join("\n");
    serving.stop();
    let started = json_line(&line);
    assert_eq!(started["database_backend"], "postgres", "{line}");
    assert_eq!(
        started["database"],
        format!("127.0.0.1:5432/{}", db.name),
        "{line}"
    );
    assert_eq!(started["key_env"], "test", "{line}");
    assert_eq!(
        started["key_encryption_key"], "environment variable NEO_KEY_ENCRYPTION_KEY",
        "{line}"
    );
    let redis = format!("127.0.0.1:{closed}");
    let warning = log
        .lines()
        .map(json_line)
        .find(|l| {
            l["level"] == "WARN" && l["message"].as_str().is_some_and(|m| m.contains("Redis"))
        })
        .unwrap_or_else(|| panic!("no Redis warning:\n{log}"));
    assert_eq!(warning["redis"], redis.as_str(), "{warning}");
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains(&redis)),
        "{warning}"
    );
    for secret in ["hunter2", "s3cret", TEST_KEK] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

/// The demo banner points at the reference and the metrics, and a generated key-encryption key
/// is explained (what it is, why a demo is fine, what production needs), not just warned about.
#[test]
fn the_demo_banner_lists_docs_and_metrics_and_explains_the_generated_kek() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut demo = command(dir.path());
    demo.args(["serve", "--demo"])
        .env("NEO_LISTEN", "127.0.0.1:0");
    let mut serving = Serving::start(demo);
    // The banner is printed, the log lines are written by the logger's thread: either may
    // come first.
    let banner_end = |l: &str| l.contains("NEO_KEY_ENCRYPTION_KEY_FILE; see docs/operating.md");
    let listening = |l: &str| l.contains("\"neo-sessions listening\"");
    while !(serving.seen.iter().any(|l| banner_end(l)) && serving.seen.iter().any(|l| listening(l)))
    {
        serving.read_until(|l| banner_end(l) || listening(l));
    }
    let line = serving
        .seen
        .iter()
        .find(|l| listening(l))
        .expect("listening line")
        .clone();
    let address = json_line(&line)["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let output = serving.seen.join("\n");
    serving.stop();
    for needle in [
        format!("http://{address}/docs"),
        format!("http://{address}/metrics"),
        "key-encryption key".to_owned(),
        "fine for this demo".to_owned(),
        "In production".to_owned(),
        "NEO_KEY_ENCRYPTION_KEY".to_owned(),
    ] {
        assert!(output.contains(&needle), "{needle:?} missing:\n{output}");
    }
    // The generation itself is an explained line, not a bare warning.
    let generated = output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("generated a key-encryption key"))
        })
        .unwrap_or_else(|| panic!("no line about the generated KEK:\n{output}"));
    assert_eq!(generated["level"], "INFO", "{generated}");
    assert!(
        generated["message"]
            .as_str()
            .is_some_and(|m| m.contains("encrypts the signing keys") && m.contains("production")),
        "{generated}"
    );
}

/// `config show` says which file it read and where each value came from; the JSON document
/// on stdout stays what scripts read.
#[tokio::test]
async fn config_show_says_which_file_it_read_and_where_each_value_came_from() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let cli = Cli::new(&db);
    let file = cli.work_dir.path().join("operator.toml");
    std::fs::write(&file, "[token]\nmax_ttl = 1800\n").expect("write");
    let file = file.to_string_lossy().into_owned();
    let env = [("NEO_TOKEN_DEFAULT_TTL", "120")];

    let run = cli
        .run_with(&["config", "show", "--config", &file], &env)
        .await;
    run.assert_success();
    let shown: Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(shown["token"]["max_ttl"], 1800);
    assert!(
        run.stderr.contains(&format!("config file: {file}")),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("token.default_ttl: from environment variable NEO_TOKEN_DEFAULT_TTL"),
        "{run}"
    );
    assert!(
        run.stderr
            .contains(&format!("token.max_ttl: from file {file}")),
        "{run}"
    );

    let run = cli
        .run_with(
            &["config", "show", "--config", &file, "--output", "text"],
            &env,
        )
        .await;
    run.assert_success();
    let row = |key: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no row for {key}:\n{run}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("token.default_ttl")[1..],
        ["120", "NEO_TOKEN_DEFAULT_TTL"]
    );
    assert_eq!(row("token.max_ttl")[1..], ["1800".to_owned(), file.clone()]);
    assert_eq!(row("token.min_ttl")[1..], ["60", "default"]);
    assert_eq!(row("database.url")[2], "NEO_DATABASE_URL");

    // No file: it says so.
    let run = cli.run(&["config", "show"]).await;
    run.assert_success();
    assert!(run.stderr.contains("config file: none"), "{run}");
}

/// What bash offers for `COMP_WORDS` with the cursor on the last word, with the script
/// `completions bash` prints.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(script.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("neo-sessions.bash");
    std::fs::write(&path, &script.stdout).expect("write");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = words.join(" ");
    let cword = words.len() - 1;
    let previous = if cword > 0 { words[cword - 1] } else { "" };
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT={}\n\
         _neo__sessions neo-sessions '{}' '{previous}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        path.display(),
        quoted.join(" "),
        line.len(),
        words[cword],
    );
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash (apt-get install bash)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Below the top level too: a subcommand's subcommands, and an option's values.
#[test]
fn bash_completes_subcommands_and_values_below_the_top_level() {
    let top = bash_completes(&["neo-sessions", "sig"]);
    assert_eq!(top, ["signing-key"]);
    let below = bash_completes(&["neo-sessions", "signing-key", ""]);
    for sub in ["rotate", "list", "import", "discard"] {
        assert!(below.contains(&sub.to_owned()), "{sub} missing: {below:?}");
    }
    let values = bash_completes(&["neo-sessions", "signing-key", "list", "--output", ""]);
    assert_eq!(values, ["text", "json"]);
    let options = bash_completes(&["neo-sessions", "serve", "--"]);
    assert!(options.contains(&"--listen".to_owned()), "{options:?}");
}

/// `migrate --status` on a database that does not exist yet: every migration pending, and the
/// database still does not exist afterwards.
async fn migrate_status_on_a_missing_database_lists_every_migration_as_pending(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("neo_test_missing_{}", uuid::Uuid::new_v4().simple());
    let (url, missing_file) = match backend {
        Backend::Postgres => (crate::support::database_url(&name), None),
        Backend::Sqlite => {
            let file = dir.path().join("missing.db");
            (format!("sqlite://{}", file.display()), Some(file))
        }
    };
    let output = command(dir.path())
        .args(["migrate", "--status", "--output", "json"])
        .env("NEO_DATABASE_URL", &url)
        .env("NEO_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let migrations: Vec<Value> = serde_json::from_str(&stdout).expect("JSON");
    let embedded = std::fs::read_dir(format!(
        "{}/migrations/{}",
        env!("CARGO_MANIFEST_DIR"),
        match backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    ))
    .expect("migrations dir")
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
    })
    .count();
    assert_eq!(migrations.len(), embedded, "{stdout}");
    assert!(migrations.iter().all(|m| m["applied"] == false), "{stdout}");
    assert!(stderr.contains("does not exist yet"), "{stderr}");

    // Nothing was created.
    match missing_file {
        Some(file) => assert!(
            !file.exists(),
            "migrate --status created {}",
            file.display()
        ),
        None => {
            let admin = sqlx::PgPool::connect(&crate::support::admin_url())
                .await
                .expect("admin");
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                    .bind(&name)
                    .fetch_one(&admin)
                    .await
                    .expect("query");
            assert_eq!(count, 0, "migrate --status created the database");
        }
    }
}

backend_tests!(migrate_status_on_a_missing_database_lists_every_migration_as_pending);

/// A TCP proxy in front of PostgreSQL that drops every connection until it is switched to
/// forwarding: a database the test makes unreachable and reachable again.
async fn switchable_proxy(target: &str) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let forwarding = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&forwarding);
    let target = target.to_owned();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !switch.load(Ordering::Acquire) {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (address, forwarding)
}

/// A replica started while PostgreSQL was unreachable turns ready within about a second of it
/// answering, however long it waited (a back-off doubling to 30 s took up to 9 s).
#[tokio::test]
async fn a_replica_started_without_its_database_turns_ready_soon_after_it_answers() {
    let db = TestDatabase::seeded(Backend::Postgres).await;
    let (proxy, forwarding) = switchable_proxy("127.0.0.1:5432").await;
    let via_proxy = db.url.replacen("127.0.0.1:5432", &proxy, 1);
    assert_ne!(via_proxy, db.url, "the test database is on 127.0.0.1:5432");
    let app = TestApp::builder(Backend::Postgres)
        .database(db)
        .config(move |c| c.database.url = Some(via_proxy.into()))
        .spawn()
        .await;
    let health = app.url("/public-api/health");
    assert_eq!(
        app.client
            .get(&health)
            .send()
            .await
            .expect("health")
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Long enough for a doubling back-off to have grown past a few seconds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        app.client
            .get(&health)
            .send()
            .await
            .expect("health")
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    forwarding.store(true, Ordering::Release);
    let back = Instant::now();
    loop {
        let status = app
            .client
            .get(&health)
            .send()
            .await
            .expect("health")
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_millis(2500),
            "still {status} {:?} after the database came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
