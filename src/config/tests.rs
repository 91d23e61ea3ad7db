use super::*;

/// Environment variables as `Config::load` takes them.
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
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
            config.token.min_ttl.get(),
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
        err.contains("environment variable NEO_TOKEN_MIN_TTL, key token.min_ttl"),
        "{err}"
    );
}

#[test]
fn a_header_buffer_below_hyper_minimum_is_refused_by_name() {
    let err = Config::load(None, env(&[("NEO_SERVER_MAX_HEADER_BYTES", "8191")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.max_header_bytes"), "{err}");
    assert!(err.contains("at least 8192"), "{err}");
    let config = Config::load(
        None,
        env(&[
            ("NEO_SERVER_MAX_HEADER_BYTES", "8192"),
            ("NEO_SERVER_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(config.server.max_header_bytes, 8192);
    assert_eq!(config.server.max_connections_per_address, 0);
    let defaults = Config::load(None, env(&[])).unwrap();
    assert_eq!(defaults.server.max_header_bytes, 32768);
    assert_eq!(defaults.server.max_connections_per_address, 1024);
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

/// An operator's file may set a few keys: every other one keeps its built-in default.
#[test]
fn a_file_with_some_keys_keeps_the_defaults_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("some.toml");
    std::fs::write(&path, "[token]\nmax_ttl = 7200\n").unwrap();
    let mut expected = serde_json::to_value(Config::default()).unwrap();
    expected["token"]["max_ttl"] = 7200.into();
    let config = Config::load(Some(&path), env(&[])).unwrap();
    assert_eq!(serde_json::to_value(&config).unwrap(), expected);
    assert!(validate(&Config::default()).is_ok());
}

/// The keys whose type refuses 0, each refused by name, from a variable and from a file.
#[test]
fn a_zero_where_at_least_one_is_needed_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.toml");
    for key in [
        "server.request_timeout_seconds",
        "server.header_timeout_seconds",
        "server.idle_timeout_seconds",
        "server.max_connections",
        "database.max_connections",
        "token.min_ttl",
        "signing.reload_seconds",
        "entra.refresh_seconds",
        "entra.http_timeout_seconds",
        "rate_limit.per_minute",
        "rate_limit.burst",
        "rate_limit.auth_failure_per_minute",
        "rate_limit.auth_failure_burst",
    ] {
        let var = env::derived_name(key);
        let err = Config::load(None, env(&[(&var, "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "environment variable {var}, key {key}: must be at least 1"
            )),
            "{err}"
        );
        let (section, field) = key.split_once('.').unwrap();
        std::fs::write(&path, format!("[{section}]\n{field} = 0\n")).unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{}, key {key}: must be at least 1",
                path.display()
            )),
            "{err}"
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
fn the_public_url_is_a_bare_http_origin() {
    let config = Config::load(None, env(&[])).unwrap();
    assert_eq!(config.server.public_url, None);
    assert!(!config.server.public_url_from_request);
    let config = Config::load(
        None,
        env(&[("NEO_SERVER_PUBLIC_URL", "https://Sessions.Example.com:443/")]),
    )
    .unwrap();
    let url = config.server.public_url.as_ref().map(PublicUrl::as_str);
    assert_eq!(url, Some("https://sessions.example.com"));
    for bad in [
        "sessions.example.com",
        "ftp://example.com",
        "https://example.com/sessions",
        "https://user:pw@example.com",
        "https://example.com/?x=1",
        "http://",
    ] {
        let err = Config::load(None, env(&[("NEO_SERVER_PUBLIC_URL", bad)])).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("NEO_SERVER_PUBLIC_URL"), "{bad}: {err}");
        assert!(err.contains("https://sessions.example.com"), "{bad}: {err}");
    }
}

/// Every secret set: neither `Debug` nor the serialized configuration (`config show`) shows one.
#[test]
fn debug_and_serialized_configuration_redact_every_secret() {
    let kek = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let config = Config::load(
        None,
        env(&[
            ("NEO_DATABASE_URL", "postgres://neo:hunter2@db:5432/neo"),
            ("NEO_RATE_LIMIT_REDIS_URL", "redis://:s3cret@cache:6379"),
            ("NEO_KEY_ENCRYPTION_KEY", kek),
        ]),
    )
    .unwrap();
    let debug = format!("{config:?}");
    let text = serde_json::to_string(&config).unwrap();
    for printed in [&debug, &text] {
        for secret in ["hunter2", "s3cret", kek, &kek[..8]] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("redis://:***@cache:6379"), "{printed}");
    }
    assert_eq!(
        serde_json::to_value(&config).unwrap()["signing"]["key_encryption_key"],
        "***"
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
        // Userinfo: the host is what follows the `@`, not a loopback name before it.
        "http://localhost:1@other-host/jwks",
        "http://127.0.0.1@evil.example/jwks.json",
        "http://[::1]@evil.example/jwks.json",
        // Nor over TLS: a credential in a URL ends up in logs.
        "https://user:secret@login.microsoftonline.com/common/discovery/v2.0/keys",
        "not a url",
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

/// Both KEK sources set: the variable wins, so a file that says another key is a conflict the
/// operator must hear of at start (not a replica sealing with a key the others do not have).
/// The same key in both (base64 with a newline, or 32 raw bytes) is no conflict.
#[test]
fn two_different_key_encryption_keys_are_refused() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    let with_file = |contents: &[u8], variable: &str| {
        std::fs::write(&path, contents).unwrap();
        Config::load(
            None,
            env(&[
                ("NEO_KEY_ENCRYPTION_KEY", variable),
                ("NEO_KEY_ENCRYPTION_KEY_FILE", path.to_str().unwrap()),
            ]),
        )
    };
    let (a, b) = ([7u8; 32], [9u8; 32]);

    let err = with_file(format!("{}\n", b64(&b)).as_bytes(), &b64(&a)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("signing.key_encryption_key_file")
            && message.contains("signing.key_encryption_key ")
            && !message.contains(&b64(&a))
            && !message.contains(&b64(&b)),
        "{message}"
    );
    let err = with_file(&b, &b64(&a)).unwrap_err();
    assert!(
        err.to_string().contains("signing.key_encryption_key_file"),
        "{err}"
    );

    assert!(with_file(format!("{}\n", b64(&a)).as_bytes(), &b64(&a)).is_ok());
    assert!(with_file(&a, &b64(&a)).is_ok());
}

/// A key, a bad value of it (`None`: any text is valid), other variables the rule needs, and a
/// piece of what a valid value looks like.
type Row<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);

/// Words of the Rust types behind the keys, which mean nothing to an operator.
const SERDE_WORDS: &[&str] = &[
    "u16",
    "u32",
    "u64",
    "usize",
    "nonzero",
    "invalid type",
    "found ",
];

/// One row per key of `config/default.toml`: a bad value (with any other variable the rule
/// needs), and a piece of what a valid value looks like. Each error must name the source that
/// was set (the variable; the file and key), the key, and the valid form, in an operator's
/// words. `None`: any text is a valid value of that key.
#[test]
fn every_key_explains_a_bad_value_with_its_source_key_and_valid_form() {
    const ENTRA_ON: &[(&str, &str)] = &[("NEO_ENTRA_AUDIENCE", "api://neo")];
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("server.listen", Some("8080"), &[], "127.0.0.1:8080"),
        ("server.migrate_on_start", Some("yes"), &[], "true or false"),
        ("server.request_timeout_seconds", Some("0"), &[], "at least 1"),
        ("server.body_limit_bytes", Some("100"), &[], "at least 1024"),
        ("server.header_timeout_seconds", Some("soon"), &[], "a whole number"),
        ("server.idle_timeout_seconds", Some("-1"), &[], "a whole number"),
        ("server.max_connections", Some("0"), &[], "a whole number of 1 or more"),
        ("server.max_connections_per_address", Some("many"), &[], "a whole number"),
        ("server.max_header_bytes", Some("1024"), &[], "at least 8192"),
        ("server.shutdown_grace_seconds", Some("1.5"), &[], "a whole number"),
        ("server.trusted_proxies", Some("10.0.0.0/33"), &[], "10.0.0.0/8"),
        ("server.metrics_listen", Some("localhost:9090"), &[], "127.0.0.1:8080"),
        ("server.public_url", Some("https://sessions.example.com/api"), &[], "https://sessions.example.com"),
        ("server.public_url_from_request", Some("sometimes"), &[], "true or false"),
        ("database.url", Some("mysql://db/neo"), &[], "postgres://"),
        ("database.max_connections", Some("0"), &[], "whole number from 1"),
        ("data.dir", Some(""), &[], "a path"),
        ("api_key.env", Some("Live_1"), &[], "lowercase letters or digits"),
        ("api_key.last_used_resolution_seconds", Some("1m"), &[], "a whole number"),
        ("api_key.cache_seconds", Some("-5"), &[], "a whole number"),
        ("token.issuer", Some(" "), &[], "https://api.neoagent.io"),
        ("token.audience", Some(""), &[], "https://api.neoagent.io/chat"),
        ("token.default_ttl", Some("10"), &[], "from 60 to 3600"),
        ("token.min_ttl", Some("7200"), &[], "3600 or less"),
        ("token.max_ttl", Some("10"), &[], "60 or more"),
        ("token.scope", Some("chat mint"), &[], "chat:session"),
        ("token.leeway_seconds", Some("thirty"), &[], "a whole number"),
        ("signing.key_file", Some(""), &[], "a path"),
        ("signing.algorithm", Some("HS256"), &[], "ES256, EdDSA, RS256"),
        ("signing.key_encryption_key", Some("c2hvcnQ="), &[], "openssl rand -base64 32"),
        ("signing.key_encryption_key_file", Some(""), &[], "a path"),
        ("signing.rotate_days", Some("weekly"), &[], "a whole number"),
        ("signing.lead_seconds", Some("60"), &[], "301 or more"),
        ("signing.reload_seconds", Some("900"), &[], "from 1 to 599"),
        ("signing.jwks_max_age_seconds", Some("3600"), &[], "599 or less"),
        ("entra.audience", None, &[], ""),
        ("entra.jwks_url", Some("http://example.com/keys"), ENTRA_ON, "https://"),
        ("entra.required_scope", None, &[], ""),
        ("entra.leeway_seconds", Some("1e3"), &[], "a whole number"),
        ("entra.refresh_seconds", Some("0"), &[], "1 or more"),
        ("entra.key_max_age_seconds", Some("60"), ENTRA_ON, "3600 or more"),
        ("entra.kid_cooldown_seconds", Some("five"), &[], "a whole number"),
        ("entra.retry_seconds", Some("true"), &[], "a whole number"),
        ("entra.http_timeout_seconds", Some("0"), &[], "1 or more"),
        ("entra.token_cache_entries", Some("lots"), &[], "a whole number"),
        ("rate_limit.per_minute", Some("0"), &[], "from 1 to 4294967295"),
        ("rate_limit.burst", Some("99999999999"), &[], "from 1 to 4294967295"),
        ("rate_limit.auth_failure_per_minute", Some("-1"), &[], "from 1"),
        ("rate_limit.auth_failure_burst", Some("x"), &[], "from 1"),
        ("rate_limit.redis_url", Some("http://cache:6379"), &[], "redis://127.0.0.1:6379"),
        ("rate_limit.redis_prefix", None, &[], ""),
        ("rate_limit.redis_timeout_ms", Some("fast"), &[], "a whole number"),
        ("rate_limit.override_cache_seconds", Some("-30"), &[], "a whole number"),
        ("audit.retention_days", Some("forever"), &[], "from 0 to 4294967295"),
        ("cache.session_entries", Some("all"), &[], "a whole number"),
        ("log.format", Some("xml"), &[], "auto, json, pretty"),
        ("log.filter", Some("a=b=c"), &[], "info,neo_sessions=debug"),
        ("trace.otlp_endpoint", Some("collector:4318"), &[], "http://"),
        ("trace.otlp_traces_endpoint", Some("ftp://collector/v1/traces"), &[], "http://"),
        ("trace.service_name", None, &[], ""),
    ];
    let mut covered: Vec<&str> = rows.iter().map(|(key, ..)| *key).collect();
    covered.sort();
    let mut keys: Vec<String> = env::keys(env::EMBEDDED_DEFAULTS).map(|(_, k)| k).collect();
    keys.sort();
    assert_eq!(covered, keys, "one row per key of config/default.toml");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.toml");
    for (key, bad, extra, valid) in rows {
        let var = env::derived_name(key);
        let Some(bad) = bad else {
            let mut vars = extra.to_vec();
            vars.push((&var, "anything at all"));
            assert!(
                Config::load(None, env(&vars)).is_ok(),
                "{key} takes any text"
            );
            continue;
        };
        let mut vars = extra.to_vec();
        vars.push((&var, bad));
        let from_variable = Config::load(None, env(&vars))
            .map(|_| ())
            .expect_err(&format!("{var}={bad} must be refused"))
            .to_string();
        // A file holding the same value (text quoted, as an operator would write it).
        let (section, field) = key.split_once('.').unwrap();
        let number_or_bool = bad.parse::<f64>().is_ok() || bad.parse::<bool>().is_ok();
        let literal = if origin::takes_text(key) || !number_or_bool {
            format!("{bad:?}")
        } else {
            (*bad).to_owned()
        };
        std::fs::write(&path, format!("[{section}]\n{field} = {literal}\n")).unwrap();
        let from_file = Config::load(Some(&path), env(extra))
            .map(|_| ())
            .expect_err(&format!("{field} = {literal} in a file must be refused"))
            .to_string();
        for (err, source) in [
            (
                &from_variable,
                format!("environment variable {var}, key {key}"),
            ),
            (&from_file, format!("{}, key {key}", path.display())),
        ] {
            assert!(
                err.contains(&source),
                "{key}: the source that set it: {err}"
            );
            assert!(
                err.contains(*valid),
                "{key}: what a valid value is ({valid}): {err}"
            );
            for word in SERDE_WORDS {
                assert!(
                    !err.contains(word),
                    "{key}: {word:?} means nothing to an operator: {err}"
                );
            }
        }
    }
}

/// A rule between two keys blames the one that was set, not the other one's built-in default.
#[test]
fn a_rule_between_keys_blames_the_key_that_was_set() {
    let err = Config::load(None, env(&[("NEO_TOKEN_MAX_TTL", "10")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid configuration: environment variable NEO_TOKEN_MAX_TTL, key token.max_ttl = 10:"),
        "{err}"
    );
    // (The built-in default, or config/default.toml when the tests run where it is.)
    assert!(err.contains("; token.min_ttl is 60, from the "), "{err}");

    let err = Config::load(None, env(&[("NEO_TOKEN_MIN_TTL", "7200")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid configuration: environment variable NEO_TOKEN_MIN_TTL, key token.min_ttl = 7200:"),
        "{err}"
    );
}

/// A variable of a key that takes text is that text: `NEO_LISTEN=8080` is an address problem,
/// not "expected a string".
#[test]
fn a_port_alone_is_answered_with_the_addresses_it_could_mean() {
    let err = Config::load(None, env(&[("NEO_LISTEN", "8080")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("environment variable NEO_LISTEN, key server.listen"),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:8080 or 0.0.0.0:8080"), "{err}");
    assert!(!err.contains("a string"), "{err}");
    let config = Config::load(None, env(&[("NEO_TOKEN_ISSUER", "12345")])).unwrap();
    assert_eq!(config.token.issuer, "12345");
}

/// The OpenTelemetry exporter's standard variables feed `[trace]`; a bad URL names its variable.
#[test]
fn the_standard_otel_variables_configure_trace_export() {
    let config = Config::load(None, env(&[])).unwrap();
    assert_eq!(config.trace.traces_url(), None, "export is off by default");
    assert_eq!(config.trace.service_name, "neo-sessions");

    let config = Config::load(
        None,
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "sessions-eu"),
        ]),
    )
    .unwrap();
    assert_eq!(
        config.trace.traces_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(config.trace.service_name, "sessions-eu");

    let config = Config::load(
        None,
        env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector/otlp/traces",
        )]),
    )
    .unwrap();
    assert_eq!(
        config.trace.traces_url().as_deref(),
        Some("https://collector/otlp/traces")
    );

    let err = Config::load(
        None,
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("trace.otlp_endpoint must be an http:// or https:// URL")
            && err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{err}"
    );
}
