//! The session cache from the outside: the mint rules read a session, its agents and end
//! companies from memory, and a change made by plain SQL (as the platform that owns those tables
//! makes it) is honoured by the next mint on every replica within the notification delay; a
//! replica whose notification connection is gone reads the database instead.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{Backend, TestApp, TestDatabase, ACME_KEY};

const KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// The delay the README states, with room for a loaded CI machine.
const WITHIN: Duration = Duration::from_secs(1);

async fn replica(backend: Backend, db: Option<TestDatabase>) -> TestApp {
    let mut builder = TestApp::builder(backend).config(|c| {
        c.signing.key_encryption_key = Some(KEK.to_owned().into());
    });
    if let Some(db) = db {
        builder = builder.database(db);
    }
    let app = builder.spawn().await;
    let started = Instant::now();
    while !app.state.freshness.is_live() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the feed never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app
}

async fn mint(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let response = app.mint(ACME_KEY, body).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls until the mint of `body` answers `status` (and, when given, `check` holds on the body).
async fn until(app: &TestApp, body: Value, status: StatusCode, check: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let (got, answer) = mint(app, body.clone()).await;
        if got == status && check(&answer) {
            return;
        }
        assert!(
            started.elapsed() < WITHIN,
            "still {got} {answer} after {:?}, expected {status}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn sql(db: &TestDatabase, statement: &str) {
    sqlx::query(statement)
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// How many times the app read a session from the database.
async fn session_reads(app: &TestApp) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("neo_sessions_store_operation_duration_seconds_count")
                && l.contains("operation=\"find_session\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A token's claims, decoded (not verified: other tests verify).
fn claims_of(token: &str) -> Option<Value> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    serde_json::from_slice(&payload).ok()
}

fn any(_: &Value) -> bool {
    true
}

/// Every change the issue names, made by plain SQL, honoured by each of `apps`.
async fn changes_are_honoured_by_every_replica(db: &TestDatabase, apps: &[&TestApp]) {
    let agents = json!({"session_id": "s-acme-1", "allowed_agent_ids": [101, 102]});
    let fabrikam = json!({"session_id": "s-acme-1", "end_company_id": "fabrikam"});
    let scoped = json!({"session_id": "s-acme-wl"});
    for app in apps {
        // Warm every cache, and show the session is then served from memory.
        for body in [&agents, &fabrikam, &scoped] {
            assert_eq!(mint(app, body.clone()).await.0, StatusCode::OK);
        }
        let reads = session_reads(app).await;
        assert_eq!(mint(app, agents.clone()).await.0, StatusCode::OK);
        assert_eq!(session_reads(app).await, reads, "the session is not cached");
    }

    // A session leaving `active`, and coming back.
    sql(
        db,
        "UPDATE chat_sessions SET status = 'closed' WHERE id = 's-acme-1'",
    )
    .await;
    for app in apps {
        until(app, agents.clone(), StatusCode::CONFLICT, any).await;
    }
    sql(
        db,
        "UPDATE chat_sessions SET status = 'active' WHERE id = 's-acme-1'",
    )
    .await;
    for app in apps {
        until(app, agents.clone(), StatusCode::OK, any).await;
    }

    // An agent removed.
    sql(db, "DELETE FROM agents WHERE id = 102").await;
    for app in apps {
        until(app, agents.clone(), StatusCode::UNPROCESSABLE_ENTITY, |b| {
            b["error"]["code"] == "invalid_agent_ids"
        })
        .await;
    }
    // And a new one added: known at once, though its absence was cached.
    sql(
        db,
        "INSERT INTO agents (id, tenant_id, name) VALUES (102, 'acme', 'Onboarding')",
    )
    .await;
    for app in apps {
        until(app, agents.clone(), StatusCode::OK, any).await;
    }

    // An end company removed.
    sql(db, "DELETE FROM end_companies WHERE id = 'fabrikam'").await;
    for app in apps {
        until(
            app,
            fabrikam.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            |b| b["error"]["code"] == "invalid_end_company",
        )
        .await;
    }

    // A session re-scoped to another end company: the token carries the new one.
    sql(
        db,
        "INSERT INTO end_companies (tenant_id, id, name) VALUES ('acme', 'fabrikam', 'Fabrikam')",
    )
    .await;
    sql(
        db,
        "UPDATE chat_sessions SET end_company_id = 'fabrikam' WHERE id = 's-acme-wl'",
    )
    .await;
    for app in apps {
        until(app, scoped.clone(), StatusCode::OK, |b| {
            b["data"]["token"]
                .as_str()
                .and_then(claims_of)
                .is_some_and(|claims| claims["end_company_id"] == "fabrikam")
        })
        .await;
    }
}

async fn plain_sql_changes_are_honoured_by_the_next_mints(backend: Backend) {
    let app = replica(backend, None).await;
    changes_are_honoured_by_every_replica(&app.db, &[&app]).await;
}

/// Two replicas on one PostgreSQL; then one loses its notification connection (and cannot get
/// it back): its next mint reads the database, so a change it was not told of is still honoured.
#[tokio::test]
async fn two_replicas_follow_plain_sql_and_a_replica_without_its_feed_reads_the_database() {
    let a = replica(Backend::Postgres, None).await;
    let shared = TestDatabase::attach(Backend::Postgres, &a.db.name, a.db.url.clone()).await;
    let b = replica(Backend::Postgres, Some(shared)).await;
    changes_are_honoured_by_every_replica(&a.db, &[&a, &b]).await;

    let body = json!({"session_id": "s-acme-1"});
    assert_eq!(mint(&b, body.clone()).await.0, StatusCode::OK);
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .expect("admin");
    let name = &a.db.name;
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"
    ))
    .execute(&admin)
    .await
    .expect("refuse new connections");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(name)
    .execute(&admin)
    .await
    .expect("kill the listeners");
    let started = Instant::now();
    while b.state.freshness.is_live() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the loss went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // No notification reaches b now; its very next mint must see the change anyway.
    sql(
        &a.db,
        "UPDATE chat_sessions SET status = 'closed' WHERE id = 's-acme-1'",
    )
    .await;
    assert_eq!(mint(&b, body.clone()).await.0, StatusCode::CONFLICT);
    sqlx::query(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
    ))
    .execute(&admin)
    .await
    .expect("allow connections");
    admin.close().await;
}

backend_tests!(plain_sql_changes_are_honoured_by_the_next_mints);
