//! Typed configuration: the shipped defaults < a config file < `NEO_*` environment variables.
//!
//! `config/default.toml` is the one place a key and its default are written: it is built in as the
//! bottom layer, its keys name the variables (`env.rs`), and the table in `docs/operating.md` is
//! rendered from it (a test fails when they differ). A new setting is a struct field here and a
//! line there. Secrets are [`Secret`]s, so `Debug` and `config show` never print them.

mod auth;
#[cfg(test)]
mod docs;
mod env;
mod log;
mod secret;
mod server;
mod storage;
#[cfg(test)]
mod tests;
mod tokens;
mod trace;
mod validate;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use figment::{
    error::Kind,
    providers::{Format, Toml},
    value::Value,
    Figment,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

pub use self::{
    auth::{is_valid_key_env, ApiKeyConfig, EntraConfig, RateLimitConfig},
    log::{LogConfig, LogFormat},
    secret::{redact_url, Secret},
    server::{ServerConfig, TrustedProxies, MIN_MAX_HEADER_BYTES},
    storage::{AuditConfig, CacheConfig, DataConfig, DatabaseBackend, DatabaseConfig},
    tokens::{SigningAlgorithm, SigningConfig, TokenConfig},
    trace::TraceConfig,
};
use self::{
    env::EMBEDDED_DEFAULTS,
    validate::{validate, Invalid},
};

/// The file read when `--config` is not given and the file exists (relative to the working directory).
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// The whole configuration: one field per section of `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub trace: TraceConfig,
}

/// The shipped defaults, parsed once.
static DEFAULTS: LazyLock<Config> = LazyLock::new(|| {
    Figment::from(Toml::string(EMBEDDED_DEFAULTS))
        .extract()
        .unwrap_or_else(|error| panic!("the built-in config/default.toml is invalid: {error}"))
});

/// The shipped defaults (`config/default.toml` as built in), for tests and tools that start from
/// them. It cannot fail at run time: the file is fixed at build time, and a unit test loads it.
impl Default for Config {
    fn default() -> Self {
        DEFAULTS.clone()
    }
}

/// Each section's shipped defaults are the ones of [`Config::default`]: no value is written twice.
macro_rules! section_defaults {
    ($($section:ident: $type:ty),* $(,)?) => {$(
        impl Default for $type {
            fn default() -> Self {
                DEFAULTS.$section.clone()
            }
        }
    )*};
}

section_defaults!(
    server: ServerConfig,
    database: DatabaseConfig,
    data: DataConfig,
    api_key: ApiKeyConfig,
    token: TokenConfig,
    signing: SigningConfig,
    entra: EntraConfig,
    rate_limit: RateLimitConfig,
    audit: AuditConfig,
    cache: CacheConfig,
    log: LogConfig,
    trace: TraceConfig,
);

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
        let mut figment = Figment::from(Toml::string(EMBEDDED_DEFAULTS));
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
        // Which variable set which key (the last one merged wins: a key's derived name over its alias).
        let mut set_by: HashMap<String, String> = HashMap::new();
        for (var, key) in env::variables() {
            if let Some(raw) = env.get(&var) {
                let value: Value = match raw.parse() {
                    Ok(value) => value,
                    Err(never) => match never {},
                };
                figment = figment.merge((key.as_str(), value));
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
                    match &e.kind {
                        _ if key.is_empty() => e.kind.to_string(),
                        // A `NonZero*` key given 0 (or less).
                        Kind::InvalidValue(_, expected) if expected.starts_with("a nonzero") => {
                            format!("{key} must be at least 1{}", source_of(&key))
                        }
                        kind => format!("{key}: {kind}{}", source_of(&key)),
                    }
                })
                .collect();
            ConfigError(messages.join("; "))
        })?;
        validate(&config).map_err(|Invalid { key, message }| {
            ConfigError(format!("{key} {message}{}", source_of(key)))
        })?;
        Ok(config)
    }

    /// `NEO_*` variables that set nothing (a typo, or a setting that does not exist): worth a
    /// warning at start.
    pub fn unknown_variables(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let known = env::variables();
        let mut unknown: Vec<String> = env
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with("NEO_"))
            .filter(|name| !known.iter().any(|(var, _)| var == name))
            .filter(|name| !env::is_not_a_setting(name))
            .collect();
        unknown.sort();
        unknown
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
