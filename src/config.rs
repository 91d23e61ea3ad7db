//! Typed configuration: built-in defaults < config file < `NEO_*` environment variables.
//! Secrets are wrapped so that `Debug` and logs never show them.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use figment::{
    providers::{Format, Toml},
    value::Value,
    Figment,
};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// The file read when `--config` is not given and the file exists (relative to the working directory).
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// Environment variables and the config keys they set. `DATABASE_URL` comes first so that
/// `NEO_DATABASE_URL` wins when both are set.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("NEO_DATABASE_URL", "database.url"),
    ("NEO_DATABASE_MAX_CONNECTIONS", "database.max_connections"),
    ("NEO_DATA_DIR", "data.dir"),
    ("NEO_LISTEN", "server.listen"),
    ("NEO_MIGRATE_ON_START", "server.migrate_on_start"),
    (
        "NEO_REQUEST_TIMEOUT_SECONDS",
        "server.request_timeout_seconds",
    ),
    ("NEO_BODY_LIMIT_BYTES", "server.body_limit_bytes"),
    (
        "NEO_HEADER_TIMEOUT_SECONDS",
        "server.header_timeout_seconds",
    ),
    ("NEO_IDLE_TIMEOUT_SECONDS", "server.idle_timeout_seconds"),
    ("NEO_MAX_CONNECTIONS", "server.max_connections"),
    (
        "NEO_SHUTDOWN_GRACE_SECONDS",
        "server.shutdown_grace_seconds",
    ),
    ("NEO_API_KEY_ENV", "api_key.env"),
    ("NEO_API_KEY_CACHE_SECONDS", "api_key.cache_seconds"),
    (
        "NEO_API_KEY_LAST_USED_RESOLUTION_SECONDS",
        "api_key.last_used_resolution_seconds",
    ),
    ("NEO_TOKEN_ISSUER", "token.issuer"),
    ("NEO_TOKEN_AUDIENCE", "token.audience"),
    ("NEO_TOKEN_DEFAULT_TTL", "token.default_ttl"),
    ("NEO_TOKEN_MIN_TTL", "token.min_ttl"),
    ("NEO_TOKEN_MAX_TTL", "token.max_ttl"),
    ("NEO_TOKEN_SCOPE", "token.scope"),
    ("NEO_TOKEN_LEEWAY_SECONDS", "token.leeway_seconds"),
    ("NEO_SIGNING_KEY_FILE", "signing.key_file"),
    ("NEO_SIGNING_ALGORITHM", "signing.algorithm"),
    ("NEO_KEY_ENCRYPTION_KEY", "signing.key_encryption_key"),
    (
        "NEO_KEY_ENCRYPTION_KEY_FILE",
        "signing.key_encryption_key_file",
    ),
    ("NEO_SIGNING_KEY_ROTATE_DAYS", "signing.rotate_days"),
    ("NEO_SIGNING_KEY_LEAD_SECONDS", "signing.lead_seconds"),
    ("NEO_SIGNING_KEY_RELOAD_SECONDS", "signing.reload_seconds"),
    ("NEO_JWKS_MAX_AGE_SECONDS", "signing.jwks_max_age_seconds"),
    ("NEO_ENTRA_JWKS_URL", "entra.jwks_url"),
    ("NEO_ENTRA_AUDIENCE", "entra.audience"),
    ("NEO_ENTRA_REQUIRED_SCOPE", "entra.required_scope"),
    ("NEO_ENTRA_LEEWAY_SECONDS", "entra.leeway_seconds"),
    ("NEO_ENTRA_TOKEN_CACHE_ENTRIES", "entra.token_cache_entries"),
    ("NEO_ENTRA_REFRESH_SECONDS", "entra.refresh_seconds"),
    ("NEO_ENTRA_KEY_MAX_AGE_SECONDS", "entra.key_max_age_seconds"),
    (
        "NEO_ENTRA_KID_COOLDOWN_SECONDS",
        "entra.kid_cooldown_seconds",
    ),
    ("NEO_ENTRA_RETRY_SECONDS", "entra.retry_seconds"),
    (
        "NEO_ENTRA_HTTP_TIMEOUT_SECONDS",
        "entra.http_timeout_seconds",
    ),
    ("NEO_RATE_LIMIT_PER_MINUTE", "rate_limit.per_minute"),
    ("NEO_RATE_LIMIT_BURST", "rate_limit.burst"),
    (
        "NEO_AUTH_FAILURE_PER_MINUTE",
        "rate_limit.auth_failure_per_minute",
    ),
    ("NEO_AUTH_FAILURE_BURST", "rate_limit.auth_failure_burst"),
    ("NEO_RATE_LIMIT_REDIS_URL", "rate_limit.redis_url"),
    ("NEO_RATE_LIMIT_REDIS_PREFIX", "rate_limit.redis_prefix"),
    (
        "NEO_RATE_LIMIT_REDIS_TIMEOUT_MS",
        "rate_limit.redis_timeout_ms",
    ),
    (
        "NEO_RATE_LIMIT_OVERRIDE_CACHE_SECONDS",
        "rate_limit.override_cache_seconds",
    ),
    ("NEO_AUDIT_RETENTION_DAYS", "audit.retention_days"),
    ("NEO_SESSION_CACHE_ENTRIES", "cache.session_entries"),
    ("NEO_TRUSTED_PROXIES", "server.trusted_proxies"),
    ("NEO_METRICS_LISTEN", "server.metrics_listen"),
    ("NEO_LOG_FORMAT", "log.format"),
    ("NEO_LOG_FILTER", "log.filter"),
];

