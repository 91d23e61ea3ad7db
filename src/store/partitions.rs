//! Mint records by day on PostgreSQL (migration 13): where a token id says its record lives, the
//! day partitions made ahead of time, and whole partitions dropped past retention. SQLite keeps
//! one table and deletes rows.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreResult;

/// Partitions are made for today and this many days ahead: a replica that is down (or a
/// database that refuses DDL) for that long still leaves every mint a partition of its own.
pub const DAYS_AHEAD: u64 = 3;
/// `session_token_mints_pYYYYMMDD`: the records issued on that UTC day.
const DAY_PREFIX: &str = "session_token_mints_p";
/// The table as it was before migration 13, from the beginning of time to its newest record's
/// day: retention deletes its rows, and drops it once it is empty.
const LEGACY: &str = "session_token_mints_legacy";
/// Records whose day has no partition yet; moved into the day's partition when it is made.
const DEFAULT: &str = "session_token_mints_default";
/// One replica at a time changes the partitions (taken for the transaction).
const PARTITION_LOCK: i64 = 7_261_120_200_013;
/// How long a partition change waits for a lock before it gives up until the next round: a
/// DDL statement waiting for its lock holds up every statement queued behind it, mints too.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '200ms'";

/// The second a UUIDv7 token id names: its record was issued within `[start, end)` (the
/// issuer makes the jti from the token's `iat`), so a look-up bounded by it reads one
/// partition. `None` for another version (a v4 jti minted before migration 13): found in every
/// partition's index.
pub(super) fn issued_within(jti: Uuid) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if jti.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (seconds, _) = jti.get_timestamp()?.to_unix();
    let start = DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0)?;
    Some((start, start + chrono::Duration::seconds(1)))
}

pub(super) fn day_partition(day: NaiveDate) -> String {
    format!("{DAY_PREFIX}{}", day.format("%Y%m%d"))
}

