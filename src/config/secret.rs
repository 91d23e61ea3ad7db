//! The one wrapper for secret settings: its `Debug` and `Serialize` never show the secret, so
//! every config struct can derive both.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// A secret setting (a database or Redis URL with a password, the key-encryption key). Printed,
/// it is [`redact_url`] of its value: a URL keeps all but its password, anything else is `***`.
/// The value is read with [`ExposeSecret::expose_secret`] and zeroed on drop.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct Secret(SecretString);

impl Secret {
    /// What `Debug`, `Serialize` and logs show instead of the value.
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose_secret())
    }
}

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}

/// A URL as it may be printed: its password (`user:password@`, and any query parameter whose
/// name says password, as `?password=` that PostgreSQL takes) replaced by `***`, the rest kept so
/// that an error still says which database; anything that does not parse as a URL is hidden
/// whole. Parsed as the database drivers parse it (the `url` crate), so what is hidden is what
/// they would send.
pub fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let Ok(mut parsed) = url::Url::parse(url) else {
        return HIDDEN.to_owned();
    };
    if parsed.password().is_some() && parsed.set_password(Some(HIDDEN)).is_err() {
        return HIDDEN.to_owned();
    }
    let secret_parameter = |name: &str| name.to_ascii_lowercase().contains("password");
    if parsed
        .query_pairs()
        .any(|(name, _)| secret_parameter(&name))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret_parameter(&name) {
                    HIDDEN.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_as_its_redaction() {
        for (value, shown) in [
            (
                "postgres://neo:hunter2@db:5432/neo",
                "postgres://neo:***@db:5432/neo",
            ),
            ("redis://:s3cret@cache:6379", "redis://:***@cache:6379"),
            ("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "***"),
            ("redis://cache:6379", "redis://cache:6379"),
            (
                "postgres://neo@db/neo?sslmode=require&password=hunter2",
                "postgres://neo@db/neo?sslmode=require&password=***",
            ),
            (
                "postgres://db/neo?user=neo&PassWord=hunter2&sslpassword=x",
                "postgres://db/neo?user=neo&PassWord=***&sslpassword=***",
            ),
            // An unencoded `@` in the password: the host is after the last one.
            (
                "postgres://neo:hun@ter2@db/neo",
                "postgres://neo:***@db/neo",
            ),
            (
                "sqlite:///var/lib/neo/neo.db",
                "sqlite:///var/lib/neo/neo.db",
            ),
            ("not a url hunter2", "***"),
        ] {
            let secret = Secret::from(value.to_owned());
            assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
            assert_eq!(serde_json::to_value(&secret).unwrap(), shown);
            assert_eq!(secret.expose_secret(), value);
        }
    }
}
