//! Console sessions: an in-process table from a random session id (the
//! cookie's only content) to the admin key it stands for and its CSRF
//! token. Bounded in count, idle and absolute lifetime; time is passed in,
//! so the rules are tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_core::KeyError;

/// Most console sessions held at once; a new sign-in past it ends the
/// least recently used one.
pub(crate) const MAX_SESSIONS: usize = 64;
/// A session unused this long is over.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session is over this long after sign-in, used or not.
pub(crate) const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// Who signed in: the admin key (sent to the admin API on the session's
/// behalf, never to the browser) and what the page may know about it.
#[derive(Clone)]
pub(crate) struct SignedIn {
    /// The session id (the cookie's value).
    pub(crate) id: String,
    /// The admin API key.
    pub(crate) key: String,
    /// The key's public id.
    pub(crate) key_id: String,
    /// The key's owner (`admin:<name>`).
    pub(crate) owner: String,
    /// The key's permissions.
    pub(crate) permissions: Vec<String>,
    /// The token every state change must carry in `X-CSRF-Token`.
    pub(crate) csrf: String,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("key_id", &self.key_id)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

struct Entry {
    who: SignedIn,
    created: Instant,
    last_seen: Instant,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen) < IDLE_TIMEOUT
            && now.saturating_duration_since(self.created) < ABSOLUTE_TIMEOUT
    }
}

/// The table of console sessions.
pub(crate) struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
    max: usize,
}

/// 256 random bits, base64url.
fn random_token() -> Result<String, KeyError> {
    let mut bytes = [0u8; 32];
    portcullis_core::opaque::fill_random(&mut bytes)?;
    Ok(portcullis_core::jose::b64_encode(&bytes))
}

impl Sessions {
    /// An empty table holding at most `max` sessions.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session for `key`, with fresh random id and CSRF token.
    pub(crate) fn create(
        &self,
        key: String,
        key_id: String,
        owner: String,
        permissions: Vec<String>,
        now: Instant,
    ) -> Result<SignedIn, KeyError> {
        let who = SignedIn {
            id: random_token()?,
            csrf: random_token()?,
            key,
            key_id,
            owner,
            permissions,
        };
        let mut table = self.table();
        table.retain(|_, e| e.live(now));
        while table.len() >= self.max {
            let oldest = table
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    table.remove(&id);
                }
                None => break,
            }
        }
        table.insert(
            who.id.clone(),
            Entry {
                who: who.clone(),
                created: now,
                last_seen: now,
            },
        );
        Ok(who)
    }

    /// The live session `id`, marked as used now; an expired one is removed.
    pub(crate) fn get(&self, id: &str, now: Instant) -> Option<SignedIn> {
        let mut table = self.table();
        let entry = table.get_mut(id)?;
        if !entry.live(now) {
            table.remove(id);
            return None;
        }
        entry.last_seen = now;
        Some(entry.who.clone())
    }

    /// Whether session `id` is live (without marking it used): what an
    /// open stream asks every second, so sign-out, the idle and the
    /// absolute limits end it.
    pub(crate) fn alive(&self, id: &str, now: Instant) -> bool {
        self.table().get(id).is_some_and(|e| e.live(now))
    }

    /// Ends session `id` (sign-out, or its key was refused).
    pub(crate) fn remove(&self, id: &str) -> bool {
        self.table().remove(id).is_some()
    }

    /// How many sessions are held (live or not yet swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_in(s: &Sessions, now: Instant) -> SignedIn {
        s.create(
            "pck_x".into(),
            "kid".into(),
            "admin:root".into(),
            vec!["admin.*".into()],
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_session_lives_while_used_and_ends_when_idle_or_old() {
        let s = Sessions::new(4);
        let t0 = Instant::now();
        let who = sign_in(&s, t0);
        assert_ne!(who.id, who.csrf);
        assert_eq!(who.id.len(), 43);
        let mut t = t0;
        // Used every 20 minutes: alive until the absolute bound.
        while t.duration_since(t0) + Duration::from_secs(20 * 60) < ABSOLUTE_TIMEOUT {
            t += Duration::from_secs(20 * 60);
            assert!(s.get(&who.id, t).is_some());
        }
        assert!(s.get(&who.id, t0 + ABSOLUTE_TIMEOUT).is_none());
        let other = sign_in(&s, t0);
        assert!(s.get(&other.id, t0 + IDLE_TIMEOUT).is_none(), "idle");
        assert!(s.get("unknown", t0).is_none());
    }

    #[test]
    fn an_open_stream_sees_sign_out_and_both_limits_without_extending_them() {
        let s = Sessions::new(4);
        let t0 = Instant::now();
        let who = sign_in(&s, t0);
        // Asked every second by a stream: `alive` is not use.
        let mut t = t0;
        while t.duration_since(t0) + Duration::from_secs(60) < IDLE_TIMEOUT {
            t += Duration::from_secs(60);
            assert!(s.alive(&who.id, t));
        }
        assert!(!s.alive(&who.id, t0 + IDLE_TIMEOUT), "idle");
        // Used by the page every 20 minutes: the 12 h limit still ends it.
        let used = sign_in(&s, t0);
        let mut t = t0;
        while t.duration_since(t0) + Duration::from_secs(20 * 60) < ABSOLUTE_TIMEOUT {
            t += Duration::from_secs(20 * 60);
            assert!(s.get(&used.id, t).is_some());
            assert!(s.alive(&used.id, t));
        }
        assert!(!s.alive(&used.id, t0 + ABSOLUTE_TIMEOUT), "absolute");
        // Sign-out.
        let out = sign_in(&s, t0);
        assert!(s.alive(&out.id, t0));
        assert!(s.remove(&out.id));
        assert!(!s.alive(&out.id, t0));
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_least_recently_used() {
        let s = Sessions::new(3);
        let t0 = Instant::now();
        let a = sign_in(&s, t0);
        let b = sign_in(&s, t0 + Duration::from_secs(1));
        let c = sign_in(&s, t0 + Duration::from_secs(2));
        assert!(s.get(&a.id, t0 + Duration::from_secs(3)).is_some());
        let d = sign_in(&s, t0 + Duration::from_secs(4));
        assert_eq!(s.len(), 3);
        let now = t0 + Duration::from_secs(5);
        assert!(s.get(&b.id, now).is_none(), "least recently used goes");
        assert!(s.get(&a.id, now).is_some());
        assert!(s.get(&c.id, now).is_some());
        assert!(s.get(&d.id, now).is_some());
        assert!(s.remove(&d.id));
        assert!(s.get(&d.id, now).is_none());
    }
}
