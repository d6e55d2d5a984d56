//! The signing-key rotation schedule: which keys verify and which one
//! signs at a given time, as a pure function of the configured key set,
//! the rotated-in keys with their times, and the clock.
//!
//! A rotated-in key is *published* (in the key set and the JWKS, verifying
//! but not signing) from its creation until `activates_at`, then *active*
//! (it signs) until a newer key activates; from then it is *retiring*
//! (verifying only) until `retire_after` past its successor's activation —
//! the longest a token it signed can live, plus leeway — and then
//! *retired* (gone from the set). The configured active key is the first
//! generation, active from the start. Every replica computing this from the
//! same stored times reaches the same set at the same moment.

use std::sync::Arc;

use super::algorithm::Algorithm;
use super::key::Key;
use super::keyset::KeySet;
use crate::error::KeyError;

/// A key rotated in from storage, with its schedule.
#[derive(Debug, Clone)]
pub struct ScheduledKey {
    /// The key (its `kid` is the record's).
    pub key: Arc<Key>,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    /// When it was created (and published), Unix seconds.
    pub created_at: i64,
    /// When it starts signing, Unix seconds.
    pub activates_at: i64,
}

/// Where a key of the set comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The configured key directory.
    Dir,
    /// Rotated in, held (sealed) in storage.
    Stored,
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// In the JWKS and verifying; signs from `activates_at`.
    Published,
    /// Signs new tokens.
    Active,
    /// Superseded; verifies the tokens it signed until `retires_at`.
    Retiring,
    /// Gone from the set: its tokens are refused.
    Retired,
    /// A configured key that is not the signing key: verifies, never
    /// retires on its own (remove its file to retire it).
    VerifyOnly,
}

/// One key's place in the schedule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    /// Key id.
    pub kid: String,
    /// The algorithm it signs (or verifies) with.
    pub alg: Algorithm,
    /// Its state now.
    pub state: KeyState,
    /// Where it comes from.
    pub source: KeySource,
    /// When it was created, Unix seconds (unknown for configured keys).
    pub created_at: Option<i64>,
    /// When it starts or started signing (none for configured keys).
    pub activates_at: Option<i64>,
    /// When it leaves the set (once a newer key activates or is scheduled).
    pub retires_at: Option<i64>,
}

/// The key set in force at one moment, and what comes next.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The keys that verify, with the signing key active.
    pub keys: KeySet,
    /// Every key, configured and stored, in activation order.
    pub status: Vec<KeyStatus>,
    /// The next moment the set changes (a key activates or retires).
    pub next_transition: Option<i64>,
}

impl Schedule {
    /// The active key's status.
    pub fn active(&self) -> Option<&KeyStatus> {
        self.status.iter().find(|s| s.state == KeyState::Active)
    }

    /// The kid and state of every key in the set: two schedules with the
    /// same fingerprint hold the same keys in the same roles.
    pub fn fingerprint(&self) -> Vec<(String, KeyState)> {
        self.status
            .iter()
            .filter(|s| s.state != KeyState::Retired)
            .map(|s| (s.kid.clone(), s.state))
            .collect()
    }
}

