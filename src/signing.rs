//! Signing keys with a life cycle, shared by every replica through the database.
//!
//! A key is inserted `next` with the time it starts signing (`activates_at`, at least the lead
//! time ahead, which is longer than the JWKS `max-age`); from then on every replica publishes it,
//! and at `activates_at` every replica signs with it (the time is stored, so replicas never
//! compute it). Its predecessor is `retired` from that moment and stays published until the last
//! token it signed has expired (max TTL plus leeway), then it is `removed` from the JWKS. Each
//! replica reloads the keys as soon as the change feed says they changed, and every
//! `signing.reload_seconds` in any case.
//!
//! In an emergency a key is `withdrawn` ([`withdraw`]): at once it neither signs nor is
//! published, a successor signs in its place, and the live tokens it signed are revoked.
//!
//! With `signing.key_file` there is one static key and nothing in the database.
//!
//! The private keys are sealed under the key-encryption key (KEK). Only the embedded SQLite
//! database, which no other host shares, gets a KEK generated for it; on PostgreSQL it must be
//! configured, and nothing is written with a KEK that cannot open the keys stored already. A
//! `next` key that has not started signing can be discarded (e.g. one sealed under a wrong KEK).

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    config::{Config, DatabaseBackend, SigningAlgorithm},
    freshness::{Follower, Freshness, Topic},
    store::{KeyWithdrawal, SigningKeyRow, Store, StoreError, Successor},
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
    #[error("no key-encryption key is configured, and one is generated only for the embedded SQLite database: set NEO_KEY_ENCRYPTION_KEY (base64 of 32 bytes: `openssl rand -base64 32`) or NEO_KEY_ENCRYPTION_KEY_FILE, the same on every replica{}", earlier_kek_hint(.generated))]
    KekRequired {
        /// A KEK an earlier version generated in the data directory, if there is one.
        generated: Option<std::path::PathBuf>,
    },
    #[error("the configured key-encryption key ({source_name}) cannot open signing key {kid} stored in the database, so nothing was written: configure the key-encryption key the replicas use{}", discard_hint(.kid, *.next))]
    WrongKek {
        kid: String,
        source_name: String,
        /// Whether that key is a `next` key (which `signing-key discard` can remove).
        next: bool,
    },
    #[error("no signing key {kid} in the database")]
    NotFound { kid: String },
    #[error("signing key {kid} was withdrawn at {withdrawn_at} already")]
    AlreadyWithdrawn {
        kid: String,
        withdrawn_at: DateTime<Utc>,
    },
    #[error("signing key {kid} is {state}: only a `next` key that has not started signing can be discarded (tokens it signed must keep verifying)")]
    NotDiscardable { kid: String, state: &'static str },
    #[error("signing key {kid} starts signing at {activates_at}, within {margin_seconds} s (a replica may not have reloaded by then, or its clock may run ahead): too late to discard; let it take over and rotate again")]
    TooLateToDiscard {
        kid: String,
        activates_at: DateTime<Utc>,
        margin_seconds: i64,
    },
}

fn earlier_kek_hint(generated: &Option<std::path::PathBuf>) -> String {
    match generated {
        Some(path) => format!(
            " (an earlier version generated one in {0}: if the stored keys were sealed with it, set NEO_KEY_ENCRYPTION_KEY_FILE={0})",
            path.display()
        ),
        None => String::new(),
    }
}

