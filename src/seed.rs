//! `neo-sessions seed FILE`: the fixture format of docs/operating.md ("Commands"), checked and turned into a [`SeedPlan`].

use std::collections::HashMap;

use serde::Deserialize;

use crate::{
    auth::{api_key, principal::Scopes},
    directory::{check_text, AgentEntry, EndCompanyEntry, EntryError, SessionEntry, TenantEntry},
    store::{SeedApiKey, SeedPlan},
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fixture {
    pub tenants: Vec<TenantEntry>,
    pub end_companies: Vec<EndCompanyEntry>,
    pub agents: Vec<AgentEntry>,
    pub sessions: Vec<SessionEntry>,
    pub api_keys: Vec<FixtureApiKey>,
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
    /// `directory:read`, `directory:write`); absent: the first four, what keys could do before
    /// scopes and reading their tenant's directory.
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

        // The directory's rows, checked as `directory import` checks them.
        let refused = |what: &str, id: &dyn std::fmt::Display, e: EntryError| {
            FixtureError(format!("{what} {id}: {e}"))
        };
        for t in self.tenants {
            plan.tenants
                .push(t.check().map_err(|e| refused("tenant", &t.id, e))?);
        }
        for c in self.end_companies {
            plan.end_companies
                .push(c.check().map_err(|e| refused("end company", &c.id, e))?);
        }
        for a in self.agents {
            plan.agents
                .push(a.check().map_err(|e| refused("agent", &a.id, e))?);
        }
        for s in self.sessions {
            plan.sessions
                .push(s.check().map_err(|e| refused("session", &s.id, e))?);
        }
        for k in self.api_keys {
            check_text("id", &k.id).map_err(|e| refused("API key", &k.id, e))?;
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