/// The schedule at `now` of the configured set `base` (its active key is the
/// first generation) and the rotated-in `stored` keys; a key retires
/// `retire_after` seconds after its successor activates. A stored key whose
/// kid is already in `base` is ignored.
pub fn schedule(
    base: &KeySet,
    stored: &[ScheduledKey],
    retire_after: i64,
    now: i64,
) -> Result<Schedule, KeyError> {
    // The generations, oldest first: the configured active key, then the
    // stored keys by activation time (kid breaks ties, so every replica
    // orders them alike).
    struct Generation {
        key: Arc<Key>,
        alg: Algorithm,
        source: KeySource,
        created_at: Option<i64>,
        activates_at: Option<i64>,
    }
    let base_active = base.active().cloned();
    let mut generations: Vec<Generation> = Vec::with_capacity(stored.len() + 1);
    if let Some(key) = &base_active {
        generations.push(Generation {
            key: Arc::clone(key),
            alg: key.signing_algorithm(),
            source: KeySource::Dir,
            created_at: None,
            activates_at: None,
        });
    }
    let mut rotated: Vec<&ScheduledKey> = stored
        .iter()
        .filter(|s| base.get(s.key.kid()).is_none())
        .collect();
    rotated.sort_by(|a, b| (a.activates_at, a.key.kid()).cmp(&(b.activates_at, b.key.kid())));
    rotated.dedup_by(|a, b| a.key.kid() == b.key.kid());
    generations.extend(rotated.into_iter().map(|s| Generation {
        key: Arc::clone(&s.key),
        alg: s.alg,
        source: KeySource::Stored,
        created_at: Some(s.created_at),
        activates_at: Some(s.activates_at),
    }));

    // The active generation: the last one whose activation has come.
    let active = generations
        .iter()
        .rposition(|g| g.activates_at.is_none_or(|at| at <= now));

    let mut keys = KeySet::new();
    let mut status = Vec::with_capacity(generations.len() + base.len());
    let mut next_transition: Option<i64> = None;
    let mut soonest = |t: i64| {
        if t > now {
            next_transition = Some(next_transition.map_or(t, |n| n.min(t)));
        }
    };
    for (i, g) in generations.iter().enumerate() {
        let successor_at = generations.get(i + 1).and_then(|next| next.activates_at);
        let retires_at = successor_at.map(|at| at.saturating_add(retire_after));
        let state = match active {
            Some(a) if i == a => KeyState::Active,
            Some(a) if i > a => KeyState::Published,
            None => KeyState::Published,
            Some(_) => match retires_at {
                Some(r) if r <= now => KeyState::Retired,
                _ => KeyState::Retiring,
            },
        };
        if let Some(at) = g.activates_at {
            soonest(at);
        }
        if let Some(r) = retires_at {
            soonest(r);
        }
        if state != KeyState::Retired {
            keys.insert_shared(Arc::clone(&g.key))?;
        }
        status.push(KeyStatus {
            kid: g.key.kid().to_owned(),
            alg: g.alg,
            state,
            source: g.source,
            created_at: g.created_at,
            activates_at: g.activates_at,
            retires_at,
        });
    }
    if let Some(a) = active {
        keys.set_active(generations[a].key.kid())?;
    }
    // The configured keys that never sign: they verify, as configured.
    for key in base.iter() {
        if base_active.as_ref().is_some_and(|a| Arc::ptr_eq(a, key)) {
            continue;
        }
        keys.insert_shared(Arc::clone(key))?;
        status.push(KeyStatus {
            kid: key.kid().to_owned(),
            alg: key.signing_algorithm(),
            state: KeyState::VerifyOnly,
            source: KeySource::Dir,
            created_at: None,
            activates_at: None,
            retires_at: None,
        });
    }
    if active.is_none() {
        // Nothing signs yet (no configured signing key, nothing activated):
        // a published key must not sign before its time.
        keys.clear_active();
    }
    Ok(Schedule {
        keys,
        status,
        next_transition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> Arc<Key> {
        Arc::new(Key::generate(Algorithm::ES256).expect("key").with_kid(kid))
    }

    fn stored(kid: &str, created_at: i64, activates_at: i64) -> ScheduledKey {
        ScheduledKey {
            key: key(kid),
            alg: Algorithm::ES256,
            created_at,
            activates_at,
        }
    }

    fn base() -> KeySet {
        let mut set = KeySet::new();
        set.insert_shared(key("dir")).expect("insert");
        set
    }

    fn states(s: &Schedule) -> Vec<(&str, KeyState)> {
        s.status.iter().map(|k| (k.kid.as_str(), k.state)).collect()
    }

    #[test]
    fn a_rotation_publishes_then_activates_then_retires_the_old_key() {
        let base = base();
        let next = [stored("k2", 1000, 1600)];
        // Before the rotation: only the configured key.
        let s = schedule(&base, &[], 900, 500).expect("schedule");
        assert_eq!(states(&s), [("dir", KeyState::Active)]);
        assert_eq!(s.next_transition, None);

        // Published: both verify, the old one still signs.
        let s = schedule(&base, &next, 900, 1000).expect("schedule");
        assert_eq!(
            states(&s),
            [("dir", KeyState::Active), ("k2", KeyState::Published)]
        );
        assert_eq!(s.keys.active().map(|k| k.kid()), Some("dir"));
        assert!(s.keys.get("k2").is_some());
        assert_eq!(s.next_transition, Some(1600));

        // Activated: the new one signs, the old one verifies until 1600 + 900.
        let s = schedule(&base, &next, 900, 1600).expect("schedule");
        assert_eq!(
            states(&s),
            [("dir", KeyState::Retiring), ("k2", KeyState::Active)]
        );
        assert_eq!(s.keys.active().map(|k| k.kid()), Some("k2"));
        assert_eq!(s.status[0].retires_at, Some(2500));
        assert_eq!(s.next_transition, Some(2500));

        // Retired: the old key is gone.
        let s = schedule(&base, &next, 900, 2500).expect("schedule");
        assert_eq!(
            states(&s),
            [("dir", KeyState::Retired), ("k2", KeyState::Active)]
        );
        assert!(s.keys.get("dir").is_none());
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.next_transition, None);
    }

    #[test]
    fn generations_order_by_activation_then_kid_and_verify_only_keys_stay() {
        let mut base = base();
        base.insert_shared(Arc::new(
            Key::generate(Algorithm::ES256)
                .expect("key")
                .with_kid("old"),
        ))
        .expect("insert");
        let rotated = [
            stored("b", 100, 300),
            stored("a", 100, 300),
            stored("c", 50, 200),
            stored("dir", 10, 20), // shadows a configured kid: ignored
        ];
        let s = schedule(&base, &rotated, 60, 310).expect("schedule");
        assert_eq!(
            states(&s),
            [
                ("dir", KeyState::Retired),
                ("c", KeyState::Retiring),
                ("a", KeyState::Retiring),
                ("b", KeyState::Active),
                ("old", KeyState::VerifyOnly),
            ]
        );
        assert_eq!(s.keys.active().map(|k| k.kid()), Some("b"));
        assert_eq!(s.next_transition, Some(360));
        assert_eq!(
            s.fingerprint(),
            [
                ("c".to_owned(), KeyState::Retiring),
                ("a".to_owned(), KeyState::Retiring),
                ("b".to_owned(), KeyState::Active),
                ("old".to_owned(), KeyState::VerifyOnly),
            ]
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_set_on_every_replica() {
        let base = base();
        let rotated = [stored("k2", 100, 200), stored("k3", 150, 400)];
        let mut reversed = rotated.clone();
        reversed.reverse();
        for now in [0, 199, 200, 250, 399, 400, 500, 1000] {
            let a = schedule(&base, &rotated, 120, now).expect("a");
            let b = schedule(&base, &reversed, 120, now).expect("b");
            assert_eq!(a.status, b.status, "at {now}");
            assert_eq!(a.fingerprint(), b.fingerprint());
        }
    }
}
