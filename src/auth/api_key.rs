//! API keys `neo_sk_<env>_<secret>`: generated with 190 bits of entropy, stored as SHA-256,
//! found by that hash and compared in constant time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use chrono::Utc;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{invalid, AuthError, Lookups, Principal};
use crate::{
    config::is_valid_key_env,
    freshness::{Freshness, Topic, TtlCache},
    store::{ApiKeyRow, Store},
};

pub const PREFIX: &str = "neo_sk_";
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The `<env>` of a key of the right shape, or `None` when the shape is wrong.
pub fn key_env(raw: &str) -> Option<&str> {
    let rest = raw.strip_prefix(PREFIX)?;
    let (env, secret) = rest.split_once('_')?;
    let secret_ok =
        (16..=128).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (is_valid_key_env(env) && secret_ok).then_some(env)
}

pub fn hash(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// The operating system's random number generator failed: no key can be made.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

fn random_alphanumeric(len: usize) -> Result<String, RandomError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| RandomError)?;
        // Rejection sampling keeps the characters uniform: 62 * 4 = 248.
        out.extend(
            buf.iter()
                .filter(|b| **b < 248)
                .map(|b| ALPHABET[usize::from(*b % 62)] as char)
                .take(len - out.len()),
        );
    }
    Ok(out)
}

/// A new key for `env`, e.g. `neo_sk_live_<32 alphanumerics>`.
pub fn generate(env: &str) -> Result<String, RandomError> {
    Ok(format!(
        "{PREFIX}{env}_{}",
        random_alphanumeric(SECRET_LEN)?
    ))
}

/// A new non-secret key id, for listings and logs.
pub fn generate_id() -> Result<String, RandomError> {
    Ok(format!("key_{}", random_alphanumeric(12)?.to_lowercase()))
}

pub struct ApiKeyVerifier {
    store: Arc<Store>,
    env: String,
    last_used: LastUsed,
    /// Keys found by hash. Only keys that exist go in (made-up keys cannot grow it), so it is
    /// bounded by the number of keys in the database.
    cache: TtlCache<[u8; 32], Arc<ApiKeyRow>>,
}

impl ApiKeyVerifier {
    pub fn new(
        store: Arc<Store>,
        env: String,
        last_used_resolution: Duration,
        cache_ttl: Duration,
        freshness: Arc<Freshness>,
    ) -> Self {
        Self {
            store,
            env,
            last_used: LastUsed::new(last_used_resolution),
            // A key row carries its tenant's platform flag: a tenant change counts too.
            cache: TtlCache::new(cache_ttl, freshness, &[Topic::ApiKeys, Topic::Tenants]),
        }
    }

    /// The key row for `digest`: from the cache while it is exact, else from the store.
    async fn find(
        &self,
        digest: &[u8; 32],
        lookups: Lookups<'_>,
    ) -> Result<Option<Arc<ApiKeyRow>>, AuthError> {
        if let Some(row) = self.cache.get(digest) {
            return Ok(Some(row));
        }
        let ticket = self.cache.ticket();
        let row = lookups
            .run(self.store.find_api_key_by_hash(digest))
            .await?
            .map(Arc::new);
        if let Some(row) = &row {
            self.cache.insert(ticket, *digest, Arc::clone(row));
        }
        Ok(row)
    }

    pub async fn verify(&self, raw: &str, lookups: Lookups<'_>) -> Result<Principal, AuthError> {
        let row = self.find_valid(raw, lookups).await?;
        Ok(self.principal(&row))
    }

    /// An API key presented as OAuth client credentials: `client_id` must be the key's id
    /// (compared in constant time), `raw` the key.
    pub async fn verify_client(
        &self,
        client_id: &str,
        raw: &str,
        lookups: Lookups<'_>,
    ) -> Result<Principal, AuthError> {
        let row = self.find_valid(raw, lookups).await?;
        if !bool::from(row.id.as_bytes().ct_eq(client_id.as_bytes())) {
            return Err(invalid("client id is not the API key's id"));
        }
        Ok(self.principal(&row))
    }

