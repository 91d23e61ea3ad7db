//! Faults a relay in production meets: the database going away and coming back (a PostgreSQL
//! of the test's own, killed and restarted), an embedded database on a full disk, a probe
//! flood, and audit rows that must outlive what they record.

use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    assert_error, header, postgres::OwnPostgres, Backend, TestApp, TestDatabase, ACME_KEY,
};

const BODY: fn() -> Value = || json!({"session_id": "s-acme-1"});

/// Mints while the database is killed and restarted: during the outage every mint is a 503
/// `database_unavailable` with `Retry-After` (never a 500 or a timeout), readiness says the
/// database is unavailable, service comes back by itself, and no 200 is ever sent without its
/// audit row. (That the requests after the first fail at once, instead of each waiting out
/// the pool's acquire timeout, is measured in docs/operating.md, not asserted on a clock.)
#[tokio::test]
async fn a_database_outage_is_a_prompt_retryable_503_and_recovery_is_automatic() {
    let mut postgres = OwnPostgres::start().await;
    let name = "neo_outage";
    let db = postgres.seeded_database(name).await;
    let app = TestApp::builder(Backend::Postgres)
        .database(db)
        .spawn()
        .await;
    let mut minted = 0;
    for _ in 0..5 {
        assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
        minted += 1;
    }

    postgres.kill();
    for i in 0..20 {
        let response = app.mint(ACME_KEY, BODY()).await;
        assert!(
            header(&response, "retry-after").is_some(),
            "mint {i} during the outage: {} {:?}",
            response.status(),
            response.text().await
        );
        let body = assert_error(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        )
        .await;
        assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.get("/public-api/health").await;
    let body = assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(body["error"]["details"]["database"], "unavailable");

    postgres.restart().await;
    let mut back = false;
    for _ in 0..100 {
        let status = app.mint(ACME_KEY, BODY()).await.status();
        if status == StatusCode::OK {
            minted += 1;
            back = true;
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "mints succeed again once the database is back");
    for _ in 0..5 {
        assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
        minted += 1;
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM session_token_mints")
        .fetch_one(
            &sqlx::PgPool::connect(&postgres.url(name))
                .await
                .expect("connect"),
        )
        .await
        .expect("count");
    assert_eq!(
        recorded, minted,
        "every 200 has its audit row, and only those"
    );
}

/// PostgreSQL down when the service starts: it serves anyway (liveness 200, readiness and mints
/// 503 at once), and once PostgreSQL is up it connects, migrates and mints without a restart.
#[tokio::test]
async fn a_database_down_at_start_is_waited_for_in_the_background() {
    let mut postgres = OwnPostgres::start().await;
    let name = "neo_late";
    let db = postgres.seeded_database(name).await;
    postgres.kill();

    let app = TestApp::builder(Backend::Postgres)
        .database(db)
        .spawn()
        .await;
    assert_eq!(
        app.get("/public-api/health/live").await.status(),
        StatusCode::OK
    );
    let body = assert_error(
        app.get("/public-api/health").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(body["error"]["details"]["database"], "unavailable");
    assert_error(
        app.mint(ACME_KEY, BODY()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;

    postgres.restart().await;
    assert!(
        app.mints_again(ACME_KEY, BODY(), 300).await,
        "the service connects once PostgreSQL is up"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get("/public-api/health").await.status(), StatusCode::OK);
}

/// A replica that started while PostgreSQL was down holds no signing key: its JWKS is a 503
/// `database_unavailable` with `Retry-After` and `no-store`, never a cacheable `{"keys": []}`
/// that a cache in front would hold for `max-age` (every verifier refusing every token); once
/// the keys are loaded it is the cacheable key set again.
#[tokio::test]
async fn an_empty_key_set_is_never_served_as_cacheable() {
    let mut postgres = OwnPostgres::start().await;
    let name = "neo_no_keys";
    let db = postgres.seeded_database(name).await;
    postgres.kill();
    let app = TestApp::builder(Backend::Postgres)
        .database(db)
        .spawn()
        .await;

    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(
        header(&response, "cache-control").as_deref(),
        Some("no-store"),
        "{} {:?}",
        response.status(),
        header(&response, "cache-control")
    );
    assert!(header(&response, "retry-after").is_some());
    assert!(header(&response, "etag").is_none());
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;

    postgres.restart().await;
    assert!(
        app.mints_again(ACME_KEY, BODY(), 300).await,
        "the service connects once PostgreSQL is up"
    );
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "cache-control").is_some_and(|v| v.contains("max-age")));
    let jwks: Value = response.json().await.expect("JSON");
    assert!(!jwks["keys"].as_array().expect("keys").is_empty(), "{jwks}");
}

/// The embedded database on a full disk (a 4 MiB tmpfs the test fills): mints are a 503
/// `database_unavailable`, readiness reports the recorder failing, and once space is freed
/// mints succeed again.
#[tokio::test]
async fn a_full_disk_under_the_embedded_database_is_a_503_and_readiness_says_so() {
    let mount = tempfile::tempdir().expect("tempdir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mount.path())
        .status()
        .expect("mount runs");
    assert!(status.success(), "mounting a tmpfs for the full-disk test");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_owned());

    let url = format!(
        "sqlite://{}?mode=rwc",
        mount.path().join("neo.db").display()
    );
    let db = TestDatabase::seeded_at(Backend::Sqlite, "neo_full_disk", url).await;
    let app = TestApp::builder(Backend::Sqlite).database(db).spawn().await;
    assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);

    // Fill the file system.
    let filler = mount.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 8 * 1024 * 1024]);
    let mut refused = None;
    for _ in 0..200 {
        let response = app
            .mint(
                ACME_KEY,
                json!({"session_id": "s-acme-1", "end_user": "x".repeat(200)}),
            )
            .await;
        if response.status() != StatusCode::OK {
            refused = Some(response);
            break;
        }
    }
    let response = refused.expect("a full disk refuses a mint");
    assert!(header(&response, "retry-after").is_some());
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.get("/public-api/health").await;
    let body = assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    assert_eq!(body["error"]["details"]["recorder"], "failing");

    std::fs::remove_file(&filler).expect("free the space");
    assert!(
        app.mints_again(ACME_KEY, BODY(), 50).await,
        "mints succeed once there is space again"
    );
}

/// A flood of unauthenticated readiness probes costs at most one database ping a second.
async fn a_probe_flood_shares_one_ping(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let before = app.state.readiness.pings();
    let mut probes = Vec::new();
    for _ in 0..200 {
        let app = Arc::clone(&app);
        probes.push(tokio::spawn(async move {
            app.get("/public-api/health").await.status()
        }));
    }
    for probe in probes {
        assert_eq!(probe.await.expect("probe"), StatusCode::OK);
    }
    let pings = app.state.readiness.pings() - before;
    assert!(pings <= 2, "{pings} pings for 200 probes");
}

backend_tests!(a_probe_flood_shares_one_ping);

/// PostgreSQL ends every backend of the service's database (`pg_terminate_backend`, as a fast
/// shutdown or a failover does: SQLSTATE 57P01) while the API key must be looked up: no caller
/// ever gets a 500. Each mint is a 200 (a dead pooled connection retried on a fresh one) or a
/// 503 `database_unavailable` with `Retry-After`, and minting works again at once.
#[tokio::test]
async fn terminated_database_connections_are_never_a_500() {
    let app = TestApp::spawn(Backend::Postgres).await;
    for round in 0..3 {
        // Warm the pool, then end every connection the service holds.
        let response = app.mint(ACME_KEY, BODY()).await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}: warm-up");
        let admin = sqlx::PgPool::connect(&crate::support::admin_url())
            .await
            .expect("admin connection");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name = 'neo-sessions'",
        )
        .bind(&app.db.name)
        .execute(&admin)
        .await
        .expect("terminate");
        admin.close().await;
        // Idle for over a second, so the pool checks each connection before handing it out.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for attempt in 0..5 {
            let response = app.mint(ACME_KEY, BODY()).await;
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(
                    header(&response, "retry-after").is_some(),
                    "round {round}, attempt {attempt}: a 503 without Retry-After"
                );
                assert_error(response, status, "database_unavailable").await;
            } else {
                let body = response.text().await.unwrap_or_default();
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "round {round}, attempt {attempt}: {body}"
                );
            }
        }
        // Service is back within the guard's probe interval.
        let mut recovered = false;
        for _ in 0..50 {
            if app.mint(ACME_KEY, BODY()).await.status() == StatusCode::OK {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recovered, "round {round}: minting did not come back");
    }
}

