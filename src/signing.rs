//! Signing keys with a life cycle, shared by every replica through the database.
//!
//! A key is inserted `next` with the time it starts signing (`activates_at`, at least the lead
//! time ahead, which is longer than the JWKS `max-age`); from then on every replica publishes it,
//! and at `activates_at` every replica signs with it (the time is stored, so replicas never
//! compute it). Its predecessor is `retired` from that moment and stays published until the last
//! token it signed has expired (max TTL plus leeway), then it is `removed` from the JWKS. Each
//! replica reloads the keys every `signing.reload_seconds`.
//!
//! With `signing.key_file` there is one static key and nothing in the database.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    config::{Config, SigningAlgorithm},
    store::{SigningKeyRow, Store, StoreError},
    tokens::{
        keys::{KeyError, SigningKey},
        seal::{ClaimsMac, Kek, SealError},
        KeyRing, KeyState, TokenIssuer,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signing keys: {0}")]
    Store(#[from] StoreError),
    #[error("signing key {kid} has an unknown algorithm {algorithm:?}")]
    Algorithm { kid: String, algorithm: String },
    #[error("a rotation is pending already: key {kid} starts signing at {activates_at}")]
    RotationPending {
        kid: String,
        activates_at: DateTime<Utc>,
    },
    #[error("signing key {kid} is in the database already")]
    Exists { kid: String },
    #[error("another replica or command changed the signing keys at the same moment; try again")]
    Conflict,
    #[error("no signing key in the database signs now")]
    NoActiveKey,
}

/// A key as `signing-key list` shows it (nothing secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyListing {
    pub kid: String,
    pub algorithm: String,
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
    /// When its successor took over.
    pub retired_at: Option<DateTime<Utc>>,
    /// When it leaves the JWKS (retired plus max TTL plus leeway).
    pub removed_at: Option<DateTime<Utc>>,
}

/// How long a retired key stays published: the longest a token it signed can live, plus the
/// leeway verifiers allow.
pub fn retire_window(config: &Config) -> i64 {
    i64::from(config.token.max_ttl) + i64::try_from(config.token.leeway_seconds).unwrap_or(0)
}

fn algorithm_of(row: &SigningKeyRow) -> Result<SigningAlgorithm, SigningError> {
    match row.algorithm.as_str() {
        "ES256" => Ok(SigningAlgorithm::ES256),
        "EdDSA" => Ok(SigningAlgorithm::EdDSA),
        "RS256" => Ok(SigningAlgorithm::RS256),
        other => Err(SigningError::Algorithm {
            kid: row.kid.clone(),
            algorithm: other.to_owned(),
        }),
    }
}

/// The issuer for `serve`: the static key file, or the database's keys (creating the first one,
/// importing a key an earlier version generated in the data directory). A key that cannot be
/// decrypted stops start-up; nothing is written then.
pub async fn start(config: &Config, store: Arc<Store>) -> Result<Arc<TokenIssuer>, SigningError> {
    if let Some(path) = &config.signing.key_file {
        let key = SigningKey::from_file(path, config.signing.algorithm)?;
        // No KEK in this mode: the key file is the secret the database does not hold.
        let claims_mac = ClaimsMac::derive(&key.to_pkcs8()?);
        return Ok(Arc::new(TokenIssuer::new(
            KeyRing::single(key)?,
            &config.token,
            claims_mac,
        )));
    }
    let kek = Kek::load_or_generate(&config.signing, &config.data.dir)?;
    let mut loaded = HashMap::new();
    let ring = match load_or_create(config, store.as_ref(), &kek, &mut loaded).await {
        Ok(ring) => ring,
        // The database is not reachable yet (it is waited for in the background): start with
        // no key; the reload loop loads them as soon as it answers, and mints wait for that
        // with 503s (readiness says why).
        Err(SigningError::Store(error)) if error.is_unavailable() => {
            tracing::warn!(%error, "signing keys not loaded: the database is not reachable yet");
            KeyRing::new(Vec::new(), retire_window(config))?
        }
        Err(error) => return Err(error),
    };
    let issuer = Arc::new(TokenIssuer::new(ring, &config.token, kek.claims_mac()));
    spawn_reload(config.clone(), store, kek, Arc::clone(&issuer), loaded);
    Ok(issuer)
}

/// The database's keys as a ring; creates the first key (or imports the one an earlier version
/// generated in the data directory) when there is none.
async fn load_or_create(
    config: &Config,
    store: &Store,
    kek: &Kek,
    loaded: &mut HashMap<String, Arc<Vec<u8>>>,
) -> Result<KeyRing, SigningError> {
    let mut rows = store.signing_keys().await?;
    if rows.is_empty() {
        let legacy = SigningKey::legacy_generated_path(&config.data.dir, config.signing.algorithm);
        let first = if legacy.exists() {
            tracing::info!(path = %legacy.display(), "importing the signing key generated by an earlier version");
            SigningKey::from_file(&legacy, config.signing.algorithm)?
        } else {
            SigningKey::generate(config.signing.algorithm)?.0
        };
        // Nothing can hold a token yet: the first key signs at once. Another replica may insert
        // its own first key at the same moment; then its key is the one.
        match insert(store, kek, &first, 1, Utc::now()).await {
            Ok(()) | Err(SigningError::Conflict) => {}
            Err(error) => return Err(error),
        }
        rows = store.signing_keys().await?;
    }
    let ring = ring_of(config, kek, &rows, loaded)?;
    if ring.active(Utc::now().timestamp()).is_none() {
        return Err(SigningError::NoActiveKey);
    }
    Ok(ring)
}

