//! The mint records by day on PostgreSQL (migration 13), from the outside: partitions are made
//! ahead of time and a missing one never fails a mint; a UUIDv7 jti reads one partition; retention
//! drops whole partitions; an existing database migrates in place and its v4 jtis are still found,
//! revoked, listed and fed.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Row;

use crate::support::{Backend, TestApp, TestDatabase, ACME_KEY};

/// The day partitions and the others, by name.
async fn partitions(db: &TestDatabase) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT CAST(c.relname AS TEXT) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = CAST('session_token_mints' AS regclass) ORDER BY c.relname",
    )
    .fetch_all(&db.pool)
    .await
    .expect("partitions")
}

fn day_partition(day: NaiveDate) -> String {
    format!("session_token_mints_p{}", day.format("%Y%m%d"))
}

/// The partition a record is in.
async fn partition_of(db: &TestDatabase, jti: &str) -> String {
    sqlx::query_scalar(&format!(
        "SELECT CAST(CAST(tableoid AS regclass) AS TEXT) FROM session_token_mints
         WHERE jti = '{jti}'"
    ))
    .fetch_one(&db.pool)
    .await
    .expect("the record")
}

async fn store(db: &TestDatabase) -> std::sync::Arc<neo_sessions::store::Store> {
    neo_sessions::store::connect(&db.url, 2)
        .await
        .expect("store")
}

async fn get_record(app: &TestApp, jti: &str) -> reqwest::Response {
    app.request(
        Method::GET,
        &format!("/public-api/sessions/{jti}"),
        Some(ACME_KEY),
    )
    .await
}

async fn minted_jti(app: &TestApp) -> String {
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    data["jti"].as_str().expect("jti").to_owned()
}

#[tokio::test]
async fn partitions_are_made_ahead_and_a_missing_one_never_fails_a_mint() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let today = Utc::now().date_naive();
    let ahead: Vec<String> = (0..=neo_sessions::store::PARTITION_DAYS_AHEAD)
        .map(|d| day_partition(today + Days::new(d)))
        .collect();
    // The service makes them in the background on start.
    wait_for_partitions(&app.db, &ahead).await;
    let jti = minted_jti(&app).await;
    assert_eq!(partition_of(&app.db, &jti).await, day_partition(today));

    // Today's and every future partition gone (an operator's mistake, a replica down for days):
    // the mint lands in the default partition and is found as ever.
    for partition in &ahead {
        sqlx::query(&format!("DROP TABLE {partition}"))
            .execute(&app.db.pool)
            .await
            .expect("drop a partition");
    }
    let stray = minted_jti(&app).await;
    assert_eq!(
        partition_of(&app.db, &stray).await,
        "session_token_mints_default"
    );
    assert_eq!(get_record(&app, &stray).await.status(), StatusCode::OK);

    // The next round makes them again and moves the day's rows out of the default partition,
    // while mints go on (one routed to the default partition as today's is attached retries).
    let app = std::sync::Arc::new(app);
    let minting = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..100 {
                let response = app.mint(ACME_KEY, json!({"session_id": "s-acme-1"})).await;
                statuses.push(response.status());
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let created = store(&app.db)
        .await
        .create_partitions(today)
        .await
        .expect("create partitions");
    let statuses = minting.await.expect("minting");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(created, ahead);
    assert_eq!(partition_of(&app.db, &stray).await, day_partition(today));
    assert_eq!(app.db.count("session_token_mints_default").await, 0);
    // Today's partition went with the first record; the stray one and the hundred are there.
    assert_eq!(app.db.count("session_token_mints").await, 101);
    assert_eq!(get_record(&app, &stray).await.status(), StatusCode::OK);
    // Made again: nothing to do.
    let again = store(&app.db)
        .await
        .create_partitions(today)
        .await
        .expect("create partitions");
    assert!(again.is_empty(), "{again:?}");
}