/// Keys that can be set only in the config file. Empty on purpose: every key has a variable (a
/// test keeps it so); a key added here must say why it has none.
pub const FILE_ONLY_KEYS: &[&str] = &[];

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub data: DataConfig,
    pub api_key: ApiKeyConfig,
    pub token: TokenConfig,
    pub signing: SigningConfig,
    pub entra: EntraConfig,
    pub rate_limit: RateLimitConfig,
    pub audit: AuditConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(deserialize_with = "socket_address")]
    pub listen: SocketAddr,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    pub request_timeout_seconds: u64,
    pub body_limit_bytes: usize,
    /// A connection's request head must arrive within this many seconds of its first byte (or
    /// of the connection); slower clients are disconnected.
    pub header_timeout_seconds: u64,
    /// An idle keep-alive connection is closed after this many seconds.
    pub idle_timeout_seconds: u64,
    /// Open connections at most; more are answered 503 `too_many_connections` and closed.
    pub max_connections: usize,
    /// On SIGTERM, open connections get this long to finish before they are cut.
    pub shutdown_grace_seconds: u64,
    /// Serve `/metrics` on this address (e.g. an internal interface) instead of `listen`.
    #[serde(deserialize_with = "optional_socket_address")]
    pub metrics_listen: Option<SocketAddr>,
    /// Reverse proxies whose `X-Forwarded-For` is believed: comma-separated IPs and CIDRs in
    /// the file and the variable, parsed once, here.
    pub trusted_proxies: TrustedProxies,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            migrate_on_start: true,
            request_timeout_seconds: 10,
            body_limit_bytes: 64 * 1024,
            header_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            max_connections: 4096,
            shutdown_grace_seconds: 20,
            metrics_listen: None,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// The networks of trusted reverse proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated IPs and CIDRs, e.g. `10.0.0.0/8, 192.0.2.7`.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl TryFrom<String> for TrustedProxies {
    type Error = String;

    fn try_from(list: String) -> Result<Self, String> {
        Self::parse(&list)
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        list.join(", ").serialize(serializer)
    }
}

/// The database backend a URL names: its scheme decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    Postgres,
    Sqlite,
}

impl DatabaseBackend {
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "sqlite" => Some(Self::Sqlite),
            _ => None,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: Option<SecretString>,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field(
                "url",
                &self.url.as_ref().map(|url| redact_url(url.expose_secret())),
            )
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Secrets in a serialized configuration (`config show`, tests) come out as [`redact_url`] does.
fn serialize_redacted_url<S: Serializer>(
    url: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    url.as_ref()
        .map(|url| redact_url(url.expose_secret()))
        .serialize(serializer)
}

/// A secret in a serialized configuration: whether it is set, never what it is.
fn serialize_redacted<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(|_| "***").serialize(serializer)
}

