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
        ] {
            let secret = Secret::from(value.to_owned());
            assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
            assert_eq!(serde_json::to_value(&secret).unwrap(), shown);
            assert_eq!(secret.expose_secret(), value);
        }
    }
}
