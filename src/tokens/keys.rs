//! The signing key: parsed once at start, used for every mint, published as a JWK.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
        ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
    },
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::config::{SigningAlgorithm, SigningConfig};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write signing key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key {path} is not a PKCS#8 PEM private key for {algorithm}: {reason}")]
    Parse {
        path: PathBuf,
        algorithm: &'static str,
        reason: String,
    },
    #[error("cannot generate a {0} signing key")]
    Generate(&'static str),
    #[error("a stored {algorithm} signing key {kid} is not a valid PKCS#8 key: {reason}")]
    Stored {
        kid: String,
        algorithm: &'static str,
        reason: String,
    },
    #[error("signing failed")]
    Sign,
    #[error("no signing key is active")]
    NoActiveKey,
}

/// One public key in the JWKS (RFC 7517). Fields that do not apply to the key type are omitted.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicJwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

pub struct SigningKey {
    algorithm: SigningAlgorithm,
    pair: Pair,
    jwk: PublicJwk,
    decoding_key: DecodingKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key from `signing.key_file`, or the one generated earlier in `data_dir`, or a new one
    /// generated there now (mode 0600).
    pub fn load_or_generate(config: &SigningConfig, data_dir: &Path) -> Result<Self, KeyError> {
        let algorithm = config.algorithm;
        if let Some(path) = &config.key_file {
            return Self::from_file(path, algorithm);
        }
        let path = Self::legacy_generated_path(data_dir, algorithm);
        if path.exists() {
            return Self::from_file(&path, algorithm);
        }
        let pkcs8 = generate_pkcs8(algorithm)?;
        write_private_file(
            &path,
            &pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.clone())),
        )
        .map_err(|source| KeyError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), algorithm = algorithm.as_str(), "generated a new signing key");
        Self::from_pkcs8(&pkcs8, algorithm).map_err(|reason| KeyError::Parse {
            path,
            algorithm: algorithm.as_str(),
            reason,
        })
    }

    pub fn from_file(path: &Path, algorithm: SigningAlgorithm) -> Result<Self, KeyError> {
        let text = fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "signing key file is readable by group or others; chmod 600 it");
            }
        }
        let parse_error = |reason: String| KeyError::Parse {
            path: path.to_owned(),
            algorithm: algorithm.as_str(),
            reason,
        };
        let block = pem::parse(&text).map_err(|e| parse_error(e.to_string()))?;
        match (block.tag(), algorithm) {
            ("PRIVATE KEY", _) => Self::from_pkcs8(block.contents(), algorithm),
            // `openssl ecparam -genkey` writes SEC1; accept it for ES256 too.
            ("EC PRIVATE KEY", SigningAlgorithm::ES256) => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                block.contents(),
            )
            .map_err(|e| e.to_string())
            .and_then(|pair| Self::from_pair(algorithm, Pair::Ec(pair))),
            (tag, _) => Err(format!("unexpected PEM block \"{tag}\"")),
        }
        .map_err(parse_error)
    }

    /// A new key of `algorithm`, and its PKCS#8 DER (to be sealed and stored).
    pub fn generate(algorithm: SigningAlgorithm) -> Result<(Self, Vec<u8>), KeyError> {
        let pkcs8 = generate_pkcs8(algorithm)?;
        let key = Self::from_pkcs8(&pkcs8, algorithm).map_err(|reason| KeyError::Stored {
            kid: String::new(),
            algorithm: algorithm.as_str(),
            reason,
        })?;
        Ok((key, pkcs8))
    }

    /// A key stored as PKCS#8 DER; `kid` names it in errors.
    pub fn from_stored(
        der: &[u8],
        algorithm: SigningAlgorithm,
        kid: &str,
    ) -> Result<Self, KeyError> {
        Self::from_pkcs8(der, algorithm).map_err(|reason| KeyError::Stored {
            kid: kid.to_owned(),
            algorithm: algorithm.as_str(),
            reason,
        })
    }

    /// The private key as PKCS#8 DER, to seal it into the database (`signing-key import`).
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::Generate(self.algorithm.as_str());
        Ok(match &self.pair {
            Pair::Ec(pair) => pair.to_pkcs8v1().map_err(failed)?.as_ref().to_vec(),
            Pair::Ed(pair) => pair.to_pkcs8().map_err(failed)?.as_ref().to_vec(),
            Pair::Rsa(pair) => AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(pair)
                .map_err(failed)?
                .as_ref()
                .to_vec(),
        })
    }

    /// The file an earlier version generated in the data directory (imported into the database
    /// on first start, so the tokens it signed keep verifying).
    pub fn legacy_generated_path(data_dir: &Path, algorithm: SigningAlgorithm) -> PathBuf {
        data_dir.join(format!(
            "signing-key-{}.pem",
            algorithm.as_str().to_lowercase()
        ))
    }

    fn from_pkcs8(der: &[u8], algorithm: SigningAlgorithm) -> Result<Self, String> {
        let pair = match algorithm {
            SigningAlgorithm::ES256 => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map(Pair::Ec)
            }
            SigningAlgorithm::EdDSA => Ed25519KeyPair::from_pkcs8(der).map(Pair::Ed),
            SigningAlgorithm::RS256 => RsaKeyPair::from_pkcs8(der).map(Pair::Rsa),
        }
        .map_err(|e| e.to_string())?;
        Self::from_pair(algorithm, pair)
    }

    fn from_pair(algorithm: SigningAlgorithm, pair: Pair) -> Result<Self, String> {
        let alg = algorithm.as_str();
        let mut jwk = PublicJwk {
            kty: "",
            use_: "sig",
            alg,
            kid: String::new(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        };
        let (thumbprint_input, decoding_key) = match &pair {
            Pair::Ec(pair) => {
                let point = pair.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
                if point.len() != 65 || point[0] != 4 {
                    return Err("unexpected P-256 public key encoding".to_owned());
                }
                let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
                let y = URL_SAFE_NO_PAD.encode(&point[33..]);
                let input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                let key = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
                (jwk.kty, jwk.crv, jwk.x, jwk.y) = ("EC", Some("P-256"), Some(x), Some(y));
                (input, key)
            }
            Pair::Ed(pair) => {
                let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                let input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
                let key = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
                (jwk.kty, jwk.crv, jwk.x) = ("OKP", Some("Ed25519"), Some(x));
                (input, key)
            }
            Pair::Rsa(pair) => {
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let n = URL_SAFE_NO_PAD.encode(&components.n);
                let e = URL_SAFE_NO_PAD.encode(&components.e);
                let input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
                let key = DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?;
                (jwk.kty, jwk.n, jwk.e) = ("RSA", Some(n), Some(e));
                (input, key)
            }
        };
        // RFC 7638 thumbprint: stable for the key, different for every other key.
        jwk.kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint_input.as_bytes()));
        Ok(Self {
            algorithm,
            pair,
            jwk,
            decoding_key,
            rng: SystemRandom::new(),
        })
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    pub fn jwt_algorithm(&self) -> Algorithm {
        match self.algorithm {
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
            SigningAlgorithm::RS256 => Algorithm::RS256,
        }
    }

    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    pub fn public_jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding_key
    }

    /// Signs `message` (the JWS signing input) and returns the raw signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ec(pair) => pair
                .sign(&self.rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Pair::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }
}

