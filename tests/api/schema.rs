//! The two backends' migrations are kept in step: same versions, same tables, same columns.

use std::collections::BTreeSet;

use crate::support::{Backend, TestDatabase};

async fn versions(db: &TestDatabase) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn columns(db: &TestDatabase) -> BTreeSet<(String, String)> {
    let sql = match db.backend {
        Backend::Postgres => {
            // A partition's columns are its table's (the mint records' day partitions).
            "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'
               AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)"
        }
        Backend::Sqlite => {
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'
               -- The embedded form of the change notifications: PostgreSQL uses NOTIFY.
               AND m.name <> 'cache_changes'
               -- The embedded form of the revocation sequence: PostgreSQL uses transaction ids.
               AND m.name <> 'revocation_counter'"
        }
    };
    sqlx::query_as::<_, (String, String)>(sql)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn postgres_and_sqlite_migrations_define_the_same_schema() {
    let (postgres, sqlite) = (
        TestDatabase::seeded(Backend::Postgres).await,
        TestDatabase::seeded(Backend::Sqlite).await,
    );

    let (pg_versions, sqlite_versions) = (versions(&postgres).await, versions(&sqlite).await);
    assert!(!pg_versions.is_empty());
    assert_eq!(pg_versions, sqlite_versions, "migration versions differ");

    let (pg_columns, sqlite_columns) = (columns(&postgres).await, columns(&sqlite).await);
    assert!(pg_columns.contains(&("session_token_mints".to_owned(), "jti".to_owned())));
    assert_eq!(pg_columns, sqlite_columns, "tables or columns differ");

    // The same fixture lands as the same rows.
    for table in [
        "tenants",
        "end_companies",
        "agents",
        "chat_sessions",
        "api_keys",
    ] {
        assert_eq!(
            postgres.count(table).await,
            sqlite.count(table).await,
            "{table}"
        );
    }
}