/// `scheme://user:password@host/db` → `scheme://user:***@host/db`; anything unparsable is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Where the generated signing key (and, later, the embedded database) lives.
    pub dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            env: "test".to_owned(),
            last_used_resolution_seconds: 60,
            cache_seconds: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Sessions held in memory for the mint rules (and as many agent and end-company answers),
    /// kept exact by change notifications. 0 reads every mint's session from the database.
    pub session_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            session_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Mint records whose token expired more than this many days ago are deleted (in bounded
    /// batches, in the background). 0 keeps them forever.
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { retention_days: 90 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
    pub default_ttl: u32,
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// The scope claim of minted tokens: what an end user may do, never mint or revoke.
    pub scope: String,
    /// Clock skew tolerated on `exp`/`nbf` when our tokens are verified (here, and by the
    /// published verification module); a retired key stays published this much longer.
    pub leeway_seconds: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "https://api.neoagent.io".to_owned(),
            audience: "https://api.neoagent.io/chat".to_owned(),
            default_ttl: 900,
            min_ttl: 60,
            max_ttl: 3600,
            scope: "chat:session".to_owned(),
            leeway_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SigningAlgorithm {
    #[default]
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
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// PKCS#8 PEM private key. When set, it is the only key (no rotation, nothing in the database).
    pub key_file: Option<PathBuf>,
    /// The algorithm of keys generated here (and of a key file).
    pub algorithm: SigningAlgorithm,
    /// Base64 of 32 bytes: the AES-256-GCM key that seals private keys in the database. Every
    /// replica needs the same one. Without it (nor a file), one is generated in the data directory.
    #[serde(serialize_with = "serialize_redacted")]
    pub key_encryption_key: Option<SecretString>,
    /// A file holding the key-encryption key (base64 text, or 32 raw bytes).
    pub key_encryption_key_file: Option<PathBuf>,
    /// Rotate automatically when the active key is this many days old; 0 = only by command.
    pub rotate_days: u32,
    /// A new key is published this long before it signs: longer than the JWKS `max-age`, so every
    /// verifier has it before it meets a token it signed.
    pub lead_seconds: u64,
    /// How often each replica reloads the keys from the database.
    pub reload_seconds: u64,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age_seconds: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            algorithm: SigningAlgorithm::ES256,
            key_encryption_key: None,
            key_encryption_key_file: None,
            rotate_days: 0,
            lead_seconds: 600,
            reload_seconds: 30,
            jwks_max_age_seconds: 300,
        }
    }
}

impl fmt::Debug for SigningConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningConfig")
            .field("key_file", &self.key_file)
            .field("algorithm", &self.algorithm)
            .field(
                "key_encryption_key",
                &self.key_encryption_key.as_ref().map(|_| "***"),
            )
            .field("key_encryption_key_file", &self.key_encryption_key_file)
            .field("rotate_days", &self.rotate_days)
            .field("lead_seconds", &self.lead_seconds)
            .field("reload_seconds", &self.reload_seconds)
            .field("jwks_max_age_seconds", &self.jwks_max_age_seconds)
            .finish()
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Per principal (API key, Entra user): sustained rate and burst.
    pub per_minute: u32,
    pub burst: u32,
    /// Failed authentications per client IP.
    pub auth_failure_per_minute: u32,
    pub auth_failure_burst: u32,
    /// Shared buckets for several replicas; in-memory buckets when unset or unreachable.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub redis_url: Option<SecretString>,
    /// Prefix of the Redis keys (one per deployment sharing a Redis).
    pub redis_prefix: String,
    /// A Redis call slower than this counts as a failure (the request uses memory instead).
    pub redis_timeout_ms: u64,
    /// How long a per-tenant override read from the database is reused.
    pub override_cache_seconds: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_minute: 600,
            burst: 60,
            auth_failure_per_minute: 30,
            auth_failure_burst: 10,
            redis_url: None,
            redis_prefix: "neo-sessions:rl:".to_owned(),
            redis_timeout_ms: 100,
            override_cache_seconds: 30,
        }
    }
}

impl fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("per_minute", &self.per_minute)
            .field("burst", &self.burst)
            .field("auth_failure_per_minute", &self.auth_failure_per_minute)
            .field("auth_failure_burst", &self.auth_failure_burst)
            .field(
                "redis_url",
                &self
                    .redis_url
                    .as_ref()
                    .map(|url| redact_url(url.expose_secret())),
            )
            .field("redis_prefix", &self.redis_prefix)
            .finish_non_exhaustive()
    }
}