fn generate_pkcs8(algorithm: SigningAlgorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    let failed = |_| KeyError::Generate(algorithm.as_str());
    Ok(match algorithm {
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(failed)?
                .as_ref()
                .to_vec()
        }
        SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        SigningAlgorithm::RS256 => {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(failed)?;
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(failed)?
                .as_ref()
                .to_vec()
        }
    })
}

/// Creates `path` (and its directory, mode 0700) with mode 0600; never overwrites. For the
/// private files of this module and of `seal`.
pub(crate) fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_kept_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
            let config = SigningConfig {
                key_file: None,
                algorithm,
                ..SigningConfig::default()
            };
            let first = SigningKey::load_or_generate(&config, &data).unwrap();
            let again = SigningKey::load_or_generate(&config, &data).unwrap();
            assert_eq!(first.kid(), again.kid(), "the kept key is reused");
            let path = data.join(format!(
                "signing-key-{}.pem",
                algorithm.as_str().to_lowercase()
            ));
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_key_of_another_algorithm_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs8 = generate_pkcs8(SigningAlgorithm::EdDSA).unwrap();
        let path = dir.path().join("k.pem");
        fs::write(&path, pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8))).unwrap();
        let err = SigningKey::from_file(&path, SigningAlgorithm::ES256).unwrap_err();
        assert!(err.to_string().contains("k.pem"), "{err}");
    }
}
