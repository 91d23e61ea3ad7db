//! The TLS set-up every HTTPS client in the process shares (this crate's JWKS and feed reads; in
//! the token service also Entra's JWKS and Redis over TLS).

use std::sync::OnceLock;

/// rustls needs a process-wide crypto provider; ours is aws-lc-rs, which jsonwebtoken uses too.
/// Without one, building any rustls client panics. [`crate::Verifier::new`] calls it; a process
/// that builds other rustls clients first may call it itself (it is idempotent).
pub fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Fails only when a provider is installed already, which is just as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