/// Waits (up to 20 s) until `partitions` exist: the service makes them in the background.
async fn wait_for_partitions(db: &TestDatabase, wanted: &[String]) {
    let started = std::time::Instant::now();
    loop {
        let present = partitions(db).await;
        if wanted.iter().all(|p| present.contains(p)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "partitions not made: {wanted:?}, there are {present:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Index scans of each partition so far (the statistics of other sessions are flushed within
/// about a second). Making a partition scans tables too, but not by an index.
async fn index_scans(db: &TestDatabase) -> Vec<(String, i64)> {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&db.pool)
        .await
        .expect("clear snapshot");
    sqlx::query(
        "SELECT CAST(relname AS TEXT) AS relname, COALESCE(idx_scan, 0) AS scans
         FROM pg_stat_user_tables WHERE relname LIKE 'session\\_token\\_mints\\_%' ORDER BY relname",
    )
    .fetch_all(&db.pool)
    .await
    .expect("statistics")
    .into_iter()
    .map(|row| (row.get::<String, _>("relname"), row.get::<i64, _>("scans")))
    .collect()
}

/// The partitions whose scans grew from `before` to `after`.
fn scanned(before: &[(String, i64)], after: &[(String, i64)]) -> Vec<String> {
    after
        .iter()
        .filter(|(name, scans)| {
            before
                .iter()
                .find(|(n, _)| n == name)
                .is_none_or(|(_, b)| b < scans)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Waits until the statistics show index scans of `partition` (a backend flushes its statistics
/// within a second of its last statement, or ten when it went idle sooner), then returns the
/// day partitions whose index scans grew since `before`. (Not the default partition: the
/// retention task's row pruning reads it along an index.)
async fn days_scanned(db: &TestDatabase, before: &[(String, i64)], partition: &str) -> Vec<String> {
    let started = std::time::Instant::now();
    loop {
        let touched = scanned(before, &index_scans(db).await);
        if touched.iter().any(|p| p == partition) || started.elapsed() > Duration::from_secs(15) {
            return touched
                .into_iter()
                .filter(|p| p.starts_with("session_token_mints_p"))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_v7_jti_is_read_revoked_and_introspected_in_one_partition() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let today = Utc::now().date_naive();
    // Partitions for a week back as well: a look-up that probed them all would show.
    store(&app.db)
        .await
        .create_partitions(today - Days::new(7))
        .await
        .expect("create partitions");
    store(&app.db)
        .await
        .create_partitions(today)
        .await
        .expect("create partitions");
    let (data, _) = app
        .mint_ok(ACME_KEY, json!({"session_id": "s-acme-1"}))
        .await;
    let jti = data["jti"].as_str().expect("jti").to_owned();
    let token = data["token"].as_str().expect("token").to_owned();
    let parsed: uuid::Uuid = jti.parse().expect("uuid");
    assert_eq!(parsed.get_version_num(), 7, "jtis are UUIDv7");
    assert_eq!(partitions(&app.db).await.len(), 9, "8 days and the default");

    // The plan of the look-up the store makes (queries.rs: `by_jti!`): one partition.
    let (from, to) = second_of(&parsed);
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN SELECT * FROM session_token_mints
         WHERE jti = '{jti}' AND issued_at >= '{from}' AND issued_at < '{to}'"
    ))
    .fetch_all(&app.db.pool)
    .await
    .expect("explain");
    let touched: Vec<&String> = plan
        .iter()
        .filter(|line| line.contains(" on session_token_mints_"))
        .collect();
    assert_eq!(touched.len(), 1, "{plan:#?}");
    assert!(touched[0].contains(&day_partition(today)), "{plan:#?}");

    // And what the service does: GET, revoke and introspect scan today's partition only.
    let ahead: Vec<String> = (0..=neo_sessions::store::PARTITION_DAYS_AHEAD)
        .map(|d| day_partition(today + Days::new(d)))
        .collect();
    wait_for_partitions(&app.db, &ahead).await;
    let before = index_scans(&app.db).await;
    assert_eq!(get_record(&app, &jti).await.status(), StatusCode::OK);
    assert_eq!(app.revoke(ACME_KEY, &jti).await.status(), StatusCode::OK);
    let introspected = app.introspect(ACME_KEY, &token).await;
    assert_eq!(introspected["active"], false, "revoked");
    let touched = days_scanned(&app.db, &before, &day_partition(today)).await;
    assert_eq!(touched, vec![day_partition(today)]);
}

/// The second a v7 jti names, as SQL timestamps.
fn second_of(jti: &uuid::Uuid) -> (String, String) {
    let (seconds, _) = jti.get_timestamp().expect("v7").to_unix();
    let from = DateTime::from_timestamp(i64::try_from(seconds).expect("secs"), 0).expect("time");
    let to = from + chrono::Duration::seconds(1);
    (from.to_rfc3339(), to.to_rfc3339())
}

/// Inserts a record of `s-acme-1` by plain SQL.
async fn insert_record(
    db: &TestDatabase,
    jti: uuid::Uuid,
    issued: DateTime<Utc>,
    expires: DateTime<Utc>,
) {
    sqlx::query(&format!(
        "INSERT INTO session_token_mints
           (jti, session_id, tenant_id, minted_by_kind, minted_by, issued_at, expires_at)
         VALUES ('{jti}', 's-acme-1', 'acme', 'api_key', 'k-acme', '{}', '{}')",
        issued.to_rfc3339(),
        expires.to_rfc3339()
    ))
    .execute(&db.pool)
    .await
    .expect("insert a record");
}

fn v7_at(t: DateTime<Utc>) -> uuid::Uuid {
    let seconds = u64::try_from(t.timestamp()).expect("after 1970");
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, 0))
}

#[tokio::test]
async fn retention_drops_a_partition_once_every_token_in_it_is_past_retention() {
    let db = TestDatabase::seeded(Backend::Postgres).await;
    let store = store(&db).await;
    let now = Utc::now();
    let day = |days_ago: u64| now.date_naive() - Days::new(days_ago);
    let noon = |d: NaiveDate| d.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    // Partitions 100 to 97 days ago, and 20 to 17 days ago.
    for first in [day(100), day(20)] {
        store.create_partitions(first).await.expect("partitions");
    }
    let hour = chrono::Duration::hours(1);
    // 100 and 98 days ago: every token expired long ago.
    for d in [100, 98] {
        for _ in 0..50 {
            insert_record(&db, v7_at(noon(day(d))), noon(day(d)), noon(day(d)) + hour).await;
        }
    }
    // 99 days ago: one token that has not expired (a TTL or clock mishap) keeps its partition;
    // the other records there are deleted row by row.
    let expired = v7_at(noon(day(99)));
    insert_record(&db, expired, noon(day(99)), noon(day(99)) + hour).await;
    let unexpired = v7_at(noon(day(99)));
    insert_record(
        &db,
        unexpired,
        noon(day(99)),
        now + chrono::Duration::days(1),
    )
    .await;
    // 20 days ago: within a 30-day retention.
    let recent = v7_at(noon(day(20)));
    insert_record(&db, recent, noon(day(20)), noon(day(20)) + hour).await;

    neo_sessions::store::prune_round(&store, 30, Duration::from_secs(3600)).await;

    let left = partitions(&db).await;
    for gone in [100, 98, 97] {
        assert!(!left.contains(&day_partition(day(gone))), "{left:?}");
    }
    for kept in [99, 20, 19, 18, 17, 0] {
        assert!(left.contains(&day_partition(day(kept))), "{left:?}");
    }
    assert!(left.contains(&"session_token_mints_default".to_owned()));
    assert_eq!(
        db.count("session_token_mints").await,
        2,
        "{expired} was deleted"
    );
    assert_eq!(
        partition_of(&db, &unexpired.to_string()).await,
        day_partition(day(99))
    );
    assert_eq!(
        partition_of(&db, &recent.to_string()).await,
        day_partition(day(20))
    );
}

#[tokio::test]
async fn an_existing_database_migrates_in_place_and_its_v4_jtis_are_still_found() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    // The database as migration 12 left it (with the `kid` column and the withdrawal trigger it
    // added to the table), and records of every kind.
    let mut before = sqlx::migrate!("./migrations/postgres");
    before.migrations = std::borrow::Cow::Owned(
        before
            .migrations
            .iter()
            .filter(|m| m.version <= 20261202000012)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.expect("migrate to 12");
    for statement in [
        "INSERT INTO tenants (id, name) VALUES ('acme', 'Acme MSP')",
        "INSERT INTO chat_sessions (id, tenant_id) VALUES ('s-acme-1', 'acme')",
    ] {
        sqlx::query(statement).execute(&pool).await.expect("tenant");
    }
    let now = Utc::now();
    let old_live = uuid::Uuid::new_v4();
    let old_revoked = uuid::Uuid::new_v4();
    let old_expired = uuid::Uuid::new_v4();
    for (jti, issued, minutes, kid) in [
        (old_live, now - chrono::Duration::minutes(5), 10, "k1"),
        (old_revoked, now - chrono::Duration::minutes(4), 10, "k1"),
        (old_expired, now - chrono::Duration::days(3), 15, "k0"),
    ] {
        sqlx::query(
            "INSERT INTO session_token_mints
               (jti, session_id, tenant_id, minted_by_kind, minted_by, issued_at, expires_at, kid)
             VALUES ($1, 's-acme-1', 'acme', 'api_key', 'k-acme', $2, $3, $4)",
        )
        .bind(jti)
        .bind(issued)
        .bind(issued + chrono::Duration::minutes(minutes))
        .bind(kid)
        .execute(&pool)
        .await
        .expect("insert");
    }
    sqlx::query(
        "UPDATE session_token_mints SET revoked_at = now(), revoked_by = 'k-acme' WHERE jti = $1",
    )
    .bind(old_revoked)
    .execute(&pool)
    .await
    .expect("revoke");

    // Migrate (13) and seed the keys, then serve.
    db.migrate_and_seed().await;
    let kids: Vec<(String, String)> =
        sqlx::query_as("SELECT CAST(jti AS TEXT), kid FROM session_token_mints ORDER BY kid")
            .fetch_all(&pool)
            .await
            .expect("the column carried over");
    assert_eq!(kids.len(), 3);
    assert_eq!(kids[0].1, "k0");
    for jti in [old_live, old_revoked, old_expired] {
        assert_eq!(
            partition_of(&db, &jti.to_string()).await,
            "session_token_mints_legacy"
        );
    }
    pool.close().await;
    let app = TestApp::builder(Backend::Postgres)
        .database(db)
        .spawn()
        .await;

    // Found, revoked and fed by their v4 jtis.
    for jti in [old_live, old_revoked, old_expired] {
        assert_eq!(
            get_record(&app, &jti.to_string()).await.status(),
            StatusCode::OK
        );
    }
    let revoked = app
        .request(
            Method::DELETE,
            &format!("/public-api/sessions/{old_live}"),
            Some(ACME_KEY),
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    let body: Value = revoked.json().await.expect("json");
    assert_eq!(body["data"]["active"], false);

    // A new token goes to today's partition (which starts where the legacy one ends); the feed
    // and the listing see both kinds, across partitions, in order.
    wait_for_partitions(&app.db, &[day_partition(Utc::now().date_naive())]).await;
    let new = minted_jti(&app).await;
    assert_eq!(
        partition_of(&app.db, &new).await,
        day_partition(Utc::now().date_naive())
    );
    let revoked_new = app
        .request(
            Method::DELETE,
            &format!("/public-api/sessions/{new}"),
            Some(ACME_KEY),
        )
        .await;
    assert_eq!(revoked_new.status(), StatusCode::OK);
    let mut fed = app.revoked_jtis(ACME_KEY, 3).await;
    fed.sort();
    let mut expected = vec![old_live.to_string(), old_revoked.to_string(), new.clone()];
    expected.sort();
    assert_eq!(fed, expected);

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let response = app
            .client
            .get(app.url("/public-api/sessions"))
            .query(&query)
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .expect("list");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        for record in body["data"].as_array().expect("data") {
            listed.push(record["jti"].as_str().expect("jti").to_owned());
        }
        cursor = body["meta"]["pagination"]["next_cursor"]
            .as_str()
            .map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        listed,
        vec![
            new,
            old_revoked.to_string(),
            old_live.to_string(),
            old_expired.to_string()
        ],
        "newest first, across partitions"
    );
}
