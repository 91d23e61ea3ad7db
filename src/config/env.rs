//! Environment variable names. Every key `section.key` of the shipped `config/default.toml` is the
//! variable `NEO_<SECTION>_<KEY>`; [`ALIASES`] keeps the shorter names that worked first. A key
//! added to the file therefore has its variable without another edit.

/// The shipped `config/default.toml`: every key, with its default (a key that has none is shown
/// commented out). The bottom configuration layer, and the source of the key list.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../config/default.toml");

/// Names older than the `NEO_<SECTION>_<KEY>` rule, kept because operators use them (docs/operating.md
/// fixes `DATABASE_URL` and `NEO_LISTEN`), and the standard names other tools set
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`). Each key's own derived name works too and wins when
/// both are set, as `NEO_DATABASE_URL` always won over `DATABASE_URL`.
pub const ALIASES: &[(&str, &str)] = &[
    // The name many tools (sqlx-cli, PaaS add-ons) set.
    ("DATABASE_URL", "database.url"),
    // `[server]` keys went without their section.
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
    ("NEO_TRUSTED_PROXIES", "server.trusted_proxies"),
    ("NEO_METRICS_LISTEN", "server.metrics_listen"),
    // Signing keys: named after the thing, not the section.
    ("NEO_KEY_ENCRYPTION_KEY", "signing.key_encryption_key"),
    (
        "NEO_KEY_ENCRYPTION_KEY_FILE",
        "signing.key_encryption_key_file",
    ),
    ("NEO_SIGNING_KEY_ROTATE_DAYS", "signing.rotate_days"),
    ("NEO_SIGNING_KEY_LEAD_SECONDS", "signing.lead_seconds"),
    ("NEO_SIGNING_KEY_RELOAD_SECONDS", "signing.reload_seconds"),
    ("NEO_JWKS_MAX_AGE_SECONDS", "signing.jwks_max_age_seconds"),
    // The failed-authentication limits' documented names.
    (
        "NEO_AUTH_FAILURE_PER_MINUTE",
        "rate_limit.auth_failure_per_minute",
    ),
    ("NEO_AUTH_FAILURE_BURST", "rate_limit.auth_failure_burst"),
    ("NEO_SESSION_CACHE_ENTRIES", "cache.session_entries"),
    // The OpenTelemetry exporter's standard variables, as every OTLP exporter reads them.
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "trace.otlp_endpoint"),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "trace.otlp_traces_endpoint",
    ),
    ("OTEL_SERVICE_NAME", "trace.service_name"),
];

/// `NEO_*` variables that are not configuration keys: the config file's path (a CLI argument),
/// tests, tools, the example.
const NOT_SETTINGS: &[&str] = &[
    "NEO_CONFIG",
    "NEO_TEST_",
    "NEO_UPDATE_OPENAPI",
    "NEO_UPDATE_DOCS",
    "NEO_VERIFY_",
];

/// The keys of [`EMBEDDED_DEFAULTS`] as `section.key`, in file order, each with the index of its
/// line. A key line is `key = value`, or `# key = value` for a key without a default.
pub fn keys(file: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    let mut section = "";
    file.lines().enumerate().filter_map(move |(index, line)| {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name;
            return None;
        }
        let line = line.strip_prefix('#').map_or(line, str::trim_start);
        let (key, _) = line.split_once(" = ")?;
        let is_key = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        (is_key && !section.is_empty()).then(|| (index, format!("{section}.{key}")))
    })
}

