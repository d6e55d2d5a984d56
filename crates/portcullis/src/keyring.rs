//! Signing keys that rotate without a 401: the configured key set plus the
//! keys rotated in through storage, on one schedule every replica follows.
//!
//! [`KeyRing::rotate`] generates a key, seals its private part
//! ([`KeySealer`], keyed by the pepper) and stores it with
//! `activates_at = now + propagation_delay`. Every replica's ring reads the
//! stored keys every `poll_interval` and computes the set in force from the
//! stored times alone ([`portcullis_core::jose::rotation`]): the new key
//! verifies (and is in the JWKS) everywhere before any replica signs with
//! it, and the old key keeps verifying until every token it signed has
//! expired (`retire_after`). Subscribers get each new set
//! ([`KeyRing::subscribe`]) and swap it into their issuer and verifiers.
//!
//! A store that is down only delays news of a rotation: transitions of
//! keys already read happen on time, from the clock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use portcullis_core::jose::rotation::{self, KeyState, KeyStatus, Schedule, ScheduledKey};
use portcullis_core::{Algorithm, Key, KeyError, KeyFamily, KeySealer, KeySet, SecretHasher};
use tokio::sync::watch;

use crate::stores::hook::within_budget;
use crate::stores::{SigningKeyRecord, StoreError, Stores};

/// How long a retired stored key is kept (listed as retired) before the
/// ring deletes it.
pub const RETIRED_KEPT: Duration = Duration::from_secs(7 * 86_400);

/// How a [`KeyRing`] rotates and follows rotations.
#[derive(Debug, Clone, Copy)]
pub struct KeyRingConfig {
    /// Between publishing a new key and signing with it (default 10 min):
    /// longer than `poll_interval` on every replica and than the time
    /// outside verifiers cache the JWKS (`max-age=300`).
    pub propagation_delay: Duration,
    /// After a successor activates, how long the old key keeps verifying:
    /// the longest lifetime of a token it signed plus clock leeway.
    pub retire_after: Duration,
    /// How often the stored keys are read (default 5 s).
    pub poll_interval: Duration,
    /// Longest a store call may take (default 2 s).
    pub store_budget: Duration,
}

impl KeyRingConfig {
    /// Defaults for tokens that live at most `retire_after` (plus leeway).
    pub fn new(retire_after: Duration) -> Self {
        Self {
            propagation_delay: Duration::from_secs(600),
            retire_after,
            poll_interval: Duration::from_secs(5),
            store_budget: Duration::from_secs(2),
        }
    }
}

/// Why a key ring could not be opened.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// The settings are inconsistent.
    #[error("key rotation `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The stored keys could not be read.
    #[error("stored signing keys: {0}")]
    Store(#[from] StoreError),
    /// The key sealer or the key set could not be built (a crypto or key
    /// set failure, not a stored record's).
    #[error("signing keys: {0}; check the files in keys.dir")]
    Keys(KeyError),
    /// A stored key does not open or parse.
    #[error(
        "stored signing key `{kid}`: {error}; check that storage.pepper_file is the one every replica uses"
    )]
    Key {
        /// The key.
        kid: String,
        /// Why.
        error: KeyError,
    },
}

/// Why a rotation was refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// A rotated-in key is still waiting for its activation.
    #[error(
        "a rotation is already pending: key `{kid}` activates at {activates_at} (Unix seconds); rotate again after that"
    )]
    Pending {
        /// The pending key.
        kid: String,
        /// When it activates.
        activates_at: i64,
    },
    /// Nothing signs, so there is no algorithm to follow.
    #[error("the key set has no signing key; name the algorithm to rotate to")]
    NoAlgorithm,
    /// The key could not be made or sealed.
    #[error("the new key could not be made: {0}")]
    Key(#[from] KeyError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The ring's view for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRingStatus {
    /// Every key with its state and times.
    pub keys: Vec<KeyStatus>,
    /// Between a key's publication and its activation, seconds.
    pub propagation_delay_secs: u64,
    /// After a successor activates, how long a key keeps verifying, seconds.
    pub retire_after_secs: u64,
    /// The next moment the set changes, Unix seconds.
    pub next_transition_at: Option<i64>,
    /// The last successful read of the stored keys, Unix seconds.
    pub last_sync_at: Option<i64>,
    /// Why the last read failed, when it did.
    pub last_error: Option<String>,
}

struct RingState {
    /// Stored keys opened so far, by kid.
    opened: HashMap<String, ScheduledKey>,
    /// Stored kids that did not open (logged once each).
    unopenable: HashSet<String>,
    schedule: Schedule,
    last_sync_at: Option<i64>,
    last_error: Option<String>,
}

