//! Revocation takes effect at once on every replica: caches follow the database through change
//! notifications (PostgreSQL `LISTEN/NOTIFY` fed by triggers; on SQLite a trigger-fed change log
//! the process polls), whoever makes the change. The key cache's TTL is set to an hour here, so
//! only a notification can explain a revocation being honoured within a second.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backend, TestApp, TestDatabase, ACME_KEY, GLOBEX_KEY};

const KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// What the issue asks: honoured by every replica within one second.
const WITHIN: Duration = Duration::from_secs(1);

async fn app_with_long_cache(backend: Backend, db: Option<TestDatabase>) -> TestApp {
    let mut builder = TestApp::builder(backend).config(|c| {
        c.api_key.cache_seconds = 3600;
        // Replicas of one database share its signing keys, so they share the key that seals them.
        c.signing.key_encryption_key = Some(KEK.to_owned().into());
    });
    if let Some(db) = db {
        builder = builder.database(db);
    }
    let app = builder.spawn().await;
    wait_until(Duration::from_secs(10), || async {
        app.state.freshness.is_live()
    })
    .await
    .expect("the change feed connects");
    app
}

/// Polls `check` until it holds; `Err` with the time waited when it never did within `limit`.
async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Result<Duration, Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mint_status(app: &TestApp, key: &str, session: &str) -> StatusCode {
    app.mint(key, json!({"session_id": session})).await.status()
}

