//! One integration-test binary: the real router on a random port, real HTTP, real PostgreSQL.

mod helpers;

mod auth;
mod mint;
mod openapi;