/// `token.max_ttl` → `NEO_TOKEN_MAX_TTL`.
pub fn derived_name(key: &str) -> String {
    format!("NEO_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Every variable and the key it sets: each key's aliases, then its derived name (so that, merged
/// in this order, the derived name wins).
pub fn variables() -> Vec<(String, String)> {
    keys(EMBEDDED_DEFAULTS)
        .flat_map(|(_, key)| {
            ALIASES
                .iter()
                .filter(|(_, k)| *k == key)
                .map(|(alias, _)| ((*alias).to_owned(), key.clone()))
                .chain([(derived_name(&key), key.clone())])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether a `NEO_*` name is reserved for something other than a setting.
pub fn is_not_a_setting(name: &str) -> bool {
    NOT_SETTINGS.iter().any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{tests::env, Config};

    #[test]
    fn unknown_neo_variables_are_found() {
        let unknown = Config::unknown_variables(env(&[
            ("NEO_TOKEN_DEFUALT_TTL", "120"),
            ("NEO_TOKEN_DEFAULT_TTL", "120"),
            ("NEO_LISTEN", "127.0.0.1:1"),
            ("NEO_SERVER_LISTEN", "127.0.0.1:1"),
            ("NEO_SERVER_LISTN", "127.0.0.1:1"),
            ("NEO_TEST_DATABASE_URL", "postgres://x"),
            ("NEO_UPDATE_DOCS", "1"),
            ("HOME", "/root"),
        ]));
        assert_eq!(unknown, ["NEO_SERVER_LISTN", "NEO_TOKEN_DEFUALT_TTL"]);
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
    fn every_field_is_a_key_of_the_shipped_file_and_has_its_variable() {
        let mut fields = Vec::new();
        leaf_keys(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut fields,
        );
        assert!(fields.len() > 30, "{fields:?}");
        let mut keys: Vec<String> = keys(EMBEDDED_DEFAULTS).map(|(_, key)| key).collect();
        fields.sort();
        keys.sort();
        assert_eq!(
            fields, keys,
            "config/default.toml must show every field, and no other key"
        );

        let variables = variables();
        for key in &keys {
            assert!(
                variables.contains(&(derived_name(key), key.clone())),
                "{key} has no NEO_<SECTION>_<KEY> variable"
            );
        }
        // An alias names an existing key, and no name sets two keys.
        for (alias, key) in ALIASES {
            assert!(
                keys.contains(&key.to_string()),
                "{alias} sets unknown key {key}"
            );
        }
        let mut names: Vec<&String> = variables.iter().map(|(name, _)| name).collect();
        names.sort();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a variable name sets two keys");
    }

    /// Every name that worked before names were derived from keys still sets its key.
    #[test]
    fn the_older_variable_names_still_work() {
        for (alias, value, shown) in [
            ("NEO_LISTEN", "0.0.0.0:9000", "0.0.0.0:9000"),
            ("NEO_MAX_CONNECTIONS", "7", "7"),
            ("NEO_TRUSTED_PROXIES", "10.0.0.0/8", "10.0.0.0/8"),
            ("NEO_SIGNING_KEY_LEAD_SECONDS", "900", "900"),
            ("NEO_JWKS_MAX_AGE_SECONDS", "60", "60"),
            ("NEO_AUTH_FAILURE_BURST", "3", "3"),
            ("NEO_SESSION_CACHE_ENTRIES", "5", "5"),
        ] {
            let config = Config::load(None, env(&[(alias, value)])).unwrap();
            let (_, key) = ALIASES.iter().find(|(a, _)| *a == alias).unwrap();
            let (section, field) = key.split_once('.').unwrap();
            let json = serde_json::to_value(&config).unwrap();
            let got = json[section][field].to_string();
            assert_eq!(got.trim_matches('"'), shown, "{alias}");
        }
    }

    /// A key's own `NEO_<SECTION>_<KEY>` wins over its alias when both are set (as `NEO_DATABASE_URL`
    /// always won over `DATABASE_URL`), and an error names the variable that was used.
    #[test]
    fn the_derived_name_wins_over_its_alias() {
        let config = Config::load(
            None,
            env(&[
                ("NEO_LISTEN", "127.0.0.1:1"),
                ("NEO_SERVER_LISTEN", "127.0.0.1:2"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:2");

        let config = Config::load(None, env(&[("NEO_CACHE_SESSION_ENTRIES", "9")])).unwrap();
        assert_eq!(config.cache.session_entries, 9);

        let err = Config::load(
            None,
            env(&[
                ("NEO_SERVER_MAX_CONNECTIONS", "x"),
                ("NEO_MAX_CONNECTIONS", "3"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("environment variable NEO_SERVER_MAX_CONNECTIONS"),
            "{err}"
        );
        let err = Config::load(None, env(&[("NEO_MAX_CONNECTIONS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment variable NEO_MAX_CONNECTIONS"),
            "{err}"
        );
    }
}