fn discard_hint(kid: &str, next: bool) -> String {
    if next {
        format!(" (if key {kid} was sealed with another key by mistake, `neo-sessions signing-key discard {kid}` removes it: it has not signed yet)")
    } else {
        String::new()
    }
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
    /// When it was withdrawn (state `withdrawn`): neither published nor signing since.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

/// The state `signing-key list` shows for a withdrawn key.
pub const WITHDRAWN: &str = "withdrawn";

/// What a withdrawal did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Withdrawal {
    pub kid: String,
    /// Its state when it was withdrawn: `active`, `next`, `retired` or `removed`.
    pub was: &'static str,
    pub withdrawn_at: DateTime<Utc>,
    /// The key that signs instead, when it was the one signing.
    pub successor: Option<String>,
    /// Whether that successor was generated for it (else it was the `next` key, brought
    /// forward).
    pub successor_generated: bool,
    /// Live tokens it had signed, now revoked.
    pub revoked_tokens: u64,
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

/// The key-encryption key: the configured one (`NEO_KEY_ENCRYPTION_KEY` or
/// `NEO_KEY_ENCRYPTION_KEY_FILE`); without one, on the embedded SQLite database only, the one
/// generated in the data directory (generated now if need be). Any other database is shared by
/// replicas that must all hold the same KEK, so there it is required: refused before anything
/// is written.
pub fn key_encryption_key(config: &Config) -> Result<Kek, SigningError> {
    if let Some(kek) = Kek::configured(&config.signing)? {
        return Ok(kek);
    }
    if DatabaseBackend::of_url(&config.database_url()) == Some(DatabaseBackend::Sqlite) {
        return Ok(Kek::load_or_generate(&config.signing, &config.data.dir)?);
    }
    let generated = Kek::generated_path(&config.data.dir);
    Err(SigningError::KekRequired {
        generated: generated.exists().then_some(generated),
    })
}

/// What signs for `serve`, read before the database is touched: one static key file, or the
/// database's keys sealed under this KEK.
pub enum KeySource {
    File(Box<SigningKey>),
    Database(Box<Kek>),
}

impl KeySource {
    pub fn load(config: &Config) -> Result<Self, SigningError> {
        match &config.signing.key_file {
            Some(path) => Ok(Self::File(Box::new(SigningKey::from_file(
                path,
                config.signing.algorithm,
            )?))),
            None => Ok(Self::Database(Box::new(key_encryption_key(config)?))),
        }
    }
}

/// The issuer for `serve`: the static key file, or the database's keys (creating the first one,
/// importing a key an earlier version generated in the data directory). A key that cannot be
/// decrypted stops start-up; nothing is written then.
pub async fn start(
    config: &Config,
    source: KeySource,
    store: Arc<Store>,
    freshness: &Freshness,
) -> Result<Arc<TokenIssuer>, SigningError> {
    let kek = match source {
        KeySource::File(key) => {
            // No KEK in this mode: the key file is the secret the database does not hold.
            let claims_mac = ClaimsMac::derive(&key.to_pkcs8()?);
            return Ok(Arc::new(TokenIssuer::new(
                KeyRing::single(*key)?,
                &config.token,
                claims_mac,
            )));
        }
        KeySource::Database(kek) => *kek,
    };
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
    let changed = Arc::new(KeysChanged::default());
    freshness.follow(Arc::clone(&changed) as Arc<dyn Follower>);
    spawn_reload(
        config.clone(),
        store,
        kek,
        Arc::clone(&issuer),
        loaded,
        changed,
    );
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

/// Whether a key has had (or is to have) its turn signing: every key but one withdrawn before
/// its time came.
fn takes_a_turn(row: &SigningKeyRow) -> bool {
    // In whole seconds, as the key ring switches keys.
    row.withdrawn_at
        .is_none_or(|at| row.activates_at.timestamp() <= at.timestamp())
}

/// For each row (by generation), when its successor took over: the activation of the next key
/// that takes a turn. A withdrawn key that had started signing still ended its predecessor's
/// turn; one withdrawn before its time ends nothing.
fn retirements(rows: &[SigningKeyRow]) -> Vec<Option<DateTime<Utc>>> {
    (0..rows.len())
        .map(|i| {
            rows.get(i + 1..)
                .unwrap_or_default()
                .iter()
                .find(|row| takes_a_turn(row))
                .map(|row| row.activates_at)
        })
        .collect()
}

/// The rows whose keys are still published, with when each retired: every row but the
/// withdrawn ones and those retired longer than the retire window ago (`removed`).
fn published<'a>(
    config: &Config,
    rows: &'a [SigningKeyRow],
) -> impl Iterator<Item = (&'a SigningKeyRow, Option<DateTime<Utc>>)> {
    let window = retire_window(config);
    let now = Utc::now().timestamp();
    rows.iter()
        .zip(retirements(rows))
        .filter(move |(row, retired_at)| {
            let removed = retired_at.is_some_and(|at| at.timestamp().saturating_add(window) <= now);
            row.withdrawn_at.is_none() && !removed
        })
}

/// Decrypts the keys that are still published (reusing those decrypted before) into a ring.
fn ring_of(
    config: &Config,
    kek: &Kek,
    rows: &[SigningKeyRow],
    loaded: &mut HashMap<String, Arc<Vec<u8>>>,
) -> Result<KeyRing, SigningError> {
    let mut keys = Vec::new();
    for (row, retired_at) in published(config, rows) {
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
        keys.push((
            key,
            row.activates_at.timestamp(),
            retired_at.map(|at| at.timestamp()),
        ));
    }
    // A discarded or withdrawn key's secret is not kept.
    loaded.retain(|kid, _| {
        rows.iter()
            .any(|row| &row.kid == kid && row.withdrawn_at.is_none())
    });
    Ok(KeyRing::new(keys, retire_window(config))?)
}

/// Refuses a KEK that cannot open every published key: what it sealed now, no replica holding
/// the right KEK could open.
fn check_opens_stored_keys(
    config: &Config,
    kek: &Kek,
    rows: &[SigningKeyRow],
) -> Result<(), SigningError> {
    let now = Utc::now();
    for (row, _) in published(config, rows) {
        if kek.open(&row.kid, &row.sealed_private_key).is_err() {
            return Err(SigningError::WrongKek {
                kid: row.kid.clone(),
                source_name: kek.source.clone(),
                next: row.activates_at > now,
            });
        }
    }
    Ok(())
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
        withdrawn_at: None,
    };
    if store.insert_signing_key(&row).await? {
        Ok(())
    } else {
        Err(SigningError::Conflict)
    }
}

