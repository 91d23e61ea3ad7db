//! What the mint rules read of the platform's data (a session, whether an end company or an
//! agent belongs to a tenant), through an in-process cache that change notifications keep exact:
//! each changed row drops its own entry, so a session leaving `active`, an agent removed or an
//! end company re-scoped is honoured by the next mint once the notification arrives. While the
//! notification feed is down, every lookup goes to the database.

use std::sync::Arc;

use super::{SessionRow, Store, StoreResult};
use crate::freshness::{Follower, Freshness, KeyedCache, Topic};

pub struct SessionCache {
    store: Arc<Store>,
    /// Sessions that exist (an unknown id is not cached: a new session needs no notification).
    sessions: KeyedCache<String, Arc<SessionRow>>,
    /// `(tenant, agent)` → whether the agent is the tenant's.
    agents: KeyedCache<(String, i64), bool>,
    /// `(tenant, end company)` → whether the end company is the tenant's.
    end_companies: KeyedCache<(String, String), bool>,
}

impl SessionCache {
    /// Holds about `capacity` sessions (and as many agent and end-company answers); 0 caches
    /// nothing. Follows `freshness` for as long as the process runs.
    pub fn new(store: Arc<Store>, capacity: usize, freshness: &Arc<Freshness>) -> Arc<Self> {
        let directory = Arc::new(Self {
            store,
            sessions: KeyedCache::new(capacity, Arc::clone(freshness)),
            agents: KeyedCache::new(capacity, Arc::clone(freshness)),
            end_companies: KeyedCache::new(capacity, Arc::clone(freshness)),
        });
        freshness.follow(Arc::clone(&directory) as Arc<dyn Follower>);
        directory
    }

    /// The session, from the cache or the store.
    pub async fn session(&self, session_id: &str) -> StoreResult<Option<Arc<SessionRow>>> {
        if let Some(session) = self.sessions.get(session_id) {
            return Ok(Some(session));
        }
        let ticket = self.sessions.ticket();
        let session = self.store.find_session(session_id).await?.map(Arc::new);
        if let Some(session) = &session {
            self.sessions
                .insert(ticket, session.id.clone(), Arc::clone(session));
        }
        Ok(session)
    }

    pub async fn end_company_exists(
        &self,
        tenant_id: &str,
        end_company_id: &str,
    ) -> StoreResult<bool> {
        let key = (tenant_id.to_owned(), end_company_id.to_owned());
        if let Some(exists) = self.end_companies.get(&key) {
            return Ok(exists);
        }
        let ticket = self.end_companies.ticket();
        let exists = self
            .store
            .end_company_exists(tenant_id, end_company_id)
            .await?;
        self.end_companies.insert(ticket, key, exists);
        Ok(exists)
    }

    /// The subset of `agent_ids` that are agents of `tenant_id` (in the order given).
    pub async fn existing_agents(
        &self,
        tenant_id: &str,
        agent_ids: &[i64],
    ) -> StoreResult<Vec<i64>> {
        let mut existing = Vec::with_capacity(agent_ids.len());
        let mut unknown = Vec::new();
        for id in agent_ids {
            match self.agents.get(&(tenant_id.to_owned(), *id)) {
                Some(true) => existing.push(*id),
                Some(false) => {}
                None => unknown.push(*id),
            }
        }
        if unknown.is_empty() {
            return Ok(existing);
        }
        let ticket = self.agents.ticket();
        let found = self.store.existing_agents(tenant_id, &unknown).await?;
        for id in &unknown {
            self.agents
                .insert(ticket, (tenant_id.to_owned(), *id), found.contains(id));
        }
        Ok(agent_ids
            .iter()
            .copied()
            .filter(|id| existing.contains(id) || found.contains(id))
            .collect())
    }

    /// Sessions held (for metrics).
    pub fn sessions_held(&self) -> usize {
        self.sessions.len()
    }
}

impl Follower for SessionCache {
    fn row_changed(&self, topic: Topic, tenant_id: &str, id: &str) {
        let whole_table = tenant_id.is_empty() && id.is_empty();
        match topic {
            Topic::Sessions if whole_table => self.sessions.clear(),
            Topic::Sessions => self.sessions.invalidate(id),
            Topic::Agents => match id.parse::<i64>() {
                Ok(agent) if !whole_table => {
                    self.agents.invalidate(&(tenant_id.to_owned(), agent));
                }
                _ => self.agents.clear(),
            },
            Topic::EndCompanies if whole_table => self.end_companies.clear(),
            Topic::EndCompanies => self
                .end_companies
                .invalidate(&(tenant_id.to_owned(), id.to_owned())),
            // A tenant changed or went: what is held of it may no longer hold.
            Topic::Tenants => self.reset(),
            Topic::ApiKeys | Topic::RateLimits | Topic::SigningKeys => {}
        }
    }

    fn reset(&self) {
        self.sessions.clear();
        self.agents.clear();
        self.end_companies.clear();
    }
}