/// Ends every backend of the service's database but the caller's own (`pg_terminate_backend`,
/// SQLSTATE 57P01, as a fast shutdown or a failover does).
async fn terminate_service_backends(admin: &sqlx::PgPool, database: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name = 'neo-sessions'",
    )
    .bind(database)
    .execute(admin)
    .await
    .expect("terminate");
}

/// The same outage while requests that must look their key up (the key cache off) are in
/// flight, on the mint route and a read route, over and over: every answer is a 200 or a 503
/// `database_unavailable` with `Retry-After`, never a 500.
#[tokio::test]
async fn connections_terminated_under_load_are_never_a_500() {
    let app = Arc::new(
        TestApp::builder(Backend::Postgres)
            .config(|c| c.api_key.cache_seconds = 0)
            .spawn()
            .await,
    );
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .expect("admin connection");
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8 {
        let app = Arc::clone(&app);
        clients.spawn(async move {
            let mut seen = (0u32, 0u32);
            while tokio::time::Instant::now() < until {
                let response = if client % 2 == 0 {
                    app.mint(ACME_KEY, BODY()).await
                } else {
                    app.request(Method::GET, "/public-api/sessions?limit=1", Some(ACME_KEY))
                        .await
                };
                let status = response.status();
                let retry_after = header(&response, "retry-after");
                let body = response.text().await.unwrap_or_default();
                match status {
                    StatusCode::OK => seen.0 += 1,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(retry_after.is_some(), "a 503 without Retry-After: {body}");
                        assert!(body.contains("database_unavailable"), "{body}");
                        seen.1 += 1;
                    }
                    other => panic!("client {client}: {other}: {body}"),
                }
            }
            seen
        });
    }
    let mut rounds = 0;
    while tokio::time::Instant::now() < until {
        terminate_service_backends(&admin, &app.db.name).await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(40 + (rounds % 5) * 30)).await;
    }
    let mut totals = (0, 0);
    while let Some(seen) = clients.join_next().await {
        let seen = seen.expect("a client failed");
        totals = (totals.0 + seen.0, totals.1 + seen.1);
    }
    admin.close().await;
    assert!(totals.0 > 0, "nothing was served: {totals:?}");
    eprintln!(
        "{rounds} terminations; 200: {}, 503: {}",
        totals.0, totals.1
    );
}