/// Decrypts the keys that are still published (reusing those decrypted before) into a ring.
fn ring_of(
    config: &Config,
    kek: &Kek,
    rows: &[SigningKeyRow],
    loaded: &mut HashMap<String, Arc<Vec<u8>>>,
) -> Result<KeyRing, SigningError> {
    let window = retire_window(config);
    let now = Utc::now().timestamp();
    let mut keys = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let retired_at = rows.get(i + 1).map(|next| next.activates_at.timestamp());
        if retired_at.is_some_and(|at| at.saturating_add(window) <= now) {
            continue; // removed: nothing to decrypt
        }
        let algorithm = algorithm_of(row)?;
        let der = match loaded.get(&row.kid) {
            Some(der) => Arc::clone(der),
            None => {
                let der = Arc::new(kek.open(&row.kid, &row.sealed_private_key)?);
                loaded.insert(row.kid.clone(), Arc::clone(&der));
                der
            }
        };
        let key = SigningKey::from_stored(&der, algorithm, &row.kid)?;
        keys.push((key, row.activates_at.timestamp()));
    }
    Ok(KeyRing::new(keys, window)?)
}

async fn insert(
    store: &Store,
    kek: &Kek,
    key: &SigningKey,
    generation: i64,
    activates_at: DateTime<Utc>,
) -> Result<(), SigningError> {
    let der = key.to_pkcs8()?;
    let row = SigningKeyRow {
        kid: key.kid().to_owned(),
        generation,
        algorithm: key.algorithm().as_str().to_owned(),
        sealed_private_key: kek.seal(key.kid(), &der)?,
        created_at: Utc::now(),
        activates_at,
    };
    if store.insert_signing_key(&row).await? {
        Ok(())
    } else {
        Err(SigningError::Conflict)
    }
}

/// Reloads the keys every `signing.reload_seconds` and, with `signing.rotate_days`, rotates when
/// the active key is that old. A reload that fails keeps the keys held.
fn spawn_reload(
    config: Config,
    store: Arc<Store>,
    kek: Kek,
    issuer: Arc<TokenIssuer>,
    mut loaded: HashMap<String, Arc<Vec<u8>>>,
) {
    let interval = Duration::from_secs(config.signing.reload_seconds.get());
    let issuer = Arc::downgrade(&issuer);
    tokio::spawn(async move {
        let mut known: Vec<String> = Vec::new();
        loop {
            let Some(held) = issuer.upgrade() else {
                return;
            };
            // Without keys (the database was down at start) look every second, not every
            // reload interval.
            let empty = held.ring().keys().is_empty();
            drop(held);
            tokio::time::sleep(if empty {
                Duration::from_secs(1)
            } else {
                interval
            })
            .await;
            let Some(issuer) = issuer.upgrade() else {
                return;
            };
            if empty {
                match load_or_create(&config, store.as_ref(), &kek, &mut loaded).await {
                    Ok(ring) => {
                        tracing::info!("signing keys loaded");
                        issuer.replace_ring(ring);
                    }
                    Err(error) => tracing::debug!(%error, "signing keys not loaded yet"),
                }
                continue;
            }
            if config.signing.rotate_days > 0 {
                match rotate_if_due(&config, store.as_ref(), &kek).await {
                    Ok(Some(kid)) => tracing::info!(kid, "rotated the signing key (automatic)"),
                    Ok(None) | Err(SigningError::Conflict) => {}
                    Err(error) => tracing::warn!(%error, "automatic signing-key rotation failed"),
                }
            }
            let rows = match store.signing_keys().await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "cannot reload the signing keys; keeping the keys held");
                    continue;
                }
            };
            let kids: Vec<String> = rows.iter().map(|r| r.kid.clone()).collect();
            // States change with time alone (computed per request); only new rows need a
            // rebuild.
            if kids == known {
                continue;
            }
            match ring_of(&config, &kek, &rows, &mut loaded) {
                Ok(ring) => {
                    tracing::info!(keys = kids.len(), "reloaded the signing keys");
                    issuer.replace_ring(ring);
                    known = kids;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load the signing keys; keeping the keys held")
                }
            }
        }
    });
}

/// A `next` key that starts signing `signing.lead_seconds` from now. Refused while another
/// rotation is pending.
pub async fn rotate(
    config: &Config,
    store: &Store,
    algorithm: SigningAlgorithm,
) -> Result<(String, DateTime<Utc>), SigningError> {
    let kek = Kek::load_or_generate(&config.signing, &config.data.dir)?;
    let rows = store.signing_keys().await?;
    let key = SigningKey::generate(algorithm)?.0;
    add_next(config, store, &kek, &rows, &key).await
}