/// Microsoft Entra ID login for dashboard users; off while `audience` is unset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntraConfig {
    pub jwks_url: String,
    /// Accepted `aud` values, comma-separated (the API's client-id GUID and its `api://` URI).
    pub audience: Option<String>,
    /// When set, must be one of the space-separated `scp` entries.
    pub required_scope: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Background refresh of the key set.
    pub refresh_seconds: u64,
    /// Keys not refreshed for this long are no longer trusted.
    pub key_max_age_seconds: u64,
    /// At most one refetch per this many seconds for tokens with an unknown `kid`.
    pub kid_cooldown_seconds: u64,
    /// While no keys are held (e.g. the JWKS was unreachable at start), at most one fetch per
    /// this many seconds on demand.
    pub retry_seconds: u64,
    pub http_timeout_seconds: u64,
    /// Tokens whose signature and claims were verified, remembered (by SHA-256 of the whole
    /// token) until they expire, so a caller repeating its token is not RSA-verified each time;
    /// 0 verifies every request.
    pub token_cache_entries: usize,
}

impl Default for EntraConfig {
    fn default() -> Self {
        Self {
            jwks_url: "https://login.microsoftonline.com/common/discovery/v2.0/keys".to_owned(),
            audience: None,
            required_scope: None,
            leeway_seconds: 60,
            refresh_seconds: 3600,
            key_max_age_seconds: 24 * 3600,
            kid_cooldown_seconds: 300,
            retry_seconds: 5,
            http_timeout_seconds: 5,
            token_cache_entries: 10_000,
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `pretty` on a terminal, `json` otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `neo_sessions=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            // sqlx reports PostgreSQL NOTICEs (e.g. "relation already exists, skipping") at info.
            filter: "info,sqlx::postgres::notice=warn".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Layers the configuration. `file` is `--config`; when it is `None`, `config/default.toml` is
    /// read if it exists. `env` is the process environment (passed in so tests need no globals).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )))
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }

        let env: HashMap<String, String> = env.into_iter().collect();
        // Which variable set which key (the last one listed wins, as in the merge below).
        let mut set_by: HashMap<&'static str, &'static str> = HashMap::new();
        for (var, key) in ENV_KEYS {
            if let Some(raw) = env.get(*var) {
                let value: Value = match raw.parse() {
                    Ok(value) => value,
                    Err(never) => match never {},
                };
                figment = figment.merge((*key, value));
                set_by.insert(key, var);
            }
        }
        // A problem is reported with where its value really came from.
        let source_of = |key: &str| -> String {
            if let Some(var) = set_by.get(key) {
                return format!(" (from environment variable {var})");
            }
            match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(path)) => {
                    format!(" (from {}, key {key})", path.display())
                }
                _ => " (built-in default)".to_owned(),
            }
        };

        let config: Config = figment.extract().map_err(|error| {
            let messages: Vec<String> = error
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    if key.is_empty() {
                        e.kind.to_string()
                    } else {
                        format!("{key}: {}{}", e.kind, source_of(&key))
                    }
                })
                .collect();
            ConfigError(messages.join("; "))
        })?;
        config.validate().map_err(|Invalid { key, message }| {
            ConfigError(format!("{key} {message}{}", source_of(key)))
        })?;
        Ok(config)
    }

    /// `NEO_*` variables that set nothing (a typo, or a setting that does not exist): worth a
    /// warning at start.
    pub fn unknown_variables(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let mut unknown: Vec<String> = env
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with("NEO_"))
            .filter(|name| !ENV_KEYS.iter().any(|(var, _)| var == name))
            .filter(|name| !NOT_SETTINGS.iter().any(|prefix| name.starts_with(prefix)))
            .collect();
        unknown.sort();
        unknown
    }

    fn validate(&self) -> Result<(), Invalid> {
        let t = &self.token;
        if t.min_ttl == 0 {
            return Err(invalid("token.min_ttl", "must be at least 1 second"));
        }
        if t.min_ttl > t.max_ttl {
            return Err(invalid("token.min_ttl", "must not exceed token.max_ttl"));
        }
        if !(t.min_ttl..=t.max_ttl).contains(&t.default_ttl) {
            return Err(invalid(
                "token.default_ttl",
                "must lie between token.min_ttl and token.max_ttl",
            ));
        }
        if t.issuer.trim().is_empty() {
            return Err(invalid("token.issuer", "must not be empty"));
        }
        if t.audience.trim().is_empty() {
            return Err(invalid("token.audience", "must not be empty"));
        }
        if t.scope
            .split_whitespace()
            .any(|s| s.contains("mint") || s.contains("revoke"))
        {
            return Err(invalid(
                "token.scope",
                "an end-user scope may not grant minting or revoking",
            ));
        }
        if !is_valid_key_env(&self.api_key.env) {
            return Err(invalid(
                "api_key.env",
                "must be 1 to 16 lowercase letters or digits",
            ));
        }
        let signing = &self.signing;
        if signing.lead_seconds <= signing.jwks_max_age_seconds {
            return Err(invalid(
                "signing.lead_seconds",
                "must be longer than signing.jwks_max_age_seconds (a verifier must see a key before it signs)",
            ));
        }
        if signing.reload_seconds == 0 || signing.reload_seconds >= signing.lead_seconds {
            return Err(invalid(
                "signing.reload_seconds",
                "must be at least 1 and shorter than signing.lead_seconds",
            ));
        }
        if let Some(key) = &signing.key_encryption_key {
            use base64::Engine;
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(key.expose_secret().trim());
            if decoded.map(|bytes| bytes.len()) != Ok(32) {
                return Err(invalid(
                    "signing.key_encryption_key",
                    "must be the base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)",
                ));
            }
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(invalid("server.body_limit_bytes", "must be at least 1024"));
        }
        for (key, value) in [
            (
                "server.request_timeout_seconds",
                self.server.request_timeout_seconds,
            ),
            (
                "server.header_timeout_seconds",
                self.server.header_timeout_seconds,
            ),
            (
                "server.idle_timeout_seconds",
                self.server.idle_timeout_seconds,
            ),
            ("server.max_connections", self.server.max_connections as u64),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let limits = &self.rate_limit;
        for (key, value) in [
            ("rate_limit.per_minute", limits.per_minute),
            ("rate_limit.burst", limits.burst),
            (
                "rate_limit.auth_failure_per_minute",
                limits.auth_failure_per_minute,
            ),
            ("rate_limit.auth_failure_burst", limits.auth_failure_burst),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some(url) = &limits.redis_url {
            let url = url.expose_secret();
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(invalid(
                    "rate_limit.redis_url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
        }
        let entra = &self.entra;
        if entra.enabled() {
            if !is_https_or_loopback(&entra.jwks_url) {
                return Err(invalid(
                    "entra.jwks_url",
                    "must be an https:// URL (http:// only to a loopback address, for tests)",
                ));
            }
            if entra.key_max_age_seconds < entra.refresh_seconds {
                return Err(invalid(
                    "entra.key_max_age_seconds",
                    "must be at least entra.refresh_seconds",
                ));
            }
            if entra.http_timeout_seconds == 0 || entra.refresh_seconds == 0 {
                return Err(invalid(
                    "entra.refresh_seconds",
                    "and entra.http_timeout_seconds must be at least 1",
                ));
            }
        }
        if let Some(url) = &self.database.url {
            if DatabaseBackend::of_url(url.expose_secret()).is_none() {
                return Err(invalid(
                    "database.url",
                    "must be a postgres://, postgresql:// or sqlite: URL",
                ));
            }
        }
        Ok(())
    }

    /// The configured database URL, or the embedded SQLite database in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.embedded_database_path().display()),
        }
    }

    pub fn embedded_database_path(&self) -> PathBuf {
        self.data.dir.join("neo-sessions.db")
    }
}

/// Keys are fetched over TLS only; plain HTTP is for a local stand-in (tests, benchmarks).
fn is_https_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

/// A value that parsed but is not allowed; `load` adds where it came from.
struct Invalid {
    key: &'static str,
    message: String,
}

fn invalid(key: &'static str, message: &str) -> Invalid {
    Invalid {
        key,
        message: message.to_owned(),
    }
}

/// `NEO_*` variables that are not configuration keys: the config file's path (a CLI argument),
/// tests, tools, the example.
const NOT_SETTINGS: &[&str] = &[
    "NEO_CONFIG",
    "NEO_TEST_",
    "NEO_UPDATE_OPENAPI",
    "NEO_VERIFY_",
];

/// `server.listen` and `server.metrics_listen`: an IP address and a port. A host name is not
/// resolved; saying so beats "invalid socket address syntax".
fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port, e.g. 127.0.0.1:8080 or [::1]:8080 (host names such as localhost are not resolved)"
        ))
    })
}

fn optional_socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_address(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.api_key.env, "test");
        assert_eq!(
            (
                config.token.default_ttl,
                config.token.min_ttl,
                config.token.max_ttl
            ),
            (900, 60, 3600)
        );
        assert_eq!(config.signing.algorithm, SigningAlgorithm::ES256);
    }

    #[test]
    fn environment_overrides_file_and_neo_database_url_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[token]\ndefault_ttl = 120\nissuer = \"https://file\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("NEO_TOKEN_ISSUER", "https://env"),
                ("DATABASE_URL", "postgres://a@h/one"),
                ("NEO_DATABASE_URL", "postgres://a@h/two"),
            ]),
        )
        .unwrap();
        assert_eq!(config.token.default_ttl, 120);
        assert_eq!(config.token.issuer, "https://env");
        assert_eq!(config.database_url(), "postgres://a@h/two");
    }

    #[test]
    fn without_a_url_the_embedded_database_lives_in_the_data_dir() {
        let config = Config::load(None, env(&[("NEO_DATA_DIR", "/var/lib/neo")])).unwrap();
        assert_eq!(
            config.database_url(),
            "sqlite:///var/lib/neo/neo-sessions.db"
        );
        let err = Config::load(None, env(&[("NEO_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
    }

    #[test]
    fn entra_is_off_until_an_audience_is_set() {
        let config = Config::load(None, env(&[])).unwrap();
        assert!(!config.entra.enabled());
        let config = Config::load(
            None,
            env(&[(
                "NEO_ENTRA_AUDIENCE",
                "api://neo, 6e2f1a4b-8c3d-4e5f-9a0b-1c2d3e4f5a6b",
            )]),
        )
        .unwrap();
        assert_eq!(
            config.entra.audiences(),
            ["api://neo", "6e2f1a4b-8c3d-4e5f-9a0b-1c2d3e4f5a6b"]
        );
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let err = Config::load(None, env(&[("NEO_TOKEN_MAX_TTL", "lots")])).unwrap_err();
        assert!(err.to_string().contains("token.max_ttl"), "{err}");
        assert!(err.to_string().contains("NEO_TOKEN_MAX_TTL"), "{err}");

        let err = Config::load(None, env(&[("NEO_TOKEN_MIN_TTL", "7200")])).unwrap_err();
        assert!(err.to_string().contains("token.min_ttl"), "{err}");

        let err = Config::load(None, env(&[("NEO_API_KEY_ENV", "Live_1")])).unwrap_err();
        assert!(err.to_string().contains("api_key.env"), "{err}");
    }

    #[test]
    fn an_error_names_the_source_it_really_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wrongtype.toml");
        std::fs::write(&path, "[token]\ndefault_ttl = \"soon\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("token.default_ttl"), "{err}");
        assert!(err.contains("wrongtype.toml"), "{err}");
        assert!(!err.contains("NEO_TOKEN_DEFAULT_TTL"), "{err}");

        // A range problem of a value from the file: the file; of a variable: the variable.
        std::fs::write(&path, "[token]\nmin_ttl = 0\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("wrongtype.toml") && err.contains("at least 1"),
            "{err}"
        );
        let err = Config::load(None, env(&[("NEO_TOKEN_MIN_TTL", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("from environment variable NEO_TOKEN_MIN_TTL"),
            "{err}"
        );
    }

    #[test]
    fn a_host_name_as_listen_address_says_an_ip_is_required() {
        let err = Config::load(None, env(&[("NEO_LISTEN", "localhost:8080")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
        assert!(err.contains("not an IP address and port"), "{err}");
        assert!(err.contains("NEO_LISTEN"), "{err}");
        let config = Config::load(None, env(&[("NEO_LISTEN", "[::1]:9000")])).unwrap();
        assert_eq!(config.server.listen.to_string(), "[::1]:9000");
    }

    #[test]
    fn unknown_neo_variables_are_found() {
        let unknown = Config::unknown_variables(env(&[
            ("NEO_TOKEN_DEFUALT_TTL", "120"),
            ("NEO_TOKEN_DEFAULT_TTL", "120"),
            ("NEO_TEST_DATABASE_URL", "postgres://x"),
            ("HOME", "/root"),
        ]));
        assert_eq!(unknown, ["NEO_TOKEN_DEFUALT_TTL"]);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[token]\ndefault_tll = 120\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("default_tll"), "{err}");
    }

    #[test]
    fn debug_redacts_the_database_password() {
        let config = Config::load(
            None,
            env(&[("NEO_DATABASE_URL", "postgres://neo:hunter2@db:5432/neo")]),
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("postgres://neo:***@db:5432/neo"), "{debug}");
    }

    /// Every leaf key of a serialized configuration, as `section.key`.
    fn leaf_keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaf_keys(value, &path, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn the_shipped_default_file_is_exactly_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let from_file = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
    }

    #[test]
    fn every_key_has_a_variable_or_is_listed_as_file_only() {
        let mut keys = Vec::new();
        leaf_keys(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut keys,
        );
        assert!(keys.len() > 30, "{keys:?}");
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| {
                !ENV_KEYS.iter().any(|(_, k)| k == key) && !FILE_ONLY_KEYS.contains(&key.as_str())
            })
            .collect();
        assert!(
            missing.is_empty(),
            "keys without a NEO_* variable: {missing:?}"
        );
        // And no variable names a key that does not exist.
        for (var, key) in ENV_KEYS {
            assert!(
                keys.iter().any(|k| k == key),
                "{var} sets unknown key {key}"
            );
        }
    }

    #[test]
    fn trusted_proxies_are_parsed_once_into_networks() {
        let config = Config::load(
            None,
            env(&[("NEO_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7")]),
        )
        .unwrap();
        assert!(config
            .server
            .trusted_proxies
            .contains("10.1.2.3".parse().unwrap()));
        assert!(config
            .server
            .trusted_proxies
            .contains("192.0.2.7".parse().unwrap()));
        assert!(!config
            .server
            .trusted_proxies
            .contains("192.0.2.8".parse().unwrap()));
        let err = Config::load(None, env(&[("NEO_TRUSTED_PROXIES", "10.0.0.0/33")])).unwrap_err();
        assert!(err.to_string().contains("server.trusted_proxies"), "{err}");
        assert!(err.to_string().contains("NEO_TRUSTED_PROXIES"), "{err}");
    }

    #[test]
    fn serialized_configuration_redacts_secrets() {
        let config = Config::load(
            None,
            env(&[
                ("NEO_DATABASE_URL", "postgres://neo:hunter2@db:5432/neo"),
                ("NEO_RATE_LIMIT_REDIS_URL", "redis://:s3cret@cache:6379"),
            ]),
        )
        .unwrap();
        let text = serde_json::to_string(&config).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
    }

    #[test]
    fn entra_keys_come_over_https_or_from_loopback_only() {
        let with_url = |url: &str| {
            Config::load(
                None,
                env(&[
                    ("NEO_ENTRA_AUDIENCE", "api://neo"),
                    ("NEO_ENTRA_JWKS_URL", url),
                ]),
            )
        };
        assert!(with_url("https://login.microsoftonline.com/common/discovery/v2.0/keys").is_ok());
        assert!(with_url("http://127.0.0.1:8081/jwks.json").is_ok());
        assert!(with_url("http://[::1]:8081/jwks.json").is_ok());
        assert!(with_url("http://localhost/jwks.json").is_ok());
        for bad in [
            "http://login.microsoftonline.com/common/discovery/v2.0/keys",
            "http://127.0.0.1.evil.example/jwks.json",
            "ftp://127.0.0.1/jwks.json",
        ] {
            let err = with_url(bad).unwrap_err();
            assert!(err.to_string().contains("entra.jwks_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn api_key_envs() {
        assert!(is_valid_key_env("live"));
        assert!(is_valid_key_env("eu2"));
        assert!(!is_valid_key_env(""));
        assert!(!is_valid_key_env("Live"));
        assert!(!is_valid_key_env("a_b"));
        assert!(!is_valid_key_env("abcdefghijklmnopq"));
    }
}
