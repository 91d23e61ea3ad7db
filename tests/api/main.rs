//! One integration-test binary: the real router on a random port, real HTTP, real PostgreSQL.

mod helpers;

mod auth;
mod cli;
mod hostile;
mod logging;
mod mint;
mod openapi;