/// Wakes the reload loop when the change feed reports a change to the signing keys (a trigger
/// on the table, whoever wrote it), and when the feed is lost or back (changes may have gone
/// unseen).
#[derive(Default)]
struct KeysChanged(tokio::sync::Notify);

impl Follower for KeysChanged {
    fn row_changed(&self, topic: Topic, _tenant_id: &str, _id: &str) {
        if topic == Topic::SigningKeys {
            self.0.notify_one();
        }
    }

    fn reset(&self) {
        self.0.notify_one();
    }
}

/// Reloads the keys when they change (`changed`) and every `signing.reload_seconds` in any
/// case (a feed that is down says nothing) and, with `signing.rotate_days`, rotates when the
/// active key is that old. A reload that fails keeps the keys held.
fn spawn_reload(
    config: Config,
    store: Arc<Store>,
    kek: Kek,
    issuer: Arc<TokenIssuer>,
    mut loaded: HashMap<String, Arc<Vec<u8>>>,
    changed: Arc<KeysChanged>,
) {
    let interval = Duration::from_secs(config.signing.reload_seconds.get());
    let issuer = Arc::downgrade(&issuer);
    tokio::spawn(async move {
        let mut known: Vec<KeyVersion> = Vec::new();
        loop {
            let Some(held) = issuer.upgrade() else {
                return;
            };
            // Without keys (the database was down at start) look five times a second, not every
            // reload interval: readiness waits for them (a refused call costs nothing while the
            // database is down).
            let empty = held.ring().keys().is_empty();
            drop(held);
            tokio::select! {
                () = tokio::time::sleep(if empty {
                    Duration::from_millis(200)
                } else {
                    interval
                }) => {}
                () = changed.0.notified() => {}
            }
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
            let versions: Vec<KeyVersion> = rows.iter().map(KeyVersion::of).collect();
            // States change with time alone (computed per request); only new rows, and rows
            // whose times changed (a withdrawal, a successor brought forward), need a rebuild.
            if versions == known {
                continue;
            }
            match ring_of(&config, &kek, &rows, &mut loaded) {
                Ok(ring) => {
                    tracing::info!(keys = versions.len(), "reloaded the signing keys");
                    issuer.replace_ring(ring);
                    known = versions;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load the signing keys; keeping the keys held")
                }
            }
        }
    });
}

