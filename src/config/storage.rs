//! `[database]`, `[data]`, `[audit]` and `[cache]`: where the data lives and how long, and what
//! is held in memory.

use std::{num::NonZeroU32, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::Secret;

/// The database backend a URL names: its scheme decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    Postgres,
    Sqlite,
}

impl DatabaseBackend {
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "sqlite" => Some(Self::Sqlite),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Unset: the embedded SQLite database in the data directory.
    pub url: Option<Secret>,
    pub max_connections: NonZeroU32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Where the embedded SQLite database lives and, on it, the key-encryption key generated when
    /// none is configured (created mode 0700). The signing keys are sealed in the database, not
    /// kept here.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Mint records whose token expired more than this many days ago are deleted (in bounded
    /// batches, in the background). 0 keeps them forever.
    pub retention_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Sessions held in memory for the mint rules (and as many agent and end-company answers),
    /// kept exact by change notifications. 0 reads every mint's session from the database.
    pub session_entries: usize,
}
