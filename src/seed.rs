//! `neo-sessions seed FILE`: the fixture format of docs/operating.md ("Commands"), checked and turned into a [`SeedPlan`].

use std::collections::HashMap;

use serde::Deserialize;

use crate::{
    auth::{api_key, principal::Scopes},
    store::{
        SeedAgent, SeedApiKey, SeedEndCompany, SeedPlan, SeedTenant, SessionKind, SessionRow,
        SessionStatus,
    },
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fixture {
    pub tenants: Vec<FixtureTenant>,
    pub end_companies: Vec<FixtureEndCompany>,
    pub agents: Vec<FixtureAgent>,
    pub sessions: Vec<FixtureSession>,
    pub api_keys: Vec<FixtureApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureTenant {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub platform: bool,
    #[serde(default)]
    pub entra_tenant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureEndCompany {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureAgent {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureSession {
    pub id: String,
    pub tenant_id: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub end_company_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub secret: Option<String>,
    /// What the key may do (`sessions:mint`, `tokens:manage`, `revocations:read`,
    /// `directory:write`); absent: the first three, what keys could do before scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid fixture: {0}")]
pub struct FixtureError(String);

/// A checked plan, and the secrets generated for keys given without one (by key id).
pub struct Prepared {
    pub plan: SeedPlan,
    pub generated_secrets: HashMap<String, String>,
}

impl Fixture {
    pub fn from_json(text: &str) -> Result<Self, FixtureError> {
        serde_json::from_str(text).map_err(|e| FixtureError(e.to_string()))
    }

    /// Checks ids and enumerations and hashes key secrets. `env` is the environment of generated keys.
    pub fn prepare(self, env: &str) -> Result<Prepared, FixtureError> {
        let mut plan = SeedPlan::default();
        let mut generated_secrets = HashMap::new();

        for t in self.tenants {
            check_id("tenant id", &t.id)?;
            let entra_tenant_id = match t.entra_tenant_id {
                None => None,
                Some(tid) => Some(
                    uuid::Uuid::try_parse(&tid)
                        .map_err(|_| {
                            FixtureError(format!("tenant {}: entra_tenant_id must be a GUID", t.id))
                        })?
                        .to_string(),
                ),
            };
            plan.tenants.push(SeedTenant {
                id: t.id,
                name: t.name,
                platform: t.platform,
                entra_tenant_id,
            });
        }
        for c in self.end_companies {
            check_id("end company id", &c.id)?;
            plan.end_companies.push(SeedEndCompany {
                id: c.id,
                tenant_id: c.tenant_id,
                name: c.name,
            });
        }
        for a in self.agents {
            plan.agents.push(SeedAgent {
                id: a.id,
                tenant_id: a.tenant_id,
                name: a.name,
            });
        }
        for s in self.sessions {
            check_id("session id", &s.id)?;
            let kind = match s.kind.as_deref() {
                None => SessionKind::Standard,
                Some(word) => SessionKind::ALL
                    .into_iter()
                    .find(|kind| kind.as_str() == word)
                    .ok_or_else(|| {
                        FixtureError(format!(
                            "session {}: kind must be standard or neo_support",
                            s.id
                        ))
                    })?,
            };
            let status = match s.status.as_deref() {
                None => SessionStatus::Active,
                Some(word) => SessionStatus::ALL
                    .into_iter()
                    .find(|status| status.as_str() == word)
                    .ok_or_else(|| {
                        FixtureError(format!("session {}: status must be active or closed", s.id))
                    })?,
            };
            plan.sessions.push(SessionRow {
                id: s.id,
                tenant_id: s.tenant_id,
                kind,
                status,
                end_company_id: s.end_company_id,
            });
        }
        for k in self.api_keys {
            check_id("API key id", &k.id)?;
            let (secret, replace_existing_hash) = match k.secret {
                Some(secret) => {
                    if api_key::key_env(&secret).is_none() {
                        return Err(FixtureError(format!(
                            "API key {}: secret must look like neo_sk_<env>_<16 to 128 letters or digits>",
                            k.id
                        )));
                    }
                    (secret, true)
                }
                None => {
                    let secret = api_key::generate(env).map_err(|e| FixtureError(e.to_string()))?;
                    generated_secrets.insert(k.id.clone(), secret.clone());
                    (secret, false)
                }
            };
            let scopes = match &k.scopes {
                None => Scopes::LEGACY,
                Some(names) => Scopes::parse_names(names.iter().map(String::as_str))
                    .map_err(|why| FixtureError(format!("API key {}: {why}", k.id)))?,
            };
            plan.api_keys.push(SeedApiKey {
                key_hash: api_key::hash(&secret),
                scopes,
                id: k.id,
                tenant_id: k.tenant_id,
                name: k.name,
                revoked: k.revoked,
                replace_existing_hash,
            });
        }
        Ok(Prepared {
            plan,
            generated_secrets,
        })
    }
}

fn check_id(what: &str, id: &str) -> Result<(), FixtureError> {
    if id.is_empty() || id.chars().count() > 255 || id.chars().any(char::is_control) {
        return Err(FixtureError(format!(
            "{what} {id:?} must be 1 to 255 characters without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_fixture_parses_with_its_defaults() {
        let text = include_str!("../config/seed.example.json");
        let prepared = Fixture::from_json(text).unwrap().prepare("test").unwrap();
        let plan = prepared.plan;
        let acme_1 = plan.sessions.iter().find(|s| s.id == "s-acme-1").unwrap();
        assert_eq!(
            (acme_1.kind.as_str(), acme_1.status.as_str()),
            ("standard", "active")
        );
        assert!(plan.api_keys.iter().any(|k| k.id == "k-old" && k.revoked));
        assert!(plan.tenants.iter().any(|t| t.id == "neo" && t.platform));
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Fixture::from_json(r#"{"tenant": []}"#).is_err());
        let bad_kind = r#"{"sessions": [{"id": "s", "tenant_id": "t", "kind": "vip"}]}"#;
        assert!(Fixture::from_json(bad_kind)
            .unwrap()
            .prepare("test")
            .is_err());
        let bad_secret =
            r#"{"api_keys": [{"id": "k", "tenant_id": "t", "name": "n", "secret": "hunter2"}]}"#;
        assert!(Fixture::from_json(bad_secret)
            .unwrap()
            .prepare("test")
            .is_err());
    }

    #[test]
    fn keys_without_secret_get_one_generated_for_the_env() {
        let text = r#"{"api_keys": [{"id": "k", "tenant_id": "t", "name": "n"}]}"#;
        let prepared = Fixture::from_json(text).unwrap().prepare("live").unwrap();
        let secret = &prepared.generated_secrets["k"];
        assert_eq!(api_key::key_env(secret), Some("live"));
        assert!(!prepared.plan.api_keys[0].replace_existing_hash);
    }
}