/// The signing keys in force, following the stored rotation schedule.
pub struct KeyRing {
    base: KeySet,
    stores: Arc<Stores>,
    sealer: KeySealer,
    config: KeyRingConfig,
    state: Mutex<RingState>,
    current: watch::Sender<Arc<KeySet>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl KeyRing {
    /// The ring over the configured set `base` and the keys stored in
    /// `stores`, sealed under `hasher`'s pepper. Reads the stored keys once:
    /// fails when the store does not answer or a stored key does not open
    /// (another pepper), since this replica could not verify its tokens.
    pub async fn open(
        base: KeySet,
        stores: Arc<Stores>,
        hasher: &SecretHasher,
        config: KeyRingConfig,
    ) -> Result<Arc<Self>, KeyRingError> {
        let invalid = |field, reason| KeyRingError::Invalid { field, reason };
        if config.poll_interval < Duration::from_millis(100) {
            return Err(invalid("poll_interval", "must be at least 100 ms"));
        }
        if config.propagation_delay < 2 * config.poll_interval {
            return Err(invalid(
                "propagation_delay",
                "must be at least twice poll_interval (every replica must read a new key before it signs)",
            ));
        }
        if config.store_budget.is_zero() || config.store_budget > Duration::from_secs(30) {
            return Err(invalid("store_budget", "must be between 1 ms and 30 s"));
        }
        let sealer = KeySealer::from_pepper(hasher).map_err(KeyRingError::Keys)?;
        let records = within_budget(config.store_budget, stores.signing_keys()).await?;
        let mut opened = HashMap::new();
        for record in &records {
            let key = open_record(&sealer, record).map_err(|error| KeyRingError::Key {
                kid: record.kid.clone(),
                error,
            })?;
            opened.insert(record.kid.clone(), key);
        }
        let now = stores.now();
        let schedule = compute(&base, &opened, &config, now).map_err(KeyRingError::Keys)?;
        let (current, _) = watch::channel(Arc::new(schedule.keys.clone()));
        Ok(Arc::new(Self {
            base,
            stores,
            sealer,
            config,
            state: Mutex::new(RingState {
                opened,
                unopenable: HashSet::new(),
                schedule,
                last_sync_at: Some(now),
                last_error: None,
            }),
            current,
        }))
    }

    fn state(&self) -> MutexGuard<'_, RingState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The key set in force.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.borrow())
    }

