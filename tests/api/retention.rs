//! Retention from the outside: a started app deletes mint records whose token expired more than
//! `NEO_AUDIT_RETENTION_DAYS` ago, in batches, and nothing else; and idempotency claims whose
//! window has passed.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::support::{Backend, TestApp, TestDatabase, ACME_KEY};

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Inserts mint records of `s-acme-1` with the given (issued, expires) times, by plain SQL.
async fn insert_mints(db: &TestDatabase, rows: &[(uuid::Uuid, DateTime<Utc>, DateTime<Utc>)]) {
    for chunk in rows.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(jti, issued, expires)| {
                format!(
                    "('{jti}', 's-acme-1', 'acme', 'api_key', 'k-acme', 'u-1', '{}', '{}')",
                    at(*issued),
                    at(*expires)
                )
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO session_token_mints
               (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at, expires_at)
             VALUES {}",
            values.join(", ")
        ))
        .execute(&db.pool)
        .await
        .expect("insert mint records");
    }
}

async fn jti_present(db: &TestDatabase, jti: uuid::Uuid) -> bool {
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM session_token_mints WHERE CAST(jti AS TEXT) = '{jti}'"
    ))
    .fetch_one(&db.pool)
    .await
    .expect("count");
    count == 1
}

async fn only_records_past_retention_are_deleted(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let now = Utc::now();
    let days = chrono::Duration::days;
    // 2,500 records past a 30-day retention: more than two batches.
    let old: Vec<_> = (0..2500)
        .map(|i| {
            let issued = now - days(100) + chrono::Duration::seconds(i);
            (
                uuid::Uuid::new_v4(),
                issued,
                issued + chrono::Duration::hours(1),
            )
        })
        .collect();
    insert_mints(&db, &old).await;
    // Issued long ago but not expired (a clock or TTL mishap): kept, a live token's record.
    let unexpired = uuid::Uuid::new_v4();
    // Expired, but within retention: kept.
    let recent = uuid::Uuid::new_v4();
    // Expired a day short of retention: kept.
    let almost = uuid::Uuid::new_v4();
    insert_mints(
        &db,
        &[
            (unexpired, now - days(100), now + days(1)),
            (
                recent,
                now - days(10),
                now - days(10) + chrono::Duration::hours(1),
            ),
            (
                almost,
                now - days(29) - chrono::Duration::hours(1),
                now - days(29),
            ),
        ],
    )
    .await;
    // Idempotency claims: one past its window (max TTL: 1 h), one within it.
    let hash = match backend {
        Backend::Postgres => "'\\x00'::bytea",
        Backend::Sqlite => "X'00'",
    };
    sqlx::query(&format!(
        "INSERT INTO mint_idempotency (principal, idem_key, request_hash, claims, created_at)
         VALUES ('api_key:k-acme', 'stale', {hash}, '{{}}', '{}'),
                ('api_key:k-acme', 'fresh', {hash}, '{{}}', '{}')",
        at(now - chrono::Duration::hours(2)),
        at(now - chrono::Duration::minutes(5)),
    ))
    .execute(&db.pool)
    .await
    .expect("insert idempotency claims");

    let app = TestApp::builder(backend)
        .database(db)
        .config(|c| c.audit.retention_days = 30)
        .spawn()
        .await;
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let minted: uuid::Uuid = data["jti"]
        .as_str()
        .and_then(|j| j.parse().ok())
        .expect("jti");

    let started = Instant::now();
    while app.db.count("session_token_mints").await > 4 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "records past retention are still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (jti, _, _) in old.iter().step_by(97) {
        assert!(!jti_present(&app.db, *jti).await);
    }
    for jti in [unexpired, recent, almost, minted] {
        assert!(jti_present(&app.db, jti).await, "{jti} was deleted");
    }
    // Claims are pruned after the records, in the same round.
    let started = Instant::now();
    loop {
        let keys: Vec<String> = sqlx::query_scalar("SELECT idem_key FROM mint_idempotency")
            .fetch_all(&app.db.pool)
            .await
            .expect("claims");
        if keys == ["fresh"] {
            break;
        }
        assert!(
            keys.contains(&"fresh".to_owned()),
            "the fresh claim was deleted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stale claim is still there: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn retention_zero_keeps_everything(backend: Backend) {
    let db = TestDatabase::seeded(backend).await;
    let long_ago = Utc::now() - chrono::Duration::days(3650);
    let jti = uuid::Uuid::new_v4();
    insert_mints(
        &db,
        &[(jti, long_ago, long_ago + chrono::Duration::hours(1))],
    )
    .await;
    let app = TestApp::builder(backend)
        .database(db)
        .config(|c| c.audit.retention_days = 0)
        .spawn()
        .await;
    // The pruning round runs at start; give it time to have run.
    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(jti_present(&app.db, jti).await);
}

/// Mint records outlive their session and tenant: a session may be deleted (the directory does)
/// and its records stay; a tenant with records may not be deleted, so no record names a tenant
/// that is gone.
async fn mint_records_do_not_vanish_with_their_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let count = app.mint_count().await;
    assert!(count >= 1);
    sqlx::query("DELETE FROM chat_sessions WHERE id = 's-acme-1'")
        .execute(&app.db.pool)
        .await
        .expect("a session with mint records can be deleted");
    let deleted = sqlx::query("DELETE FROM tenants WHERE id = 'acme'")
        .execute(&app.db.pool)
        .await;
    assert!(deleted.is_err(), "a tenant with mint records was deleted");
    assert_eq!(app.mint_count().await, count, "the records stay");
}

backend_tests!(
    only_records_past_retention_are_deleted,
    retention_zero_keeps_everything,
    mint_records_do_not_vanish_with_their_session,
);