fn day_of_partition(name: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(name.strip_prefix(DAY_PREFIX)?, "%Y%m%d").ok()
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

/// Makes the partitions of `today` and the [`DAYS_AHEAD`] days after it that do not exist yet;
/// their names. Safe on any number of replicas at once.
pub(super) async fn create_ahead(pool: &PgPool, today: NaiveDate) -> StoreResult<Vec<String>> {
    let mut created = Vec::new();
    for ahead in 0..=DAYS_AHEAD {
        let Some(day) = today.checked_add_days(Days::new(ahead)) else {
            break;
        };
        if create_day(pool, day).await? {
            created.push(day_partition(day));
        }
    }
    Ok(created)
}

/// Makes `day`'s partition unless it exists (or the legacy partition covers the whole day; the
/// day it ends in starts where it ends); true when it made it. Built beside the table, filled with the day's rows that went to
/// the default partition meanwhile, then attached: the partitioned table is only locked
/// SHARE UPDATE EXCLUSIVE (mints go on), the default partition briefly ACCESS EXCLUSIVE.
async fn create_day(pool: &PgPool, day: NaiveDate) -> StoreResult<bool> {
    let name = day_partition(day);
    let (from, to) = (midnight(day), midnight(day + Days::new(1)));
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
    // The legacy partition (migration 13) takes the rows before its upper bound: the day it
    // ends in starts there.
    let legacy_end: Option<DateTime<Utc>> = sqlx::query_scalar(
        r"SELECT CAST(substring(pg_get_expr(c.relpartbound, c.oid)
                                FROM 'TO \(''([^'']*)''\)') AS timestamptz)
          FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relispartition",
    )
    .bind(LEGACY)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    let from = legacy_end.map_or(from, |end| end.max(from));
    if exists || from >= to {
        tx.rollback().await?;
        return Ok(false);
    }
    // Names are made here from a date, never from input: safe to format into the DDL.
    sqlx::query(&format!(
        "CREATE TABLE {name}
             (LIKE session_token_mints INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    ))
    .execute(&mut *tx)
    .await?;
    // Taken now rather than by ATTACH below: no row enters the default partition between the
    // move and the attach (a mint routed there waits, then retries into the new partition).
    sqlx::query(&format!("LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *tx)
        .await?;
    let moved = sqlx::query(&format!(
        "WITH moved AS (
             DELETE FROM {DEFAULT} WHERE issued_at >= $1 AND issued_at < $2 RETURNING *)
         INSERT INTO {name} SELECT * FROM moved"
    ))
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(&format!(
        "ALTER TABLE session_token_mints ATTACH PARTITION {name}
             FOR VALUES FROM ('{}') TO ('{}')",
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if moved > 0 {
        tracing::info!(
            partition = %name,
            moved,
            "moved mint records from the default partition"
        );
    }
    Ok(true)
}

/// Drops every day partition (and the legacy one once it is empty) none of whose tokens
/// expired at or after `expired_before`; their names. A partition still locked by a statement
/// is left for the next round.
pub(super) async fn drop_expired(
    pool: &PgPool,
    expired_before: DateTime<Utc>,
) -> StoreResult<Vec<String>> {
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(c.relname AS TEXT) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'session_token_mints'::regclass ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = Vec::new();
    for name in partitions {
        // A token expires after it is issued: a day that ends after the cutoff has records
        // that may not have expired before it.
        let candidate = match day_of_partition(&name) {
            Some(day) => midnight(day + Days::new(1)) <= expired_before,
            None => name == LEGACY,
        };
        if !candidate {
            continue;
        }
        match drop_one(pool, &name, expired_before).await {
            Ok(true) => dropped.push(name),
            Ok(false) => {}
            Err(error) if is_lock_timeout(&error) => {
                tracing::info!(partition = %name, "partition busy; dropping it next round");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(dropped)
}

fn is_lock_timeout(error: &super::StoreError) -> bool {
    match error {
        super::StoreError::Database(sqlx::Error::Database(db)) => {
            db.code().as_deref() == Some("55P03")
        }
        _ => false,
    }
}

async fn drop_one(pool: &PgPool, name: &str, expired_before: DateTime<Utc>) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Nothing is written into the partition while it is looked at and dropped; mints into
    // other partitions go on.
    sqlx::query(&format!("LOCK TABLE {name} IN SHARE MODE"))
        .execute(&mut *tx)
        .await?;
    let kept: bool = sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {name} WHERE expires_at >= $1)"
    ))
    .bind(expired_before)
    .fetch_one(&mut *tx)
    .await?;
    let empty_or_day = name != LEGACY
        || !sqlx::query_scalar::<_, bool>(&format!("SELECT EXISTS (SELECT 1 FROM {name})"))
            .fetch_one(&mut *tx)
            .await?;
    if kept || !empty_or_day {
        tx.rollback().await?;
        return Ok(false);
    }
    // ACCESS EXCLUSIVE on the partitioned table, from here to the commit: no scan in between.
    sqlx::query(&format!(
        "ALTER TABLE session_token_mints DETACH PARTITION {name}"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("DROP TABLE {name}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v7_jti_names_the_second_its_record_was_issued_and_a_v4_names_none() {
        let iat = 1_764_680_400_u64; // 2025-12-02T13:00:00Z
        let jti = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, iat, 0));
        let (start, end) = issued_within(jti).expect("a v7 jti names a time");
        assert_eq!(start.timestamp(), 1_764_680_400);
        assert_eq!(end - start, chrono::Duration::seconds(1));
        assert_eq!(issued_within(Uuid::new_v4()), None);
        assert_eq!(issued_within(Uuid::nil()), None);
    }

    #[test]
    fn a_day_partition_is_named_by_its_day_and_read_back() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 2).expect("a date");
        assert_eq!(day_partition(day), "session_token_mints_p20261202");
        assert_eq!(day_of_partition(&day_partition(day)), Some(day));
        assert_eq!(day_of_partition(LEGACY), None);
        assert_eq!(day_of_partition(DEFAULT), None);
    }
}
