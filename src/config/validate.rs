//! The rules a parsed configuration must also meet: ranges between keys, formats. A single key's
//! "at least 1" is its type (`NonZero*`), not a rule here. Each message says what a valid value
//! is; `load` adds each key's value and where it came from.

use secrecy::ExposeSecret;

use super::{is_valid_key_env, Config, DatabaseBackend};

/// A value that parsed but is not allowed: the keys involved (one, or the two a rule relates)
/// and what is wrong with them and what would do.
pub struct Invalid {
    pub keys: &'static [&'static str],
    pub message: String,
}

fn invalid(keys: &'static [&'static str], message: impl Into<String>) -> Invalid {
    Invalid {
        keys,
        message: message.into(),
    }
}

pub fn validate(config: &Config) -> Result<(), Invalid> {
    let t = &config.token;
    if t.min_ttl.get() > t.max_ttl {
        return Err(invalid(
            &["token.max_ttl", "token.min_ttl"],
            format!(
                "token.max_ttl must be at least token.min_ttl: set token.max_ttl to {} or more, or token.min_ttl to {} or less",
                t.min_ttl, t.max_ttl
            ),
        ));
    }
    if !(t.min_ttl.get()..=t.max_ttl).contains(&t.default_ttl) {
        return Err(invalid(
            &["token.default_ttl", "token.min_ttl", "token.max_ttl"],
            format!(
                "token.default_ttl must lie between token.min_ttl and token.max_ttl: a whole number of seconds from {} to {}",
                t.min_ttl, t.max_ttl
            ),
        ));
    }
    if t.issuer.trim().is_empty() {
        return Err(invalid(
            &["token.issuer"],
            "token.issuer must not be empty; expected the issuer URL of minted tokens, e.g. \"https://api.neoagent.io\"",
        ));
    }
    if t.audience.trim().is_empty() {
        return Err(invalid(
            &["token.audience"],
            "token.audience must not be empty; expected the audience of minted tokens, e.g. \"https://api.neoagent.io/chat\"",
        ));
    }
    if t.scope
        .split_whitespace()
        .any(|s| s.contains("mint") || s.contains("revoke"))
    {
        return Err(invalid(
            &["token.scope"],
            "token.scope is an end user's scope and may not grant minting or revoking; expected space-separated scopes naming neither `mint` nor `revoke`, e.g. \"chat:session\"",
        ));
    }
    if !is_valid_key_env(&config.api_key.env) {
        return Err(invalid(
            &["api_key.env"],
            "api_key.env must be 1 to 16 lowercase letters or digits, e.g. \"live\" or \"test\"",
        ));
    }
    let trace = &config.trace;
    let endpoints: [(&'static [&'static str], &Option<String>); 2] = [
        (&["trace.otlp_endpoint"], &trace.otlp_endpoint),
        (&["trace.otlp_traces_endpoint"], &trace.otlp_traces_endpoint),
    ];
    for (keys, url) in endpoints {
        let Some(url) = url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            continue;
        };
        let parsed = url::Url::parse(url).ok();
        if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
            return Err(invalid(
                keys,
                format!(
                    "{} must be an http:// or https:// URL, e.g. http://otel-collector:4318",
                    keys[0]
                ),
            ));
        }
    }
    if trace.service_name.trim().is_empty() {
        return Err(invalid(
            &["trace.service_name"],
            "trace.service_name must not be empty, e.g. \"neo-sessions\"",
        ));
    }
    let signing = &config.signing;
    if signing.lead_seconds <= signing.jwks_max_age_seconds {
        return Err(invalid(
            &["signing.lead_seconds", "signing.jwks_max_age_seconds"],
            format!(
                "signing.lead_seconds must be longer than signing.jwks_max_age_seconds (a verifier must see a key before it signs): set signing.lead_seconds to {} or more, or signing.jwks_max_age_seconds to {} or less",
                signing.jwks_max_age_seconds.saturating_add(1),
                signing.lead_seconds.saturating_sub(1)
            ),
        ));
    }
    if signing.reload_seconds.get() >= signing.lead_seconds {
        return Err(invalid(
            &["signing.reload_seconds", "signing.lead_seconds"],
            format!(
                "signing.reload_seconds must be shorter than signing.lead_seconds: a whole number of seconds from 1 to {}",
                signing.lead_seconds.saturating_sub(1)
            ),
        ));
    }
    if let Some(key) = &signing.key_encryption_key {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(key.expose_secret().trim());
        let Some(key) = decoded.ok().filter(|bytes| bytes.len() == 32) else {
            return Err(invalid(
                &["signing.key_encryption_key"],
                "signing.key_encryption_key must be the base64 of exactly 32 bytes (make one with `openssl rand -base64 32`)",
            ));
        };
        // The variable wins; a file naming another key would be ignored without a word, and a
        // replica given only the file would seal with a key the others cannot open.
        if let Some(path) = &signing.key_encryption_key_file {
            let file_key = std::fs::read(path)
                .ok()
                .and_then(|material| kek_file_bytes(&material));
            let Some(file_key) = file_key else {
                return Err(invalid(
                    &["signing.key_encryption_key_file", "signing.key_encryption_key"],
                    "signing.key_encryption_key_file cannot be read or holds no key (expected 32 raw bytes or their base64), and signing.key_encryption_key is set too: set one of them, or both to the same key",
                ));
            };
            if file_key != key {
                return Err(invalid(
                    &["signing.key_encryption_key_file", "signing.key_encryption_key"],
                    "signing.key_encryption_key_file does not hold the same key as signing.key_encryption_key (which wins when both are set): set one of them, or both to the same key",
                ));
            }
        }
    }
    if config.server.body_limit_bytes < 1024 {
        return Err(invalid(
            &["server.body_limit_bytes"],
            "server.body_limit_bytes must be at least 1024; expected a whole number of bytes, e.g. 65536",
        ));
    }
    // hyper panics on a smaller read buffer: refused here, it never gets that far.
    if config.server.max_header_bytes < super::server::MIN_MAX_HEADER_BYTES {
        return Err(invalid(
            &["server.max_header_bytes"],
            "server.max_header_bytes must be at least 8192 (the smallest read buffer the HTTP/1 server accepts); expected a whole number of bytes, e.g. 32768",
        ));
    }
    if let Some(url) = &config.rate_limit.redis_url {
        let url = url.expose_secret();
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(invalid(
                &["rate_limit.redis_url"],
                "rate_limit.redis_url must be a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379",
            ));
        }
    }
    let entra = &config.entra;
    if entra.enabled() {
        if !is_https_or_loopback(&entra.jwks_url) {
            return Err(invalid(
                &["entra.jwks_url"],
                "entra.jwks_url must be an https:// URL without userinfo (http:// only to a loopback address, for tests), e.g. https://login.microsoftonline.com/common/discovery/v2.0/keys",
            ));
        }
        if entra.key_max_age_seconds < entra.refresh_seconds.get() {
            return Err(invalid(
                &["entra.key_max_age_seconds", "entra.refresh_seconds"],
                format!(
                    "entra.key_max_age_seconds must be at least entra.refresh_seconds: set entra.key_max_age_seconds to {} or more, or entra.refresh_seconds to {} or less",
                    entra.refresh_seconds, entra.key_max_age_seconds
                ),
            ));
        }
    }
    if let Some(url) = &config.database.url {
        if DatabaseBackend::of_url(url.expose_secret()).is_none() {
            return Err(invalid(
                &["database.url"],
                "database.url must be a postgres://, postgresql:// or sqlite: URL, e.g. postgres://user:password@host:5432/neo_sessions or sqlite:///var/lib/neo/neo.db",
            ));
        }
    }
    for (key, path) in [
        ("data.dir", Some(&config.data.dir)),
        ("signing.key_file", config.signing.key_file.as_ref()),
        (
            "signing.key_encryption_key_file",
            config.signing.key_encryption_key_file.as_ref(),
        ),
    ] {
        if path.is_some_and(|path| path.as_os_str().is_empty()) {
            return Err(invalid(
                match key {
                    "data.dir" => &["data.dir"],
                    "signing.key_file" => &["signing.key_file"],
                    _ => &["signing.key_encryption_key_file"],
                },
                format!(
                    "{key} must not be empty; expected a path, e.g. {}",
                    super::origin::example(key).unwrap_or_default()
                ),
            ));
        }
    }
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&config.log.filter) {
        return Err(invalid(
            &["log.filter"],
            format!("log.filter is not a tracing filter ({error}); expected comma-separated directives, e.g. \"info\" or \"info,neo_sessions=debug\""),
        ));
    }
    Ok(())
}

/// A key-encryption key file as the sealing reads it: 32 raw bytes, or their base64 (whitespace
/// around it ignored).
fn kek_file_bytes(material: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    if material.len() == 32 {
        return Some(material.to_vec());
    }
    let text = std::str::from_utf8(material).ok()?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .filter(|bytes| bytes.len() == 32)
}

/// Keys are fetched over TLS only; plain HTTP is for a local stand-in (tests, benchmarks). The
/// URL is parsed as the fetch parses it, so the host checked is the host fetched from; userinfo
/// is refused (`http://localhost:1@other-host/` is other-host, and a credential in a URL ends up
/// in logs).
fn is_https_or_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => true,
        ("http", Some(url::Host::Domain(name))) => name == "localhost",
        ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback(),
        ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback(),
        _ => false,
    }
}
