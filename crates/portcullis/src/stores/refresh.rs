//! Refresh-token rotation, shared by every backend: the backend provides an
//! atomic compare-and-set ([`RefreshStore::rotate_refresh`](super::RefreshStore::rotate_refresh));
//! the policy (expiry, reuse detection, the reuse interval, revoking the
//! family and the session, the security event) lives here, once.

use portcullis_core::TokenIssuer;
use portcullis_core::jwt::issue::REFRESH_PREFIX;

use super::{RefreshRecord, SecurityEvent, StoreError, StoreResult, Stores};

/// The outcome of a successful rotation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// This request won: `previous` is now spent and `successor` stored.
    Rotated {
        /// The record of the presented token (now rotated).
        previous: RefreshRecord,
        /// The stored successor.
        successor: RefreshRecord,
    },
    /// The token was rotated moments ago, within the configured reuse
    /// interval (a benign client race): nothing is revoked, and the caller
    /// gets the successor already issued, at most once per token and only
    /// while the session, the user and the family are live. Its secret is
    /// stored nowhere; it is re-derived when it was minted with
    /// [`Stores::successor_token`]. Audit [`Rotation::security_event`].
    AlreadyRotated {
        /// The record of the presented token.
        previous: RefreshRecord,
        /// Hash of the successor already issued.
        successor_hash: [u8; 32],
        /// The successor token itself, when it was minted with
        /// [`Stores::successor_token`] (`None` for a successor minted
        /// otherwise: answer with a new access token only).
        successor_token: Option<String>,
    },
}

impl Stores {
    /// Stores a freshly issued refresh token (a login).
    pub async fn store_refresh(&self, record: &RefreshRecord) -> StoreResult<()> {
        check_record(record)?;
        self.backends.refresh.insert_refresh(record).await
    }

