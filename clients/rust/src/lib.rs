//! Verifying neo-sessions session tokens in another service (the chat service), offline, against
//! the token service's published JWKS: what a verifier must check, in one place. The token
//! service uses the same claims, rules, feed types and key-set cache.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), neo_sessions_verify::VerifyError> {
//! use neo_sessions_verify::{Verifier, VerifierConfig};
//! let verifier = Verifier::new(VerifierConfig::for_issuer(
//!     "https://api.neoagent.io",
//!     "https://api.neoagent.io/chat",
//! ))?;
//! // On `/chat/sessions/{id}/*`: the token must be for that session.
//! let claims = verifier.verify(token, "s-acme-1").await?;
//! # Ok(()) }
//! ```
//!
//! The checks, in order: the header's `typ` is ours; its `kid` is a published key (the JWKS is
//! cached as long as its `max-age` says, refetched for an unknown `kid` at most once per
//! cool-down (30 s); past its `max-age` its keys still answer at once while one background
//! refresh runs, for at most [`VerifierConfig::jwks_stale_for`] (1 h), then tokens are refused
//! with [`VerifyError::JwksUnavailable`]; failed fetches back off from 1 s to 60 s, jittered);
//! its `alg` is that key's own algorithm (never `none`, never one the header chooses); the
//! signature; `iss` and `aud` exactly; `exp` and `nbf` with a small leeway; the `session_id`
//! claim equals the session of the request path; and, with a revocation feed configured, that
//! the token's `jti` has not been revoked.
//!
//! Revocations: [`VerifierConfig::with_revocation_feed`] names an API key allowed to read
//! `GET /public-api/sessions/revocations` (a tenant's key sees its tenant's tokens, the platform
//! key every tenant's). [`Verifier::spawn_revocation_polling`] then polls it every `interval` and
//! keeps the revoked jtis in memory until their tokens expire, so a revoked token is refused at
//! most one interval (plus a request) after its revocation. While the feed cannot be reached the
//! deny-list held is kept and still applied; [`Verifier::revocations_age`] says how old it is.
//!
//! HTTPS uses rustls on aws-lc-rs: [`Verifier::new`] installs that crypto provider for the
//! process ([`install_crypto_provider`]) if none is installed yet.

mod claims;
pub mod feed;
pub mod jwks;
#[cfg(test)]
mod testing;
mod tls;
mod verifier;

pub use claims::{SessionClaims, TokenRules, SESSION_TOKEN_TYP};
pub use feed::{RevocationFeed, RevokedToken};
pub use tls::install_crypto_provider;
pub use verifier::{RevocationFeedConfig, Verifier, VerifierConfig, VerifyError};
