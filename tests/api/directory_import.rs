//! `neo-sessions directory import` / `directory export` from the outside: the real binary on a
//! database of its own, once per backend. A file with bad lines imports the good ones and names
//! each bad one; importing again changes nothing; closing a session by import revokes its tokens
//! (they reach the revocation feed); an export imported into a fresh database exports the same.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{
    cli::{Cli, Run},
    Backend, TestApp, TestDatabase, ACME_KEY,
};

/// Writes `lines` (JSON values or raw text) as a file, one per line, and returns its path.
fn write_lines(cli: &Cli, name: &str, lines: &[Line]) -> PathBuf {
    let text: String = lines
        .iter()
        .map(|line| match line {
            Line::Json(value) => format!("{value}\n"),
            Line::Raw(text) => format!("{text}\n"),
        })
        .collect();
    let path = cli.work_dir.path().join(name);
    std::fs::write(&path, text).expect("write the import file");
    path
}

enum Line {
    Json(Value),
    Raw(&'static str),
}

async fn import(cli: &Cli, path: &std::path::Path) -> Run {
    cli.run(&["directory", "import", path.to_str().expect("utf-8 path")])
        .await
}

/// The summary row of `kind` (`tenants`, `end companies`, `agents`, `sessions`): created,
/// updated, unchanged, refused.
fn counts(run: &Run, kind: &str) -> [u64; 4] {
    let line = run
        .stdout
        .lines()
        .find(|line| line.starts_with(kind) && line[kind.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no summary row for {kind}:\n{run}"));
    let numbers: Vec<u64> = line[kind.len()..]
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    numbers.try_into().expect("four counts")
}

fn tokens_revoked(run: &Run) -> u64 {
    run.stdout
        .lines()
        .find_map(|line| line.strip_prefix("tokens revoked: "))
        .unwrap_or_else(|| panic!("no tokens revoked line:\n{run}"))
        .parse()
        .expect("a count")
}

/// The reason given for `line`, asserting there is one.
fn refusal(run: &Run, line: usize) -> String {
    let prefix = format!("line {line}: ");
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("line {line} is not reported as refused:\n{run}"))
        .to_owned()
}

async fn session(db: &TestDatabase, id: &str) -> Option<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT tenant_id, kind, status, end_company_id FROM chat_sessions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .expect("read a session")
}

async fn agent_tenant(db: &TestDatabase, id: i64) -> Option<String> {
    sqlx::query_scalar("SELECT tenant_id FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .expect("read an agent")
}

async fn export(cli: &Cli, name: &str) -> String {
    let path = cli.work_dir.path().join(name);
    cli.run(&["directory", "export", path.to_str().expect("utf-8 path")])
        .await
        .assert_success();
    std::fs::read_to_string(&path).expect("read the export")
}

backend_tests!(
    an_import_takes_the_good_lines_and_names_the_bad_ones,
    closing_or_rescoping_a_session_by_import_revokes_its_tokens,
    an_export_imports_into_a_fresh_database_as_the_same_export,
    a_tenant_line_sets_keeps_or_removes_the_rate_limit_override,
);

async fn an_import_takes_the_good_lines_and_names_the_bad_ones(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let cli = Cli::new(&db);
    let lines = [
        /* 1 */
        Line::Raw("# a new tenant with what it owns; then one bad line of each kind"),
        /* 2 */ Line::Json(json!({"tenant": {"id": "initrode", "name": "Initrode"}})),
        /* 3 */
        Line::Json(
            json!({"end_company": {"id": "penetrode", "tenant_id": "initrode", "name": "P"}}),
        ),
        /* 4 */
        Line::Json(json!({"agent": {"id": 301, "tenant_id": "initrode", "name": "Helpdesk"}})),
        /* 5 */
        Line::Json(
            json!({"session": {"id": "s-init-1", "tenant_id": "initrode",
                                      "end_company_id": "penetrode"}}),
        ),
        /* 6 */ Line::Raw(""),
        /* 7 */ Line::Raw(r#"{"session": {"id": "s-broken", "tenant_id": "acme""#),
        /* 8 */ Line::Json(json!({"robot": {"id": "r2d2"}})),
        /* 9 */ Line::Json(json!({"session": {"id": "s-ghost", "tenant_id": "ghost"}})),
        /* 10 */ Line::Json(json!({"session": {"id": "s-acme-1", "tenant_id": "globex"}})),
        /* 11 */
        Line::Json(json!({"session": {"id": "s-acme-new", "tenant_id": "acme",
                                       "end_company_id": "initech"}})),
        /* 12 */
        Line::Json(
            json!({"session": {"id": "s-acme-support-2", "tenant_id": "acme",
                                       "kind": "neo_support"}}),
        ),
        /* 13 */
        Line::Json(json!({"agent": {"id": 201, "tenant_id": "acme", "name": "Mine"}})),
        /* 14 */
        Line::Json(json!({"session": {"id": "s-bad-kind", "tenant_id": "acme",
                                                "kind": "vip"}})),
        /* 15 */
        Line::Json(json!({"tenant": {"id": "copycat", "name": "Copycat",
                                      "entra_tenant_id": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a"}})),
        /* 16 */
        Line::Json(json!({"end_company": {"id": "x", "tenant_id": "ghost", "name": "X"}})),
        /* 17 */
        Line::Json(json!({"session": {"id": "s-acme-wl", "tenant_id": "acme",
                                       "end_company_id": "fabrikam"}})),
    ];
    let path = write_lines(&cli, "mixed.jsonl", &lines);

    let first = import(&cli, &path).await;
    assert_eq!(first.code, Some(1), "refused lines exit 1:\n{first}");
    let expected = [
        (7, "not JSON"),
        (8, "unknown kind \"robot\""),
        (9, "no tenant \"ghost\""),
        (10, "never changes tenant"),
        (11, "no end company \"initech\" of tenant \"acme\""),
        (
            12,
            "active neo_support session already (\"s-acme-support\")",
        ),
        (13, "belongs to tenant \"globex\""),
        (14, "kind"),
        (15, "is tenant \"acme\"'s"),
        (16, "no tenant \"ghost\""),
    ];
    for (line, reason) in expected {
        let said = refusal(&first, line);
        assert!(
            said.contains(reason),
            "line {line}: {said:?} should say {reason:?}"
        );
    }
    let refused = first
        .stdout
        .lines()
        .filter(|l| l.starts_with("line "))
        .count();
    assert_eq!(
        refused,
        expected.len(),
        "only the bad lines are refused:\n{first}"
    );
    assert_eq!(counts(&first, "tenants"), [1, 0, 0, 1]);
    assert_eq!(counts(&first, "end companies"), [1, 0, 0, 1]);
    assert_eq!(counts(&first, "agents"), [1, 0, 0, 1]);
    assert_eq!(counts(&first, "sessions"), [1, 1, 0, 5]);
    assert!(first.stdout.contains("not understood"), "{first}");

    // The good lines are in; the bad ones changed nothing.
    assert_eq!(
        session(&db, "s-init-1").await,
        Some((
            "initrode".into(),
            "standard".into(),
            "active".into(),
            Some("penetrode".into())
        ))
    );
    assert_eq!(
        session(&db, "s-acme-wl").await.and_then(|s| s.3),
        Some("fabrikam".to_owned())
    );
    assert_eq!(agent_tenant(&db, 301).await.as_deref(), Some("initrode"));
    assert_eq!(
        session(&db, "s-acme-1").await.map(|s| s.0).as_deref(),
        Some("acme")
    );
    for missing in [
        "s-ghost",
        "s-acme-new",
        "s-acme-support-2",
        "s-bad-kind",
        "s-broken",
    ] {
        assert_eq!(session(&db, missing).await, None, "{missing} was written");
    }
    assert_eq!(agent_tenant(&db, 201).await.as_deref(), Some("globex"));
    assert_eq!(db.count("tenants").await, 4, "copycat was written");
    assert_eq!(db.count("end_companies").await, 4);

    // Again: the same refusals, and every good row as it is.
    let second = import(&cli, &path).await;
    assert_eq!(second.code, Some(1), "{second}");
    for (line, reason) in expected {
        assert!(refusal(&second, line).contains(reason), "{second}");
    }
    assert_eq!(counts(&second, "tenants"), [0, 0, 1, 1]);
    assert_eq!(counts(&second, "end companies"), [0, 0, 1, 1]);
    assert_eq!(counts(&second, "agents"), [0, 0, 1, 1]);
    assert_eq!(counts(&second, "sessions"), [0, 0, 2, 5]);
    assert_eq!(tokens_revoked(&second), 0);

    // A file without bad lines exits 0; a file that cannot be read exits 2.
    let good = write_lines(&cli, "good.jsonl", &lines[..6]);
    import(&cli, &good).await.assert_success();
    let missing = cli.work_dir.path().join("no-such-file.jsonl");
    let run = import(&cli, &missing).await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("no-such-file.jsonl"), "{run}");
}

/// The mint's revocation feed (`GET /public-api/sessions/revocations`), polled until it lists
/// `jti` (a revocation is handed out once no older transaction is in flight) or 10 s pass.
async fn feed_lists(app: &TestApp, jti: &str) -> bool {
    let started = std::time::Instant::now();
    loop {
        let response = app
            .client
            .get(app.url("/public-api/sessions/revocations"))
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.expect("json");
        let listed = page["data"]["revocations"]
            .as_array()
            .expect("revocations")
            .iter()
            .any(|r| r["jti"] == jti);
        if listed || started.elapsed() > std::time::Duration::from_secs(10) {
            return listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn closing_or_rescoping_a_session_by_import_revokes_its_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cli = Cli::new(&app.db);
    let (closed, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let closed = closed["jti"].as_str().expect("jti").to_owned();
    let (rescoped, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-wl"}))
        .await;
    let rescoped = rescoped["jti"].as_str().expect("jti").to_owned();

    let path = write_lines(
        &cli,
        "close.jsonl",
        &[
            Line::Json(json!({"session": {"id": "s-acme-1", "tenant_id": "acme",
                                          "status": "closed"}})),
            Line::Json(json!({"session": {"id": "s-acme-wl", "tenant_id": "acme",
                                          "end_company_id": "fabrikam"}})),
        ],
    );
    let run = import(&cli, &path).await;
    run.assert_success();
    assert_eq!(counts(&run, "sessions"), [0, 2, 0, 0]);
    assert_eq!(tokens_revoked(&run), 2, "{run}");
    assert!(
        feed_lists(&app, &closed).await,
        "the closed session's token is not in the feed"
    );
    assert!(
        feed_lists(&app, &rescoped).await,
        "the rescoped session's token is not in the feed"
    );
    let revoked_by: Vec<String> = sqlx::query_scalar(
        "SELECT revoked_by FROM session_token_mints WHERE revoked_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&app.db.pool)
    .await
    .expect("read revocations");
    assert_eq!(revoked_by, ["directory import", "directory import"]);

    // The session's next token carries its new end company; importing the same again revokes
    // nothing more.
    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-wl"}))
        .await;
    let again = import(&cli, &path).await;
    again.assert_success();
    assert_eq!(counts(&again, "sessions"), [0, 0, 2, 0]);
    assert_eq!(tokens_revoked(&again), 0);
}

async fn an_export_imports_into_a_fresh_database_as_the_same_export(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let cli = Cli::new(&db);
    // Something of every shape: a rate-limit override, and more sessions than a batch (5,000
    // lines) and an export page (10,000 rows) hold.
    let mut lines = vec![Line::Json(
        json!({"tenant": {"id": "initrode", "name": "Initrode",
        "rate_limit": {"per_minute": 120, "burst": 10}}}),
    )];
    for n in 0..12_001 {
        lines.push(Line::Json(
            json!({"session": {"id": format!("s-bulk-{n:05}"),
                                                 "tenant_id": "initrode"}}),
        ));
    }
    let path = write_lines(&cli, "bulk.jsonl", &lines);
    let run = import(&cli, &path).await;
    run.assert_success();
    assert_eq!(counts(&run, "sessions"), [12_001, 0, 0, 0]);

    let exported = export(&cli, "first.jsonl").await;
    assert_eq!(exported.lines().count(), 4 + 3 + 3 + 7 + 12_001);
    assert!(
        exported.starts_with(r#"{"tenant":{"id":"acme""#),
        "{}",
        &exported[..200]
    );

    let fresh = TestDatabase::create(backend).await;
    let fresh_cli = Cli::new(&fresh);
    fresh_cli.run(&["migrate"]).await.assert_success();
    let run = import(&fresh_cli, &cli.work_dir.path().join("first.jsonl")).await;
    run.assert_success();
    assert_eq!(counts(&run, "sessions"), [12_008, 0, 0, 0]);
    assert_eq!(export(&fresh_cli, "second.jsonl").await, exported);

    // The export imported where it came from: everything unchanged.
    let run = import(&cli, &cli.work_dir.path().join("first.jsonl")).await;
    run.assert_success();
    for (kind, rows) in [
        ("tenants", 4),
        ("end companies", 3),
        ("agents", 3),
        ("sessions", 12_008),
    ] {
        assert_eq!(counts(&run, kind), [0, 0, rows, 0], "{kind}");
    }

    // To stdout by default.
    let stdout = cli.run(&["directory", "export"]).await;
    stdout.assert_success();
    assert_eq!(stdout.stdout, exported);
}

async fn a_tenant_line_sets_keeps_or_removes_the_rate_limit_override(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let cli = Cli::new(&db);
    let limit = || async {
        let limits = cli.run(&["rate-limit", "list", "--output", "json"]).await;
        limits.assert_success();
        let limits: Value = serde_json::from_str(&limits.stdout).expect("json");
        limits
            .as_array()
            .expect("array")
            .iter()
            .find(|l| l["tenant_id"] == "globex")
            .map(|l| {
                (
                    l["per_minute"].as_u64().expect("n"),
                    l["burst"].as_u64().expect("n"),
                )
            })
    };
    let tenant = |rate_limit: Option<Value>| {
        let mut entry = json!({"id": "globex", "name": "Globex IT"});
        if let Some(rate_limit) = rate_limit {
            entry["rate_limit"] = rate_limit;
        }
        vec![Line::Json(json!({ "tenant": entry }))]
    };

    let set = write_lines(
        &cli,
        "set.jsonl",
        &tenant(Some(json!({"per_minute": 60, "burst": 6}))),
    );
    let run = import(&cli, &set).await;
    run.assert_success();
    assert_eq!(counts(&run, "tenants"), [0, 1, 0, 0]);
    assert_eq!(limit().await, Some((60, 6)));

    let keep = write_lines(&cli, "keep.jsonl", &tenant(None));
    let run = import(&cli, &keep).await;
    assert_eq!(counts(&run, "tenants"), [0, 0, 1, 0], "{run}");
    assert_eq!(
        limit().await,
        Some((60, 6)),
        "an absent rate_limit removed the override"
    );

    let clear = write_lines(&cli, "clear.jsonl", &tenant(Some(Value::Null)));
    let run = import(&cli, &clear).await;
    assert_eq!(counts(&run, "tenants"), [0, 1, 0, 0], "{run}");
    assert_eq!(limit().await, None);
}