    /// Revokes the family and the session of refresh token `token` when it
    /// belongs to `user_id` (logout); whether it did. A malformed, unknown
    /// or foreign token is left alone.
    pub async fn revoke_refresh_of(&self, user_id: &str, token: &str) -> StoreResult<bool> {
        if !TokenIssuer::is_well_formed_refresh(token) {
            return Ok(false);
        }
        let hash = self.config.hasher.hash(token);
        let refresh = &self.backends.refresh;
        match refresh.refresh_by_hash(&hash).await? {
            Some(record) if record.user_id == user_id => {
                refresh.revoke_family(&record.family, self.now()).await?;
                self.revoke_session(&record.session_id).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Rotates the presented refresh token. `successor` builds the next
    /// token's record from the stored one (normally
    /// `TokenIssuer::rotate` + [`RefreshRecord::from_issued`]); it must keep
    /// the family, the session and the remember-me flag.
    ///
    /// Of any number of concurrent rotations of one token exactly one gets
    /// [`Rotation::Rotated`]. The others, and any later presentation, get
    /// [`StoreError::RefreshReused`] (the family and the session are revoked
    /// and the event must be audited), or - once per token, within the
    /// reuse interval, while session, user and family are live -
    /// [`Rotation::AlreadyRotated`] (audit [`Rotation::security_event`]).
    /// The reuse window is checked last: a revoked or expired token, a
    /// logged-out session or a disabled user never gets a successor.
    pub async fn rotate_refresh<F>(&self, token: &str, successor: F) -> StoreResult<Rotation>
    where
        F: FnOnce(&RefreshRecord) -> StoreResult<RefreshRecord>,
    {
        if !TokenIssuer::is_well_formed_refresh(token) {
            return Err(StoreError::RefreshMalformed);
        }
        let hash = self.config.hasher.hash(token);
        let refresh = &self.backends.refresh;
        let Some(current) = refresh.refresh_by_hash(&hash).await? else {
            return Err(StoreError::RefreshInvalid);
        };
        let now = self.now();
        if current.rotated_at.is_some() {
            return self.reused(current, token, now).await;
        }
        if current.revoked_at.is_some() {
            return Err(StoreError::RefreshInvalid);
        }
        if current.expires_at <= now {
            return Err(StoreError::RefreshExpired);
        }
        if !self.holder_live(&current, now).await? {
            // Maybe a concurrent reuse revoked it: classify from the record.
            return self.look_again(&hash, token).await;
        }
        let next = successor(&current)?;
        check_record(&next)?;
        if next.family != current.family
            || next.session_id != current.session_id
            || next.user_id != current.user_id
            || next.remember_me != current.remember_me
            || next.hash == current.hash
        {
            return Err(StoreError::invalid(
                "successor",
                "must keep family, session, user and remember-me, with a new token",
            ));
        }
        if refresh.rotate_refresh(&hash, &next, now).await? {
            let previous = RefreshRecord {
                rotated_at: Some(now),
                successor: Some(next.hash),
                ..current
            };
            return Ok(Rotation::Rotated {
                previous,
                successor: next,
            });
        }
        // Lost the race (or the family was revoked meanwhile).
        self.look_again(&hash, token).await
    }

    /// The successor of refresh token `token`: derived from it with the
    /// server pepper (HMAC-SHA256, domain-separated from the stored hashes),
    /// so a client racing itself within `reuse_interval` can be handed the
    /// very successor the winner got without the store ever holding a
    /// secret. Mint rotations with it to get
    /// [`Rotation::AlreadyRotated::successor_token`].
    pub fn successor_token(&self, token: &str) -> String {
        let secret = self
            .config
            .hasher
            .hash(&format!("portcullis/successor/v1:{token}"));
        portcullis_core::opaque::encode(REFRESH_PREFIX, &secret)
    }

    /// After a failed rotation: a rotated token is a reuse, anything else invalid.
    async fn look_again(&self, hash: &[u8; 32], token: &str) -> StoreResult<Rotation> {
        match self.backends.refresh.refresh_by_hash(hash).await? {
            Some(again) if again.rotated_at.is_some() => {
                self.reused(again, token, self.now()).await
            }
            _ => Err(StoreError::RefreshInvalid),
        }
    }

    /// Whether the token's holder may still refresh: its session is live
    /// (asked of the backend, no cache: a logout stops rotation at once) and
    /// its user is not disabled.
    async fn holder_live(&self, record: &RefreshRecord, now: i64) -> StoreResult<bool> {
        let (session, user) = tokio::try_join!(
            self.session_live_uncached(&record.session_id, now),
            self.backends.users.user_by_id(&record.user_id),
        )?;
        Ok(session && !user.is_some_and(|u| u.disabled))
    }

    /// Whether the session is live, asking the backend (no cache: rotation
    /// must see a logout at once).
    async fn session_live_uncached(&self, sid: &str, now: i64) -> StoreResult<bool> {
        Ok(self
            .backends
            .sessions
            .session(sid)
            .await?
            .is_some_and(|s| s.is_active(now)))
    }

    /// A rotated token presented again: its successor once within the reuse
    /// window when everything about it is still valid, else a reuse.
    async fn reused(&self, record: RefreshRecord, token: &str, now: i64) -> StoreResult<Rotation> {
        if let Some(successor_hash) = self.grace_successor(&record, now).await? {
            let derived = self.successor_token(token);
            let successor_token = self
                .config
                .hasher
                .matches(&derived, &successor_hash)
                .then_some(derived);
            let rotation = Rotation::AlreadyRotated {
                previous: record,
                successor_hash,
                successor_token,
            };
            tracing::warn!(
                event = ?rotation.security_event(),
                "refresh token replayed within the reuse window: successor handed back once"
            );
            return Ok(rotation);
        }
        self.backends
            .refresh
            .revoke_family(&record.family, now)
            .await?;
        self.backends
            .sessions
            .revoke_session(&record.session_id, now)
            .await?;
        self.revocations.catch_up().await;
        let event = SecurityEvent::RefreshReuse {
            family: record.family,
            session: record.session_id,
            user: record.user_id,
            generation: record.generation,
        };
        tracing::warn!(?event, "refresh token reuse: family and session revoked");
        Err(StoreError::RefreshReused(event))
    }
}

impl Stores {
    /// The successor to hand back for a replay of `record`, when all of
    /// these hold: a reuse window is configured and not over; the token is
    /// neither revoked nor expired; its session is live and its user not
    /// disabled; the successor is stored and not revoked; and this is the
    /// first replay of the token (claimed atomically in the backend).
    async fn grace_successor(
        &self,
        record: &RefreshRecord,
        now: i64,
    ) -> StoreResult<Option<[u8; 32]>> {
        let window = i64::try_from(self.config.reuse_interval.as_secs()).unwrap_or(i64::MAX);
        let (Some(at), Some(successor)) = (record.rotated_at, record.successor) else {
            return Ok(None);
        };
        if window == 0
            || now.saturating_sub(at) > window
            || record.revoked_at.is_some()
            || record.expires_at <= now
            || !self.holder_live(record, now).await?
        {
            return Ok(None);
        }
        let refresh = &self.backends.refresh;
        if !refresh
            .refresh_by_hash(&successor)
            .await?
            .is_some_and(|s| s.revoked_at.is_none() && s.expires_at > now)
        {
            return Ok(None);
        }
        let claimed = refresh
            .claim_reuse_grace(&record.family, &record.hash, now)
            .await?;
        Ok(claimed.then_some(successor))
    }
}

impl Rotation {
    /// The event the caller must audit, if any: a successor handed back
    /// within the reuse window is [`SecurityEvent::RefreshGraceReplay`].
    pub fn security_event(&self) -> Option<SecurityEvent> {
        match self {
            Self::Rotated { .. } => None,
            Self::AlreadyRotated { previous, .. } => Some(SecurityEvent::RefreshGraceReplay {
                family: previous.family.clone(),
                session: previous.session_id.clone(),
                user: previous.user_id.clone(),
                generation: previous.generation,
            }),
        }
    }
}

fn check_record(r: &RefreshRecord) -> StoreResult<()> {
    for (field, value) in [
        ("family", &r.family),
        ("session_id", &r.session_id),
        ("user_id", &r.user_id),
    ] {
        if value.is_empty() || value.len() > super::input::MAX_ID {
            return Err(StoreError::invalid(field, "must be 1..=128 bytes"));
        }
    }
    Ok(())
}
