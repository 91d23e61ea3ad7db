//! `[api_key]`, `[entra]` and `[rate_limit]`: who may call, and how often.

use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The `<env>` accepted in `neo_sk_<env>_<secret>`.
    pub env: String,
    /// `last_used_at` is written at most once per key per this many seconds.
    pub last_used_resolution_seconds: u64,
    /// A key looked up by its hash is reused for at most this long. Revocation does not wait
    /// for it: a change notification drops the key from every replica's cache at once; this is
    /// the bound for a notification connection that died unnoticed. 0 looks every request up.
    pub cache_seconds: u64,
}

/// The one definition of a valid API-key `<env>` (in `neo_sk_<env>_<secret>`): 1 to 16 lowercase
/// letters or digits. The configured env and every presented key are held to it.
pub fn is_valid_key_env(env: &str) -> bool {
    !env.is_empty()
        && env.len() <= 16
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Microsoft Entra ID login for dashboard users; off while `audience` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    pub jwks_url: String,
    /// Accepted `aud` values, comma-separated (the API's client-id GUID and its `api://` URI).
    pub audience: Option<String>,
    /// When set, must be one of the space-separated `scp` entries.
    pub required_scope: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Background refresh of the key set.
    pub refresh_seconds: NonZeroU64,
    /// Keys not refreshed for this long are no longer trusted.
    pub key_max_age_seconds: u64,
    /// At most one refetch per this many seconds for tokens with an unknown `kid`.
    pub kid_cooldown_seconds: u64,
    /// While no keys are held (e.g. the JWKS was unreachable at start), at most one fetch per
    /// this many seconds on demand.
    pub retry_seconds: u64,
    pub http_timeout_seconds: NonZeroU64,
    /// Tokens whose signature and claims were verified, remembered (by SHA-256 of the whole
    /// token) until they expire, so a caller repeating its token is not RSA-verified each time;
    /// 0 verifies every request.
    pub token_cache_entries: usize,
}

impl EntraConfig {
    /// The accepted audiences; empty when Entra login is off.
    pub fn audiences(&self) -> Vec<String> {
        self.audience
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn enabled(&self) -> bool {
        !self.audiences().is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Per principal (API key, Entra user): sustained rate and burst.
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
    /// Failed authentications per client IP.
    pub auth_failure_per_minute: NonZeroU32,
    pub auth_failure_burst: NonZeroU32,
    /// Shared buckets for several replicas; in-memory buckets when unset or unreachable.
    pub redis_url: Option<Secret>,
    /// Prefix of the Redis keys (one per deployment sharing a Redis).
    pub redis_prefix: String,
    /// A Redis call slower than this counts as a failure (the request uses memory instead).
    pub redis_timeout_ms: u64,
    /// How long a per-tenant override read from the database is reused.
    pub override_cache_seconds: u64,
}
