//! neo-sessions: mints short-lived JWTs bound to one chat session. `app::App` builds and runs
//! the service; `cli` is the command line around it.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
pub mod freshness;
pub mod http;
pub mod metrics;
pub mod mint;
pub mod ratelimit;
pub mod seed;
pub mod server;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tokens;
