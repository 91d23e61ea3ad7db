//! TLS set-up shared by every HTTPS client of the crate (Entra's JWKS, Redis over TLS, the
//! verification module).

use std::sync::OnceLock;

/// rustls needs a process-wide crypto provider; ours is aws-lc-rs, which jsonwebtoken uses too.
/// Without one, building any rustls client panics.
pub fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Fails only when a provider is installed already, which is just as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
