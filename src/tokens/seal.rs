//! Private keys at rest: AES-256-GCM under the key-encryption key (KEK), a fresh 96-bit nonce per
//! seal, and the key's `kid` as associated data, so a sealed key cannot be passed off as another.
//! Sealed form: `nonce (12 bytes) || ciphertext || tag (16 bytes)`.
//!
//! Also the [`ClaimsMac`]: an HMAC-SHA256 key derived from the KEK (or, with a static signing
//! key file, from that key) that authenticates what the service keeps in the database and would
//! sign again: the claims of an `Idempotency-Key` replay. Whoever can write the database but
//! holds neither secret cannot make the service sign claims of their choosing.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN},
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use base64::{engine::general_purpose::STANDARD, Engine};
use secrecy::ExposeSecret;

use crate::config::SigningConfig;

/// The file a KEK is generated into when none is configured.
pub const GENERATED_KEK_FILE: &str = "key-encryption-key";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the key-encryption key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the key-encryption key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key-encryption key from {source_name} is not 32 bytes (raw) or their base64")]
    BadKek { source_name: String },
    #[error("the system random number generator failed")]
    Random,
    #[error("signing key {kid} cannot be decrypted with the configured key-encryption key (a different NEO_KEY_ENCRYPTION_KEY than the one it was sealed with?)")]
    Open { kid: String },
    #[error("sealing a signing key failed")]
    Seal,
}

/// The key-encryption key. Never printed.
pub struct Kek {
    key: LessSafeKey,
    /// Derived from the KEK when it is loaded.
    claims_mac: ClaimsMac,
    /// Where it came from, for messages (a variable name or a path; never the key).
    pub source: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Kek {
    fn from_bytes(bytes: &[u8], source: String) -> Result<Self, SealError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::BadKek {
            source_name: source.clone(),
        })?;
        Ok(Self {
            key: LessSafeKey::new(key),
            claims_mac: ClaimsMac::derive(bytes),
            source,
        })
    }

    /// The MAC key of stored claims, derived from this KEK (so every replica sharing the KEK
    /// shares it).
    pub fn claims_mac(&self) -> ClaimsMac {
        self.claims_mac.clone()
    }

    /// 32 raw bytes, or their base64 (whitespace around it ignored).
    fn parse(material: &[u8], source: String) -> Result<Self, SealError> {
        if material.len() == 32 {
            return Self::from_bytes(material, source);
        }
        let text = String::from_utf8_lossy(material);
        let decoded = STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadKek {
                source_name: source.clone(),
            })?;
        if decoded.len() != 32 {
            return Err(SealError::BadKek {
                source_name: source,
            });
        }
        Self::from_bytes(&decoded, source)
    }

    /// The configured KEK (`signing.key_encryption_key`, else `signing.key_encryption_key_file`;
    /// config validation refuses both set to different keys), if any.
    pub fn configured(config: &SigningConfig) -> Result<Option<Self>, SealError> {
        if let Some(key) = &config.key_encryption_key {
            return Self::parse(
                key.expose_secret().as_bytes(),
                "NEO_KEY_ENCRYPTION_KEY (signing.key_encryption_key)".to_owned(),
            )
            .map(Some);
        }
        if let Some(path) = &config.key_encryption_key_file {
            return Self::from_file(path).map(Some);
        }
        Ok(None)
    }

    /// Where a KEK is generated when none is configured (embedded database only).
    pub fn generated_path(data_dir: &Path) -> PathBuf {
        data_dir.join(GENERATED_KEK_FILE)
    }

    /// The configured KEK, else the one generated earlier in `data_dir`, else a new one
    /// generated there (mode 0600). Only for a database no other host shares: replicas sharing
    /// one need the same KEK, which a generated one is not.
    pub fn load_or_generate(config: &SigningConfig, data_dir: &Path) -> Result<Self, SealError> {
        if let Some(kek) = Self::configured(config)? {
            return Ok(kek);
        }
        let path = Self::generated_path(data_dir);
        if path.exists() {
            return Self::from_file(&path);
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        super::keys::write_private_file(&path, &STANDARD.encode(bytes)).map_err(|source| {
            SealError::Write {
                path: path.clone(),
                source,
            }
        })?;
        // Expected on a first start (a demo, one machine): said once, with what it is and what
        // production needs, rather than as a warning nothing explains.
        tracing::info!(
            path = %path.display(),
            "generated a key-encryption key (KEK: the secret that encrypts the signing keys kept in the database) in the data directory; fine on one machine with the embedded database; in production give every replica the same KEK from a secret (NEO_KEY_ENCRYPTION_KEY or NEO_KEY_ENCRYPTION_KEY_FILE, see docs/operating.md)"
        );
        Self::from_bytes(&bytes, path.display().to_string())
    }

    fn from_file(path: &Path) -> Result<Self, SealError> {
        let material = fs::read(path).map_err(|source| SealError::Read {
            path: path.to_owned(),
            source,
        })?;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key-encryption key file is readable by group or others; chmod 600 it");
            }
        }
        Self::parse(&material, path.display().to_string())
    }

    /// A generated KEK held in memory only (tests, benchmarks).
    pub fn ephemeral() -> Result<Self, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Self::from_bytes(&bytes, "an ephemeral key".to_owned())
    }

    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| SealError::Seal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let failed = || SealError::Open {
            kid: kid.to_owned(),
        };
        if sealed.len() < NONCE_LEN {
            return Err(failed());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut in_out)
            .map_err(|_| failed())?;
        Ok(plaintext.to_vec())
    }
}