    /// Every new key set, as it comes into force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.current.subscribe()
    }

    /// The settings.
    pub fn config(&self) -> &KeyRingConfig {
        &self.config
    }

    /// Every key with its state, for operators.
    pub fn status(&self) -> KeyRingStatus {
        let state = self.state();
        KeyRingStatus {
            keys: state.schedule.status.clone(),
            propagation_delay_secs: self.config.propagation_delay.as_secs(),
            retire_after_secs: self.config.retire_after.as_secs(),
            next_transition_at: state.schedule.next_transition,
            last_sync_at: state.last_sync_at,
            last_error: state.last_error.clone(),
        }
    }

    /// Reads the stored keys and brings the set in force up to date. On a
    /// store failure the known schedule stays (and keeps its times).
    pub async fn sync(&self) -> Result<(), StoreError> {
        let records =
            match within_budget(self.config.store_budget, self.stores.signing_keys()).await {
                Ok(r) => r,
                Err(e) => {
                    self.state().last_error = Some(e.to_string());
                    self.tick();
                    return Err(e);
                }
            };
        {
            let mut state = self.state();
            let stored: HashSet<&str> = records.iter().map(|r| r.kid.as_str()).collect();
            state.opened.retain(|kid, _| stored.contains(kid.as_str()));
            for record in &records {
                if state.opened.contains_key(&record.kid) || state.unopenable.contains(&record.kid)
                {
                    continue;
                }
                match open_record(&self.sealer, record) {
                    Ok(key) => {
                        state.opened.insert(record.kid.clone(), key);
                    }
                    Err(error) => {
                        tracing::error!(
                            kid = %record.kid,
                            %error,
                            "a stored signing key does not open: this replica cannot verify its tokens; check storage.pepper_file"
                        );
                        state.unopenable.insert(record.kid.clone());
                    }
                }
            }
            state.last_sync_at = Some(self.stores.now());
            state.last_error = None;
        }
        self.tick();
        Ok(())
    }

    /// Recomputes the set in force at the current time from what is known,
    /// publishing it to subscribers when it changed.
    pub fn tick(&self) {
        let now = self.stores.now();
        let mut state = self.state();
        let schedule = match compute(&self.base, &state.opened, &self.config, now) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "the signing-key schedule could not be computed");
                return;
            }
        };
        let changed = schedule.fingerprint() != state.schedule.fingerprint();
        if changed {
            let active = schedule.active().map(|k| k.kid.clone());
            tracing::info!(active = ?active, keys = schedule.keys.len(), "signing keys changed");
            metrics::counter!("portcullis_signing_key_changes_total").increment(1);
            self.current.send_replace(Arc::new(schedule.keys.clone()));
        }
        state.schedule = schedule;
    }

    /// Starts a rotation: a new key of `alg` (default: the active key's
    /// algorithm) is stored now, published by every replica within
    /// `poll_interval`, and signs from `now + propagation_delay`.
    pub async fn rotate(&self, alg: Option<Algorithm>) -> Result<KeyStatus, RotateError> {
        self.sync().await?;
        let alg = {
            let state = self.state();
            if let Some(pending) = state
                .schedule
                .status
                .iter()
                .find(|k| k.state == KeyState::Published)
            {
                return Err(RotateError::Pending {
                    kid: pending.kid.clone(),
                    activates_at: pending.activates_at.unwrap_or_default(),
                });
            }
            match alg {
                Some(a) => a,
                None => state
                    .schedule
                    .active()
                    .map(|k| k.alg)
                    .ok_or(RotateError::NoAlgorithm)?,
            }
        };
        let key = Key::generate(alg)?;
        let key = if alg.family() == KeyFamily::Hmac {
            key
        } else {
            let kid = key.thumbprint();
            key.with_kid(kid)
        };
        let now = self.stores.now();
        let record = SigningKeyRecord {
            kid: key.kid().to_owned(),
            alg: alg.name().to_owned(),
            sealed: self.sealer.seal(&key, alg)?,
            created_at: now,
            activates_at: now.saturating_add(secs(self.config.propagation_delay)),
        };
        // The claim is atomic in the store: of concurrent rotations (on
        // this replica or any other) exactly one stores its key.
        if let Some(pending) = within_budget(
            self.config.store_budget,
            self.stores.insert_signing_key_unless_pending(&record),
        )
        .await?
        {
            return Err(RotateError::Pending {
                kid: pending.kid,
                activates_at: pending.activates_at,
            });
        }
        tracing::info!(kid = %record.kid, %alg, activates_at = record.activates_at, "signing key rotation started");
        self.state().opened.insert(
            record.kid.clone(),
            ScheduledKey {
                key: Arc::new(key),
                alg,
                created_at: record.created_at,
                activates_at: record.activates_at,
            },
        );
        self.tick();
        let state = self.state();
        state
            .schedule
            .status
            .iter()
            .find(|k| k.kid == record.kid)
            .cloned()
            .ok_or(RotateError::Store(StoreError::NotFound("signing key")))
    }

    /// Deletes stored keys retired for longer than [`RETIRED_KEPT`];
    /// returns how many.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = self.stores.now();
        let old: Vec<String> = self
            .state()
            .schedule
            .status
            .iter()
            .filter(|k| {
                k.state == KeyState::Retired
                    && k.source == rotation::KeySource::Stored
                    && k.retires_at
                        .is_some_and(|r| r.saturating_add(secs(RETIRED_KEPT)) <= now)
            })
            .map(|k| k.kid.clone())
            .collect();
        let mut n = 0;
        for kid in old {
            if within_budget(
                self.config.store_budget,
                self.stores.delete_signing_key(&kid),
            )
            .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Follows the stored schedule until the task is aborted: reads the
    /// stored keys every `poll_interval` and wakes at each transition.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let ring = Arc::clone(self);
        tokio::spawn(async move {
            let mut last_prune = ring.stores.now();
            loop {
                let wait = {
                    let state = ring.state();
                    let poll = ring.config.poll_interval;
                    match state.schedule.next_transition {
                        Some(at) => {
                            let until = at.saturating_sub(ring.stores.now()).max(0);
                            poll.min(Duration::from_secs(u64::try_from(until).unwrap_or(0)))
                        }
                        None => poll,
                    }
                };
                tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
                if let Err(e) = ring.sync().await {
                    tracing::warn!(error = %e, "stored signing keys could not be read; the known schedule stays");
                }
                let now = ring.stores.now();
                if now - last_prune >= 3600 {
                    last_prune = now;
                    if let Err(e) = ring.prune().await {
                        tracing::warn!(error = %e, "retired signing keys could not be deleted");
                    }
                }
            }
        })
    }
}

fn open_record(sealer: &KeySealer, record: &SigningKeyRecord) -> Result<ScheduledKey, KeyError> {
    let alg = Algorithm::from_name(&record.alg)
        .ok_or_else(|| KeyError::Unsupported(format!("algorithm `{}`", record.alg)))?;
    let key = sealer.open(&record.kid, alg, &record.sealed)?;
    Ok(ScheduledKey {
        key: Arc::new(key),
        alg,
        created_at: record.created_at,
        activates_at: record.activates_at,
    })
}

fn compute(
    base: &KeySet,
    opened: &HashMap<String, ScheduledKey>,
    config: &KeyRingConfig,
    now: i64,
) -> Result<Schedule, KeyError> {
    let stored: Vec<ScheduledKey> = opened.values().cloned().collect();
    rotation::schedule(base, &stored, secs(config.retire_after), now)
}
