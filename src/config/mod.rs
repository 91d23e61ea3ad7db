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
mod origin;
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
    providers::{Format, Toml},
    value::Value,
    Figment,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

pub use self::{
    auth::{is_valid_key_env, ApiKeyConfig, EntraConfig, RateLimitConfig},
    log::{LogConfig, LogFormat},
    origin::{FlagValue, Origin, Provenance},
    secret::{redact_url, Secret},
    server::{PublicUrl, ServerConfig, TrustedProxies, MIN_MAX_HEADER_BYTES},
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

/// A configuration and where each of its values came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub provenance: Provenance,
}

impl Config {
    /// Layers the configuration. `file` is `--config`; when it is `None`, `config/default.toml` is
    /// read if it exists. `env` is the process environment (passed in so tests need no globals).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_with_flags(file, env, &[]).map(|loaded| loaded.config)
    }

    /// [`Config::load`] with command-line flags as the top layer (`serve --listen`), and the
    /// origin of every value.
    pub fn load_with_flags(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[FlagValue],
    ) -> Result<Loaded, ConfigError> {
        let mut figment = Figment::from(Toml::string(EMBEDDED_DEFAULTS));
        let mut provenance = Provenance::default();
        match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError(format!(
                    "config file {} (--config or NEO_CONFIG) does not exist",
                    path.display()
                )))
            }
            Some(path) => {
                figment = figment.merge(Toml::file(path));
                provenance.file = Some(path.to_owned());
            }
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE));
                provenance.file = Some(PathBuf::from(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        // The file's keys, by the file's own metadata (a key it does not set keeps its default).
        for (_, key) in env::keys(EMBEDDED_DEFAULTS) {
            if let Some(figment::Source::File(path)) =
                figment.find_metadata(&key).and_then(|m| m.source.as_ref())
            {
                provenance
                    .origins
                    .insert(key.clone(), Origin::File(path.clone()));
            }
        }

        let env: HashMap<String, String> = env.into_iter().collect();
        // Merged in order, the last one wins: a key's derived name over its alias, a flag over both.
        for (var, key) in env::variables() {
            if let Some(raw) = env.get(&var) {
                figment = figment.merge((key.as_str(), variable_value(&key, raw)));
                provenance.origins.insert(key, Origin::Variable(var));
            }
        }
        for flag in flags {
            figment = figment.merge((flag.key, variable_value(flag.key, &flag.value)));
            provenance
                .origins
                .insert(flag.key.to_owned(), Origin::Flag(flag.flag));
        }

        let config: Config = figment.extract().map_err(|error| {
            let messages: Vec<String> = error
                .into_iter()
                .map(|e| {
                    let key = e.path.join(".");
                    if key.is_empty() {
                        e.kind.to_string()
                    } else {
                        provenance.explain(&key, &e.kind)
                    }
                })
                .collect();
            ConfigError(messages.join("; "))
        })?;
        validate(&config).map_err(|Invalid { keys, message }| {
            let shown = serde_json::to_value(&config).unwrap_or_default();
            ConfigError(provenance.explain_rule(keys, &message, |key| value_at(&shown, key)))
        })?;
        Ok(Loaded { config, provenance })
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

/// A variable's (or flag's) value as a layer: as it is for a key that takes text, else read as
/// TOML reads a value (`true`, `10`).
fn variable_value(key: &str, raw: &str) -> Value {
    if origin::takes_text(key) {
        return Value::from(raw.to_owned());
    }
    match raw.parse() {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// A key's value in the serialized configuration (secrets already redacted), for messages.
fn value_at(config: &serde_json::Value, key: &str) -> String {
    let Some((section, field)) = key.split_once('.') else {
        return String::new();
    };
    match &config[section][field] {
        serde_json::Value::Null => "unset".to_owned(),
        serde_json::Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}
