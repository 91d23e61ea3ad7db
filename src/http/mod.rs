//! The HTTP surface: one file per endpoint group, plus the envelope, the error type, the
//! extractors and the middleware (request context, bearer authentication, rate limit).

pub mod authenticate;
pub mod directory;
pub mod docs;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod health;
pub mod jwks;
pub mod oauth;
pub mod openapi;
pub mod prometheus;
pub mod rate_limit;
pub mod request_context;
pub mod sessions;
pub mod tokens;

use std::sync::Arc;

/// The path of the RFC 7662 introspection endpoint ([`oauth`]), as the discovery document
/// advertises it. Outside `/public-api/`, whose answers are enveloped: this one answers as
/// RFC 7662 says, its errors included (see [`request_context`]).
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";

use crate::{
    auth::Authenticator, config::Config, freshness::Freshness, metrics::Metrics, mint::Minter,
    ratelimit::RateLimits, store::Store, tokens::TokenIssuer,
};

/// What handlers and middleware read, shared behind one `Arc` (`app.rs` builds it).
pub struct AppState {
    pub config: Config,
    /// The base of the URLs the discovery document gives when they are not taken from the
    /// request: `server.public_url`, else the token issuer (`serve --demo`: its own address).
    pub public_url: String,
    pub store: Arc<Store>,
    /// The mint rules, with the session cache, recorder and idempotency claims they use.
    pub minter: Minter,
    pub issuer: Arc<TokenIssuer>,
    pub authenticator: Authenticator,
    pub limits: RateLimits,
    pub readiness: health::ReadinessCache,
    pub metrics: Arc<Metrics>,
    /// Whether the caches' change feed is live, and what changed.
    pub freshness: Arc<Freshness>,
}