/// How many times the app looked an API key up in the database.
async fn key_lookups(app: &TestApp) -> f64 {
    let text = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|line| {
            line.starts_with("neo_sessions_store_operation_duration_seconds_count")
                && line.contains("operation=\"find_api_key_by_hash\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn feed_gauge(app: &TestApp) -> f64 {
    let text = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find(|line| line.starts_with("neo_sessions_cache_invalidation_feed_up "))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .expect("the feed gauge")
}

/// Plain SQL, as an operator in `psql` or another service would write it.
async fn set_revoked(db: &TestDatabase, key_id: &str, revoked: bool) {
    let value = if revoked {
        format!("'{}'", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    } else {
        "NULL".to_owned()
    };
    sqlx::query(&format!(
        "UPDATE api_keys SET revoked_at = {value} WHERE id = '{key_id}'"
    ))
    .execute(&db.pool)
    .await
    .expect("update the key");
}

async fn refused_within(app: &TestApp, key: &str, session: &str) -> Result<Duration, Duration> {
    wait_until(WITHIN, || async {
        mint_status(app, key, session).await == StatusCode::UNAUTHORIZED
    })
    .await
}

async fn accepted_within(app: &TestApp, key: &str, session: &str) -> Result<Duration, Duration> {
    wait_until(WITHIN, || async {
        mint_status(app, key, session).await == StatusCode::OK
    })
    .await
}

async fn a_key_revoked_by_plain_sql_is_refused_within_a_second(backend: Backend) {
    let app = app_with_long_cache(backend, None).await;
    assert_eq!(
        mint_status(&app, ACME_KEY, "s-acme-1").await,
        StatusCode::OK
    );
    // The key is cached: a second mint does not look it up again.
    let lookups = key_lookups(&app).await;
    assert_eq!(
        mint_status(&app, ACME_KEY, "s-acme-1").await,
        StatusCode::OK
    );
    assert_eq!(key_lookups(&app).await, lookups, "the key is not cached");

    set_revoked(&app.db, "k-acme", true).await;
    let waited = refused_within(&app, ACME_KEY, "s-acme-1").await;
    assert!(waited.is_ok(), "revoked key accepted for {waited:?}");
    // Un-revoking is a change too (and the other tenant's key was never affected).
    set_revoked(&app.db, "k-acme", false).await;
    let waited = accepted_within(&app, ACME_KEY, "s-acme-1").await;
    assert!(waited.is_ok(), "restored key refused for {waited:?}");
    assert_eq!(
        mint_status(&app, GLOBEX_KEY, "s-globex-1").await,
        StatusCode::OK
    );
}

async fn a_key_revoked_by_the_cli_path_is_refused_within_a_second(backend: Backend) {
    let app = app_with_long_cache(backend, None).await;
    assert_eq!(
        mint_status(&app, ACME_KEY, "s-acme-1").await,
        StatusCode::OK
    );
    assert_eq!(
        app.state.store.revoke_api_key("k-acme").await.ok(),
        Some(Some(true))
    );
    let waited = refused_within(&app, ACME_KEY, "s-acme-1").await;
    assert!(waited.is_ok(), "revoked key accepted for {waited:?}");
}

/// Two replicas on one PostgreSQL: a key revoked through one, or by plain SQL, is refused by the
/// other within a second; and again after the other's notification connection was killed and
/// came back. While its feed is down, a replica serves nothing from its caches.
#[tokio::test]
async fn two_replicas_on_one_postgres_follow_each_other() {
    let a = app_with_long_cache(Backend::Postgres, None).await;
    // A second app on the same database (a handle that does not drop it: `a` does).
    let shared = TestDatabase::attach(Backend::Postgres, &a.db.name, a.db.url.clone()).await;
    let b = app_with_long_cache(Backend::Postgres, Some(shared)).await;
    for app in [&a, &b] {
        assert_eq!(mint_status(app, ACME_KEY, "s-acme-1").await, StatusCode::OK);
        assert_eq!(
            mint_status(app, GLOBEX_KEY, "s-globex-1").await,
            StatusCode::OK
        );
    }

    // Through one replica's store (what `api-key revoke` runs): the other refuses it.
    assert_eq!(
        a.state.store.revoke_api_key("k-acme").await.ok(),
        Some(Some(true))
    );
    let waited = refused_within(&b, ACME_KEY, "s-acme-1").await;
    assert!(
        waited.is_ok(),
        "replica b accepted a revoked key for {waited:?}"
    );
    // The figure the README quotes (`--nocapture` shows it): polled every 20 ms.
    eprintln!("revocation through replica a honoured by replica b after {waited:?}");

    // By plain SQL: both refuse it.
    set_revoked(&a.db, "k-globex", true).await;
    for app in [&a, &b] {
        let waited = refused_within(app, GLOBEX_KEY, "s-globex-1").await;
        assert!(
            waited.is_ok(),
            "a replica accepted a revoked key for {waited:?}"
        );
    }
    set_revoked(&a.db, "k-globex", false).await;
    let waited = accepted_within(&b, GLOBEX_KEY, "s-globex-1").await;
    assert!(waited.is_ok(), "restored key refused for {waited:?}");

    // Kill the replicas' notification connections and keep them from reconnecting (no new
    // connections to the database; the pools keep the ones they have).
    let lookups = key_lookups(&b).await;
    allow_connections(&a.db, false).await;
    kill_listeners(&a.db).await;
    let lost = wait_until(Duration::from_secs(5), || async {
        !b.state.freshness.is_live()
    })
    .await;
    assert!(lost.is_ok(), "b did not notice its feed was killed");
    assert_eq!(
        feed_gauge(&b).await,
        0.0,
        "the metric does not say the feed is down"
    );
    // Feed down: every request looks its key up (nothing cached is trusted) ...
    assert_eq!(
        mint_status(&b, GLOBEX_KEY, "s-globex-1").await,
        StatusCode::OK
    );
    assert_eq!(
        mint_status(&b, GLOBEX_KEY, "s-globex-1").await,
        StatusCode::OK
    );
    assert!(
        key_lookups(&b).await >= lookups + 2.0,
        "b served a key from its cache with no feed"
    );
    // ... so a revocation made now, with no notification to b, is honoured at once.
    set_revoked(&a.db, "k-globex", true).await;
    assert_eq!(
        mint_status(&b, GLOBEX_KEY, "s-globex-1").await,
        StatusCode::UNAUTHORIZED
    );
    set_revoked(&a.db, "k-globex", false).await;
    assert_eq!(
        mint_status(&b, GLOBEX_KEY, "s-globex-1").await,
        StatusCode::OK
    );

    // The feed comes back, and notifications are honoured again.
    allow_connections(&a.db, true).await;
    let back = wait_until(Duration::from_secs(10), || async {
        b.state.freshness.is_live()
    })
    .await;
    assert!(back.is_ok(), "b's feed did not come back");
    assert_eq!(feed_gauge(&b).await, 1.0);
    assert_eq!(
        mint_status(&b, GLOBEX_KEY, "s-globex-1").await,
        StatusCode::OK
    );
    set_revoked(&a.db, "k-globex", true).await;
    let waited = refused_within(&b, GLOBEX_KEY, "s-globex-1").await;
    assert!(
        waited.is_ok(),
        "after reconnecting, b accepted a revoked key for {waited:?}"
    );
}

async fn allow_connections(db: &TestDatabase, allow: bool) {
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .expect("admin connection");
    sqlx::query(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
        db.name
    ))
    .execute(&admin)
    .await
    .expect("alter database");
    admin.close().await;
}

async fn kill_listeners(db: &TestDatabase) {
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .expect("admin connection");
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&db.name)
    .fetch_all(&admin)
    .await
    .expect("terminate the listeners");
    assert!(!killed.is_empty(), "no listening connection found");
    admin.close().await;
}

backend_tests!(
    a_key_revoked_by_plain_sql_is_refused_within_a_second,
    a_key_revoked_by_the_cli_path_is_refused_within_a_second,
);