/// What of a stored key decides the ring.
#[derive(PartialEq, Eq)]
struct KeyVersion {
    kid: String,
    activates_at: DateTime<Utc>,
    withdrawn_at: Option<DateTime<Utc>>,
}

impl KeyVersion {
    fn of(row: &SigningKeyRow) -> Self {
        Self {
            kid: row.kid.clone(),
            activates_at: row.activates_at,
            withdrawn_at: row.withdrawn_at,
        }
    }
}

/// A `next` key that starts signing `signing.lead_seconds` from now, sealed under `kek` (see
/// [`key_encryption_key`]). Refused while another rotation is pending, and when `kek` cannot
/// open the keys stored already.
pub async fn rotate(
    config: &Config,
    store: &Store,
    kek: &Kek,
    algorithm: SigningAlgorithm,
) -> Result<(String, DateTime<Utc>), SigningError> {
    let rows = store.signing_keys().await?;
    let key = SigningKey::generate(algorithm)?.0;
    add_next(config, store, kek, &rows, &key).await
}

async fn add_next(
    config: &Config,
    store: &Store,
    kek: &Kek,
    rows: &[SigningKeyRow],
    key: &SigningKey,
) -> Result<(String, DateTime<Utc>), SigningError> {
    check_opens_stored_keys(config, kek, rows)?;
    let now = Utc::now();
    if let Some(pending) = rows
        .iter()
        .find(|r| r.withdrawn_at.is_none() && r.activates_at > now)
    {
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
    let Some(newest) = rows.iter().rev().find(|r| r.withdrawn_at.is_none()) else {
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
    kek: &Kek,
    path: &Path,
    algorithm: SigningAlgorithm,
) -> Result<(String, DateTime<Utc>), SigningError> {
    let key = SigningKey::from_file(path, algorithm)?;
    let rows = store.signing_keys().await?;
    add_next(config, store, kek, &rows, &key).await
}

/// How long before it starts signing a `next` key can still be discarded: until every replica
/// has reloaded (`signing.reload_seconds`), allowing for clocks that run ahead by the leeway
/// verifiers allow (`token.leeway_seconds`). Later, a replica might sign with it.
pub fn discard_margin(config: &Config) -> i64 {
    i64::try_from(config.signing.reload_seconds.get())
        .unwrap_or(i64::MAX)
        .saturating_add(i64::try_from(config.token.leeway_seconds).unwrap_or(i64::MAX))
}

/// Deletes a `next` key that has not started signing (e.g. one sealed under the wrong KEK, which
/// no replica can open). Needs no KEK. Every replica stops publishing it at its next reload; a
/// verifier that cached it is unharmed (it never signed). Refuses an active or retired key, and
/// a `next` key within [`discard_margin`] of signing. Returns when it would have signed.
pub async fn discard(
    config: &Config,
    store: &Store,
    kid: &str,
) -> Result<DateTime<Utc>, SigningError> {
    let listed = list(config, store).await?;
    let Some(key) = listed.iter().find(|k| k.kid == kid) else {
        return Err(SigningError::NotFound {
            kid: kid.to_owned(),
        });
    };
    if key.state != KeyState::Next.as_str() {
        return Err(SigningError::NotDiscardable {
            kid: kid.to_owned(),
            state: key.state,
        });
    }
    let margin = discard_margin(config);
    let not_before = Utc::now() + chrono::Duration::seconds(margin);
    if key.activates_at <= not_before {
        return Err(SigningError::TooLateToDiscard {
            kid: kid.to_owned(),
            activates_at: key.activates_at,
            margin_seconds: margin,
        });
    }
    // Conditional on the time, so a key cannot pass the margin between the look and the delete.
    if store.delete_next_signing_key(kid, not_before).await? {
        Ok(key.activates_at)
    } else {
        Err(SigningError::Conflict)
    }
}

/// The keys with their states and transition times (nothing is decrypted).
pub async fn list(config: &Config, store: &Store) -> Result<Vec<KeyListing>, SigningError> {
    let rows = store.signing_keys().await?;
    Ok(listing(config, &rows, Utc::now()))
}

fn listing(config: &Config, rows: &[SigningKeyRow], now: DateTime<Utc>) -> Vec<KeyListing> {
    let window = retire_window(config);
    let at = |secs: i64| Utc.timestamp_opt(secs, 0).single();
    rows.iter()
        .zip(retirements(rows))
        .map(|(row, retired_at)| {
            let removed_at = retired_at.and_then(|r| at(r.timestamp().saturating_add(window)));
            // In whole seconds, as the key ring (what replicas sign with) decides.
            let now = now.timestamp();
            let state = if row.withdrawn_at.is_some() {
                WITHDRAWN
            } else if row.activates_at.timestamp() > now {
                KeyState::Next.as_str()
            } else {
                match (retired_at, removed_at) {
                    (Some(_), Some(removed)) if removed.timestamp() <= now => {
                        KeyState::Removed.as_str()
                    }
                    (Some(retired), _) if retired.timestamp() <= now => KeyState::Retired.as_str(),
                    _ => KeyState::Active.as_str(),
                }
            };
            KeyListing {
                kid: row.kid.clone(),
                algorithm: row.algorithm.clone(),
                state,
                created_at: row.created_at,
                activates_at: row.activates_at,
                retired_at,
                removed_at,
                withdrawn_at: row.withdrawn_at,
            }
        })
        .collect()
}

/// Who revoked the tokens of a withdrawn key, as their records say.
pub const WITHDRAWAL_REVOKER: &str = "signing-key withdraw";

/// Withdraws key `kid` at once (a compromised key), in one transaction: it stops signing and
/// leaves the JWKS, and every live token it signed is revoked (in the revocation feed from the
/// commit on). When it is the key signing now, a successor signs from this moment: the `next`
/// key, brought forward, or else a key generated now (`algorithm`, by default the withdrawn
/// key's), sealed under `kek`. Either way the key-encryption key is needed then, and must open
/// every key that stays published: a successor no replica could open would leave them signing
/// with the withdrawn key. Withdrawing a `next`, retired or removed key needs no successor and
/// no key-encryption key. Every replica reloads on the change notification.
///
/// Records written before keys were recorded (migration 12) carry no `kid`: those issued within
/// the key's signing window, widened by the leeway and a second on each side (a replica's clock
/// may run behind or ahead, and `iat` is whole seconds), are revoked too; near a switch that can
/// include a neighbouring key's tokens, never miss one of this key's.
pub async fn withdraw(
    config: &Config,
    store: &Store,
    kek: Result<Kek, SigningError>,
    kid: &str,
    algorithm: Option<SigningAlgorithm>,
) -> Result<Withdrawal, SigningError> {
    let rows = store.signing_keys().await?;
    let now = Utc::now();
    let listed = listing(config, &rows, now);
    let Some((index, key)) = listed.iter().enumerate().find(|(_, k)| k.kid == kid) else {
        return Err(SigningError::NotFound {
            kid: kid.to_owned(),
        });
    };
    let Some(row) = rows.get(index) else {
        return Err(SigningError::NotFound {
            kid: kid.to_owned(),
        });
    };
    if let Some(withdrawn_at) = row.withdrawn_at {
        return Err(SigningError::AlreadyWithdrawn {
            kid: kid.to_owned(),
            withdrawn_at,
        });
    }
    let signing_now = key.state == KeyState::Active.as_str();
    let mut generated = None;
    let successor = if signing_now {
        let kek = kek?;
        // Every key that stays published must open: the withdrawn one need not (marked here
        // as it will be, so its predecessor's turn still ends where it did).
        let staying: Vec<SigningKeyRow> = rows
            .iter()
            .cloned()
            .map(|mut r| {
                if r.kid == kid {
                    r.withdrawn_at = Some(now);
                }
                r
            })
            .collect();
        check_opens_stored_keys(config, &kek, &staying)?;
        match staying
            .iter()
            .find(|r| r.withdrawn_at.is_none() && r.activates_at.timestamp() > now.timestamp())
        {
            Some(next) => Some((next.kid.clone(), Some(next.activates_at))),
            None => {
                let algorithm = match algorithm {
                    Some(algorithm) => algorithm,
                    None => algorithm_of(row)?,
                };
                let new = SigningKey::generate(algorithm)?.0;
                let der = new.to_pkcs8()?;
                let generation = rows.iter().map(|r| r.generation).max().unwrap_or(0) + 1;
                generated = Some(SigningKeyRow {
                    kid: new.kid().to_owned(),
                    generation,
                    algorithm: new.algorithm().as_str().to_owned(),
                    sealed_private_key: kek.seal(new.kid(), &der)?,
                    created_at: now,
                    activates_at: now,
                    withdrawn_at: None,
                });
                Some((new.kid().to_owned(), None))
            }
        }
    } else {
        None
    };

    let slack = chrono::Duration::seconds(
        i64::try_from(config.token.leeway_seconds)
            .unwrap_or(i64::MAX / 2)
            .saturating_add(1),
    );
    let live_from = now - chrono::Duration::seconds(i64::from(config.token.max_ttl)) - slack;
    let signed_from = row.activates_at - slack;
    let signed_until = key.retired_at.map_or(now, |retired| retired.min(now)) + slack;
    let revoked_by = format!("{WITHDRAWAL_REVOKER} {kid}");
    let withdrawal = KeyWithdrawal {
        kid,
        activates_at: row.activates_at,
        at: now,
        successor: match (&successor, &generated) {
            (Some((next, Some(activates_at))), _) => Some(Successor::Promote {
                kid: next,
                activates_at: *activates_at,
            }),
            (Some(_), Some(new)) => Some(Successor::Insert(new)),
            _ => None,
        },
        issued_from: live_from.max(signed_from),
        unrecorded_until: signed_until,
        revoked_by: &revoked_by,
    };
    let Some(revoked_tokens) = store.withdraw_signing_key(&withdrawal).await? else {
        return Err(SigningError::Conflict);
    };
    Ok(Withdrawal {
        kid: kid.to_owned(),
        was: key.state,
        withdrawn_at: now,
        successor: successor.map(|(kid, _)| kid),
        successor_generated: generated.is_some(),
        revoked_tokens,
    })
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

    fn row(kid: &str, generation: i64, activates_at: DateTime<Utc>) -> SigningKeyRow {
        SigningKeyRow {
            kid: kid.to_owned(),
            generation,
            algorithm: "ES256".to_owned(),
            sealed_private_key: Vec::new(),
            created_at: activates_at,
            activates_at,
            withdrawn_at: None,
        }
    }

    /// A withdrawn key is listed `withdrawn` and published by no one; one that had signed still
    /// ended its predecessor's turn, one withdrawn before its time ends nobody's.
    #[test]
    fn a_withdrawn_key_ends_its_predecessors_turn_only_if_it_signed() {
        let (_dir, config) = config_in_temp_dir();
        let now = Utc::now();
        let minutes = |m: i64| chrono::Duration::minutes(m);
        let mut rows = vec![
            row("k1", 1, now - minutes(30)),
            row("k2", 2, now - minutes(10)),
            row("k3", 3, now),
            row("k4", 4, now + minutes(10)),
        ];
        // k2 signed from -10 min and was withdrawn now, k3 brought forward to now; k4 (next)
        // withdrawn before its time.
        rows[1].withdrawn_at = Some(now);
        rows[3].withdrawn_at = Some(now);
        let listed = listing(&config, &rows, now);
        let states: Vec<&str> = listed.iter().map(|k| k.state).collect();
        assert_eq!(states, ["retired", WITHDRAWN, "active", WITHDRAWN]);
        assert_eq!(listed[0].retired_at, Some(now - minutes(10)));
        assert_eq!(
            listed[2].retired_at, None,
            "k4 never signed: k3 stays active"
        );
        let published: Vec<&str> = published(&config, &rows)
            .map(|(row, _)| row.kid.as_str())
            .collect();
        assert_eq!(published, ["k1", "k3"]);
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
