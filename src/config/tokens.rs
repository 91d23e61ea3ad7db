//! `[token]` and `[signing]`: what minted tokens say, and the keys that sign them.

use std::{
    num::{NonZeroU32, NonZeroU64},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub default_ttl: u32,
    pub min_ttl: NonZeroU32,
    pub max_ttl: u32,
    /// The scope claim of minted tokens: what an end user may do, never mint or revoke.
    pub scope: String,
    /// Clock skew tolerated on `exp`/`nbf` when our tokens are verified (here, and by the
    /// published verification module); a retired key stays published this much longer.
    pub leeway_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    ES256,
    EdDSA,
    RS256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }
}

/// Signing keys: in the database (encrypted under the key-encryption key) with a life cycle, or
/// one static PEM file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// PKCS#8 PEM private key. When set, it is the only key (no rotation, nothing in the database).
    pub key_file: Option<PathBuf>,
    /// The algorithm of keys generated here (and of a key file).
    pub algorithm: SigningAlgorithm,
    /// Base64 of 32 bytes: the AES-256-GCM key that seals private keys in the database. Every
    /// replica needs the same one. Without it (nor a file), one is generated in the data directory
    /// on the embedded SQLite database only; on PostgreSQL one of the two is required.
    pub key_encryption_key: Option<Secret>,
    /// A file holding the key-encryption key (base64 text, or 32 raw bytes).
    pub key_encryption_key_file: Option<PathBuf>,
    /// Rotate automatically when the active key is this many days old; 0 = only by command.
    pub rotate_days: u32,
    /// A new key is published this long before it signs: longer than the JWKS `max-age`, so every
    /// verifier has it before it meets a token it signed.
    pub lead_seconds: u64,
    /// How often each replica reloads the keys from the database.
    pub reload_seconds: NonZeroU64,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age_seconds: u64,
}