    /// The row of a key that exists, is of this environment and is not revoked.
    async fn find_valid(
        &self,
        raw: &str,
        lookups: Lookups<'_>,
    ) -> Result<Arc<ApiKeyRow>, AuthError> {
        let Some(env) = key_env(raw) else {
            return Err(invalid("malformed API key"));
        };
        if env != self.env {
            return Err(invalid("API key of another environment"));
        }
        let digest = hash(raw);
        let Some(row) = self.find(&digest, lookups).await? else {
            return Err(invalid("unknown API key"));
        };
        if !bool::from(row.key_hash.as_slice().ct_eq(&digest)) {
            return Err(invalid("unknown API key"));
        }
        if row.revoked_at.is_some() {
            // The key's id and tenant (never the key), so an operator can tell whose
            // integration still sends a revoked key.
            return Err(invalid(format!(
                "revoked API key {} of tenant {}",
                row.id, row.tenant_id
            )));
        }
        Ok(row)
    }

    /// The caller a valid key's row makes (noting its use).
    fn principal(&self, row: &ApiKeyRow) -> Principal {
        if self.last_used.due(&row.id) {
            let store = Arc::clone(&self.store);
            let key_id = row.id.clone();
            tokio::spawn(async move {
                if let Err(error) = store.touch_api_key(&key_id, Utc::now()).await {
                    tracing::warn!(key_id, %error, "could not record last_used_at");
                }
            });
        }
        Principal::ApiKey {
            tenant_id: row.tenant_id.clone(),
            key_id: row.id.clone(),
            platform: row.tenant_platform,
            scopes: row.scopes(),
        }
    }
}

/// Writes `last_used_at` at most once per key per `resolution`, so a busy key costs no write
/// per request. Holds one entry per key that authenticated: bounded by the keys that exist.
struct LastUsed {
    resolution: Duration,
    written: Mutex<HashMap<String, Instant>>,
}

impl LastUsed {
    fn new(resolution: Duration) -> Self {
        Self {
            resolution,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn due(&self, key_id: &str) -> bool {
        let now = Instant::now();
        let mut written = match self.written.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match written.get_mut(key_id) {
            Some(at) if now.duration_since(*at) < self.resolution => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                written.insert(key_id.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_keys() {
        assert_eq!(
            key_env("neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd"),
            Some("test")
        );
        assert_eq!(
            key_env("neo_sk_live_4qZt8WcJr2LmX9vB7nKp3sYd"),
            Some("live")
        );
        assert_eq!(key_env("neo_sk_test_short"), None);
        assert_eq!(key_env("neo_sk_Test_4qZt8WcJr2LmX9vB7nKp3sYd"), None);
        assert_eq!(key_env("neo_sk_test_4qZt8WcJr2LmX9vB7nKp3s-d"), None);
        assert_eq!(key_env("neo_pk_test_4qZt8WcJr2LmX9vB7nKp3sYd"), None);
        assert_eq!(key_env("neo_sk__4qZt8WcJr2LmX9vB7nKp3sYd"), None);
    }

    #[test]
    fn generated_keys_have_the_shape_and_differ() {
        let a = generate("live").unwrap();
        let b = generate("live").unwrap();
        assert_ne!(a, b);
        assert_eq!(key_env(&a), Some("live"));
        assert_eq!(a.len(), PREFIX.len() + "live_".len() + SECRET_LEN);
    }

    #[test]
    fn last_used_is_written_once_per_resolution() {
        let last_used = LastUsed::new(Duration::from_secs(60));
        assert!(last_used.due("k1"));
        assert!(!last_used.due("k1"));
        assert!(last_used.due("k2"));
        let immediate = LastUsed::new(Duration::ZERO);
        assert!(immediate.due("k1"));
        assert!(immediate.due("k1"));
    }
}
