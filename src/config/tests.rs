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
        err.contains("from environment variable NEO_TOKEN_MIN_TTL"),
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
                "{key} must be at least 1 (from environment variable {var})"
            )),
            "{err}"
        );
        let (section, field) = key.split_once('.').unwrap();
        std::fs::write(&path, format!("[{section}]\n{field} = 0\n")).unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{key} must be at least 1 (from {}",
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
