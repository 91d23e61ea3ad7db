//! TLS set-up shared by every HTTPS client of the process (Entra's JWKS, Redis over TLS, the
//! verifier crate): the verifier crate owns the crypto provider, since its clients need it too.

pub use neo_sessions_verify::install_crypto_provider;