/// What the MAC key is derived for: another label would give another, unrelated key.
const CLAIMS_MAC_LABEL: &[u8] = b"neo-sessions/v1/idempotency-claims-mac";

/// An HMAC-SHA256 key for claims kept in the database, derived from a secret the database does
/// not hold. Never printed.
#[derive(Clone)]
pub struct ClaimsMac {
    key: hmac::Key,
}

impl std::fmt::Debug for ClaimsMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimsMac").finish_non_exhaustive()
    }
}

impl ClaimsMac {
    /// The key derived from `secret` (the KEK's 32 bytes, or a static signing key's PKCS#8):
    /// HMAC-SHA256(secret, label), a one-block KDF (NIST SP 800-108), so it reveals nothing of
    /// the secret and is not the secret itself.
    pub fn derive(secret: &[u8]) -> Self {
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), CLAIMS_MAC_LABEL);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The MAC of `parts`, each length-prefixed, so no two different lists of parts read alike.
    pub fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.key);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        context.sign().as_ref().to_vec()
    }

    /// Whether `tag` is the MAC of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let expected = self.sign(parts);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_kek_and_kid() {
        let kek = Kek::ephemeral().unwrap();
        let sealed = kek.seal("kid-1", b"private key").unwrap();
        assert_eq!(kek.open("kid-1", &sealed).unwrap(), b"private key");
        assert!(kek.open("kid-2", &sealed).is_err(), "bound to its kid");
        let other = Kek::ephemeral().unwrap();
        let error = other.open("kid-1", &sealed).unwrap_err();
        assert!(error.to_string().contains("kid-1"), "{error}");
        assert_ne!(
            kek.seal("kid-1", b"private key").unwrap(),
            sealed,
            "a fresh nonce per seal"
        );
    }

    #[test]
    fn claims_macs_verify_only_what_was_signed_under_their_kek() {
        let kek = Kek::ephemeral().unwrap();
        let mac = kek.claims_mac();
        let tag = mac.sign(&[b"principal", b"key", b"claims"]);
        assert!(mac.verify(&[b"principal", b"key", b"claims"], &tag));
        assert!(!mac.verify(&[b"principal", b"key", b"claimz"], &tag));
        // Length prefixes: moving bytes between parts changes the MAC.
        assert!(!mac.verify(&[b"principalk", b"ey", b"claims"], &tag));
        assert!(!mac.verify(&[b"principal", b"key", b"claims"], &tag[..31]));
        assert!(!mac.verify(&[b"principal", b"key", b"claims"], b""));
        let other = Kek::ephemeral().unwrap().claims_mac();
        assert!(!other.verify(&[b"principal", b"key", b"claims"], &tag));
        assert_eq!(
            ClaimsMac::derive(b"same secret").sign(&[b"x"]),
            ClaimsMac::derive(b"same secret").sign(&[b"x"]),
            "replicas sharing a secret share the key"
        );
    }

    #[test]
    fn a_generated_kek_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = SigningConfig::default();
        let first = Kek::load_or_generate(&config, &data).unwrap();
        let sealed = first.seal("k", b"x").unwrap();
        let again = Kek::load_or_generate(&config, &data).unwrap();
        assert_eq!(again.open("k", &sealed).unwrap(), b"x");
        let mode = fs::metadata(data.join(GENERATED_KEK_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
