//! One integration-test binary: the real router on a random port, real HTTP, real PostgreSQL.

/// Runs each listed `async fn name(backend: Backend)` once per database backend, as the tests
/// `name::postgres` and `name::sqlite`: one suite, parametrised, for behaviour that must not differ.
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn postgres() {
                    super::$name(crate::support::Backend::Postgres).await
                }

                #[tokio::test]
                async fn sqlite() {
                    super::$name(crate::support::Backend::Sqlite).await
                }
            }
        )+
    };
}

mod support;

mod auth;
mod cli;
mod connections;
mod data_dir;
mod demo;
mod directory;
mod directory_import;
mod docs_page;
mod entra;
mod faults;
mod hostile;
mod idempotency;
mod invalidation;
mod logging;
mod metrics;
mod mint;
mod oauth;
mod openapi;
mod operator;
mod partitions;
mod rate_limit;
mod retention;
mod schema;
mod scopes;
mod session_cache;
mod signing_keys;
mod store;
mod tokens;
mod traces;
mod verify;