async fn add_next(
    config: &Config,
    store: &Store,
    kek: &Kek,
    rows: &[SigningKeyRow],
    key: &SigningKey,
) -> Result<(String, DateTime<Utc>), SigningError> {
    let now = Utc::now();
    if let Some(pending) = rows.iter().find(|r| r.activates_at > now) {
        return Err(SigningError::RotationPending {
            kid: pending.kid.clone(),
            activates_at: pending.activates_at,
        });
    }
    if rows.iter().any(|r| r.kid == key.kid()) {
        return Err(SigningError::Exists {
            kid: key.kid().to_owned(),
        });
    }
    let generation = rows.iter().map(|r| r.generation).max().unwrap_or(0) + 1;
    let lead = i64::try_from(config.signing.lead_seconds).unwrap_or(i64::MAX);
    // The first key signs at once (nothing can hold a token of ours yet).
    let activates_at = if rows.is_empty() {
        now
    } else {
        now + chrono::Duration::seconds(lead)
    };
    insert(store, kek, key, generation, activates_at).await?;
    Ok((key.kid().to_owned(), activates_at))
}

async fn rotate_if_due(
    config: &Config,
    store: &Store,
    kek: &Kek,
) -> Result<Option<String>, SigningError> {
    let rows = store.signing_keys().await?;
    let Some(newest) = rows.last() else {
        return Ok(None);
    };
    let age = Utc::now() - newest.activates_at;
    if age < chrono::Duration::days(i64::from(config.signing.rotate_days)) {
        return Ok(None);
    }
    let key = SigningKey::generate(config.signing.algorithm)?.0;
    let (kid, _) = add_next(config, store, kek, &rows, &key).await?;
    Ok(Some(kid))
}

/// Imports a PEM key file (e.g. the one `NEO_SIGNING_KEY_FILE` named) into the database: the
/// first key signs at once, any later one after the lead time, like a rotation.
pub async fn import(
    config: &Config,
    store: &Store,
    path: &Path,
    algorithm: SigningAlgorithm,
) -> Result<(String, DateTime<Utc>), SigningError> {
    let kek = Kek::load_or_generate(&config.signing, &config.data.dir)?;
    let key = SigningKey::from_file(path, algorithm)?;
    let rows = store.signing_keys().await?;
    add_next(config, store, &kek, &rows, &key).await
}

/// The keys with their states and transition times (nothing is decrypted).
pub async fn list(config: &Config, store: &Store) -> Result<Vec<KeyListing>, SigningError> {
    let rows = store.signing_keys().await?;
    let window = retire_window(config);
    let now = Utc::now();
    let at = |secs: i64| Utc.timestamp_opt(secs, 0).single();
    Ok(rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let retired_at = rows.get(i + 1).map(|next| next.activates_at);
            let removed_at = retired_at.and_then(|r| at(r.timestamp().saturating_add(window)));
            let state = if row.activates_at > now {
                KeyState::Next
            } else {
                match (retired_at, removed_at) {
                    (Some(_), Some(removed)) if removed <= now => KeyState::Removed,
                    (Some(retired), _) if retired <= now => KeyState::Retired,
                    _ => KeyState::Active,
                }
            };
            KeyListing {
                kid: row.kid.clone(),
                algorithm: row.algorithm.clone(),
                state: state.as_str(),
                created_at: row.created_at,
                activates_at: row.activates_at,
                retired_at,
                removed_at,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in_temp_dir() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.data.dir = dir.path().join("data");
        (dir, config)
    }

    #[tokio::test]
    async fn automatic_rotation_adds_one_next_key_when_the_newest_is_old_enough() {
        let (_keep, _url, store) = crate::store::seeded_sqlite_for_tests().await;
        let (_dir, mut config) = config_in_temp_dir();
        config.signing.rotate_days = 1;
        let kek = Kek::load_or_generate(&config.signing, &config.data.dir).expect("kek");
        let old = SigningKey::generate(SigningAlgorithm::ES256)
            .expect("key")
            .0;
        insert(
            store.as_ref(),
            &kek,
            &old,
            1,
            Utc::now() - chrono::Duration::days(2),
        )
        .await
        .expect("insert");

        let kid = rotate_if_due(&config, store.as_ref(), &kek)
            .await
            .expect("rotate")
            .expect("due");
        // The newest key is the pending one now: a second look adds nothing.
        assert!(rotate_if_due(&config, store.as_ref(), &kek)
            .await
            .expect("look")
            .is_none());
        let listed = list(&config, store.as_ref()).await.expect("list");
        let states: Vec<(&str, &str)> = listed.iter().map(|k| (k.kid.as_str(), k.state)).collect();
        assert_eq!(states, [(old.kid(), "active"), (kid.as_str(), "next")]);

        // Not due yet: nothing happens.
        config.signing.rotate_days = 30;
        let (_keep2, _url2, fresh) = crate::store::seeded_sqlite_for_tests().await;
        insert(fresh.as_ref(), &kek, &old, 1, Utc::now())
            .await
            .expect("insert");
        assert!(rotate_if_due(&config, fresh.as_ref(), &kek)
            .await
            .expect("look")
            .is_none());
    }
}
