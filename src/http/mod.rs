//! The HTTP surface: one file per endpoint group, plus the envelope, the error type and the
//! request-context middleware.

pub mod envelope;
pub mod error;
pub mod extract;
pub mod health;
pub mod jwks;
pub mod middleware;
pub mod openapi;
pub mod rate_limit;
pub mod sessions;