/// A pooled connection the database ended while it sat idle is retried once on a fresh one:
/// after every idle backend of the service is terminated, the very next request that must look
/// its key up (key cache off) is a 200, not a 503, on the mint route and on a read route.
#[tokio::test]
async fn a_dead_pooled_connection_is_retried_on_a_fresh_one() {
    let app = TestApp::builder(Backend::Postgres)
        .config(|c| c.api_key.cache_seconds = 0)
        .spawn()
        .await;
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .expect("admin connection");
    for round in 0..5 {
        // Warm the pool (several connections in use at once), then let them go idle.
        let (a, b, c, d) = tokio::join!(
            app.mint(ACME_KEY, BODY()),
            app.mint(ACME_KEY, BODY()),
            app.mint(ACME_KEY, BODY()),
            app.mint(ACME_KEY, BODY()),
        );
        for response in [a, b, c, d] {
            assert_eq!(response.status(), StatusCode::OK, "round {round}: warm-up");
        }
        terminate_service_backends(&admin, &app.db.name).await;
        // Let the terminations land, but not so long that the pool pings idle connections.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let path = if round % 2 == 0 {
            None
        } else {
            Some("/public-api/sessions?limit=1")
        };
        let response = match path {
            None => app.mint(ACME_KEY, BODY()).await,
            Some(path) => app.request(Method::GET, path, Some(ACME_KEY)).await,
        };
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "round {round} ({path:?}): {body}");
    }
    admin.close().await;
}

/// A database that refuses connections ("not currently accepting connections", SQLSTATE 55000,
/// as during a failover or maintenance) once the pool's connections are gone: every request
/// that needs the database, on the authentication path too (the key cache off), is a 503
/// `database_unavailable` with `Retry-After`, never a 500; service comes back by itself.
#[tokio::test]
async fn a_database_refusing_connections_is_a_503_on_the_authentication_path() {
    let app = TestApp::builder(Backend::Postgres)
        .config(|c| c.api_key.cache_seconds = 0)
        .spawn()
        .await;
    assert_eq!(app.mint(ACME_KEY, BODY()).await.status(), StatusCode::OK);
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .expect("admin connection");
    let allow = |allowed: bool| {
        format!(
            "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS {allowed}",
            app.db.name
        )
    };
    sqlx::query(&allow(false))
        .execute(&admin)
        .await
        .expect("refuse connections");
    terminate_service_backends(&admin, &app.db.name).await;
    // Idle for over a second: the pool's before-acquire check pings each connection, finds it
    // ended, and opens a new one, which the database refuses.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for attempt in 0..6 {
        let response = if attempt % 2 == 0 {
            app.mint(ACME_KEY, BODY()).await
        } else {
            app.request(Method::GET, "/public-api/sessions?limit=1", Some(ACME_KEY))
                .await
        };
        let status = response.status();
        let retry_after = header(&response, "retry-after");
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {body}"
        );
        assert!(
            body.contains("database_unavailable"),
            "attempt {attempt}: {body}"
        );
        assert!(retry_after.is_some(), "attempt {attempt}: no Retry-After");
    }
    sqlx::query(&allow(true))
        .execute(&admin)
        .await
        .expect("accept connections");
    admin.close().await;
    let mut recovered = false;
    for _ in 0..50 {
        if app.mint(ACME_KEY, BODY()).await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "minting did not come back");
}
