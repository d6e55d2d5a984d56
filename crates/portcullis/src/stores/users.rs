//! Users, login and sessions on the [`Stores`] facade.

use std::time::Duration;

use super::input::{self, Username};
use super::password::needs_rehash;
use super::{RevokedKind, Session, StoreError, StoreResult, Stores, User, random_id};

/// What is needed to create a user.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Username (unique case-insensitively, 1..=64 characters).
    pub username: String,
    /// Password (hashed with argon2id), or `None` with `password_hash` set.
    pub password: Option<String>,
    /// An imported hash (argon2id PHC or bcrypt), used when `password` is `None`.
    pub password_hash: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Tenant.
    pub tenant: Option<String>,
}

/// What is needed to open a session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// Owner.
    pub user_id: String,
    /// Lifetime.
    pub ttl: Duration,
    /// Client user agent (cut to 512 bytes).
    pub user_agent: Option<String>,
    /// Client IP address.
    pub client_ip: Option<String>,
    /// Remember-me.
    pub remember_me: bool,
}

fn id_arg(field: &'static str, raw: &str) -> StoreResult<String> {
    input::bounded(field, raw, input::MAX_ID)
}

impl Stores {
    /// Creates a user; [`StoreError::Conflict`] when the username is taken
    /// (compared case-insensitively).
    pub async fn create_user(&self, new: &NewUser) -> StoreResult<User> {
        let username = Username::parse(&new.username)?;
        let roles = input::name_list("roles", &new.roles)?;
        let permissions = input::name_list("permissions", &new.permissions)?;
        let tenant = input::optional("tenant", new.tenant.as_deref())?;
        let password_hash = match (&new.password, &new.password_hash) {
            (Some(pw), None) => {
                let pw = input::password(pw.as_bytes())?;
                self.passwords.hash(pw).await?
            }
            (None, Some(hash)) => {
                if hash.len() > 512
                    || !(hash.starts_with("$argon2id$")
                        || hash.starts_with("$2a$")
                        || hash.starts_with("$2b$"))
                {
                    return Err(StoreError::invalid(
                        "password_hash",
                        "must be an argon2id PHC string or a bcrypt $2a$/$2b$ hash",
                    ));
                }
                // A bcrypt import makes every login check pay bcrypt too.
                self.passwords.note_hash(hash).await?;
                hash.clone()
            }
            _ => {
                return Err(StoreError::invalid(
                    "password",
                    "give exactly one of password and password_hash",
                ));
            }
        };
        let now = self.now();
        let user = User {
            id: random_id(16)?,
            username: username.as_str().to_owned(),
            password_hash,
            roles,
            permissions,
            tenant,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.backends.users.insert_user(&user).await?;
        Ok(user)
    }

    /// The user with this username (case-insensitive).
    pub async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
        let username = Username::parse(username)?;
        self.backends.users.user_by_username(&username).await
    }

    /// The user with this id.
    pub async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id_arg("user_id", id)?;
        self.backends.users.user_by_id(&id).await
    }

    /// Whether the user `id` is disabled (an id that names no user is not:
    /// API keys may belong to owners that are not users). Checked for
    /// every API key on the request path; answers may be up to
    /// `revocation_cache_ttl` (at most 1 s) old on other replicas.
    pub async fn user_is_disabled(&self, id: &str) -> StoreResult<bool> {
        let id = input::bounded_str("user_id", id, input::MAX_ID)?;
        // Disabled on any replica: in the set within one poll.
        if self.revocations.contains(RevokedKind::UserDisabled, id) {
            return Ok(true);
        }
        if let Some(hit) = self.caches.users_disabled.get(id) {
            return Ok(hit);
        }
        let fetched_at = std::time::Instant::now();
        let disabled = self
            .backends
            .users
            .user_by_id(id)
            .await?
            .is_some_and(|u| u.disabled);
        self.caches
            .users_disabled
            .insert_fetched(id, disabled, fetched_at);
        Ok(disabled)
    }

    /// Enables or disables a user. Disabling also revokes every session and
    /// refresh family of the user (enabling again restores neither: the
    /// user logs in again), and rotation refuses a disabled user.
    pub async fn set_user_disabled(&self, id: &str, disabled: bool) -> StoreResult<()> {
        let id = id_arg("user_id", id)?;
        let now = self.now();
        if !self
            .backends
            .users
            .set_user_disabled(&id, disabled, now)
            .await?
        {
            return Err(StoreError::NotFound("user"));
        }
        let kind = RevokedKind::user_status(disabled);
        self.revocations
            .insert(kind, &id, super::revocation_set::session_entry_expiry(now));
        self.caches.users_disabled.invalidate(&id);
        if disabled {
            let (sessions, tokens) = self.revoke_user_tokens(&id).await?;
            tracing::info!(
                user = %id,
                sessions,
                tokens,
                "user disabled: sessions and refresh families revoked"
            );
        }
        Ok(())
    }

    /// Checks a login. Unknown users cost one argon2id verification (of a
    /// dummy hash) like known ones; a bcrypt or outdated hash is replaced by
    /// a fresh argon2id hash after a successful check.
    pub async fn login(&self, username: &[u8], password: &[u8]) -> StoreResult<User> {
        self.login_within(username, password, None).await
    }

    /// [`Self::login`] with each backend call within `budget` (a store
    /// that does not answer in time is down: [`StoreError::Unavailable`]).
    /// The password check is not counted: it has its own bound.
    pub async fn login_within(
        &self,
        username: &[u8],
        password: &[u8],
        budget: Option<std::time::Duration>,
    ) -> StoreResult<User> {
        let username = Username::from_bytes(username)?;
        let password = input::password(password)?;
        let lookup = self.backends.users.user_by_username(&username);
        let found = match budget {
            Some(budget) => super::hook::within_budget(budget, lookup).await?,
            None => lookup.await?,
        };
        let Some(user) = found else {
            self.passwords.verify_dummy(password).await?;
            return Err(StoreError::InvalidCredentials);
        };
        if !self
            .passwords
            .verify_login(password, &user.password_hash)
            .await?
            || user.disabled
        {
            return Err(StoreError::InvalidCredentials);
        }
        if needs_rehash(&user.password_hash) {
            let fresh = self.passwords.hash(password).await?;
            let write = self
                .backends
                .users
                .set_password_hash(&user.id, &fresh, self.now());
            let written = match budget {
                Some(budget) => super::hook::within_budget(budget, write).await,
                None => write.await,
            };
            if let Err(e) = written {
                // The login itself succeeded; the rehash is retried next time.
                tracing::warn!(error = %e, "password rehash failed");
            } else {
                return Ok(User {
                    password_hash: fresh,
                    ..user
                });
            }
        }
        Ok(user)
    }

    /// Opens a session.
    pub async fn create_session(&self, new: &NewSession) -> StoreResult<Session> {
        let user_id = id_arg("user_id", &new.user_id)?;
        if new.ttl.is_zero() {
            return Err(StoreError::invalid("ttl", "must be positive"));
        }
        let client_ip = input::client_ip(new.client_ip.as_deref())?;
        let now = self.now();
        let ttl = i64::try_from(new.ttl.as_secs()).unwrap_or(i64::MAX);
        let session = Session {
            id: random_id(16)?,
            user_id,
            created_at: now,
            last_seen_at: now,
            expires_at: now.saturating_add(ttl),
            user_agent: input::user_agent(new.user_agent.as_deref()),
            client_ip,
            remember_me: new.remember_me,
            revoked_at: None,
        };
        self.backends.sessions.insert_session(&session).await?;
        Ok(session)
    }

    /// The session with this id, as stored.
    pub async fn session(&self, sid: &str) -> StoreResult<Option<Session>> {
        let sid = id_arg("session_id", sid)?;
        self.backends.sessions.session(&sid).await
    }

    /// Whether a session is live (not revoked, not expired), asking the
    /// backend (the request path reads [`Stores::revocations`] instead).
    pub async fn session_is_active(&self, sid: &str) -> StoreResult<bool> {
        let sid = input::bounded_str("session_id", sid, input::MAX_ID)?;
        let now = self.now();
        let live = self.backends.sessions.live_session_expiry(sid).await?;
        Ok(live.is_some_and(|expires| expires > now))
    }

    /// Records activity on a session, writing at most once a minute per
    /// session (no write per request); true when it wrote.
    pub async fn touch_session(&self, sid: &str) -> StoreResult<bool> {
        let sid = id_arg("session_id", sid)?;
        let now = self.now();
        self.backends
            .sessions
            .touch_session(&sid, now, now.saturating_sub(60))
            .await
    }

    /// A user's live sessions, newest first.
    pub async fn sessions_of(&self, user_id: &str) -> StoreResult<Vec<Session>> {
        let user_id = id_arg("user_id", user_id)?;
        let now = self.now();
        let mut list: Vec<Session> = self
            .backends
            .sessions
            .sessions_of(&user_id)
            .await?
            .into_iter()
            .filter(|s| s.is_active(now))
            .collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(list)
    }

    /// Revokes one session (logout); false when absent or already revoked.
    pub async fn revoke_session(&self, sid: &str) -> StoreResult<bool> {
        let sid = id_arg("session_id", sid)?;
        let revoked = self
            .backends
            .sessions
            .revoke_session(&sid, self.now())
            .await?;
        self.revocations.catch_up().await;
        Ok(revoked)
    }

    /// Revokes every live session of a user (logout-all); returns how many.
    pub async fn revoke_all_sessions(&self, user_id: &str) -> StoreResult<u64> {
        let user_id = id_arg("user_id", user_id)?;
        let n = self
            .backends
            .sessions
            .revoke_sessions_of(&user_id, self.now())
            .await?;
        self.revocations.catch_up().await;
        Ok(n)
    }

    /// Revokes every session and refresh family of a user at once (what
    /// disabling, deleting or a password reset does); returns the sessions
    /// and refresh tokens revoked.
    pub async fn revoke_user_tokens(&self, user_id: &str) -> StoreResult<(u64, u64)> {
        let user_id = id_arg("user_id", user_id)?;
        let now = self.now();
        let revoked = tokio::try_join!(
            self.backends.sessions.revoke_sessions_of(&user_id, now),
            self.backends.refresh.revoke_families_of(&user_id, now),
        )?;
        self.revocations.catch_up().await;
        Ok(revoked)
    }

    /// Replaces a user's roles and permissions (validated like
    /// [`Self::create_user`]'s). Tokens already issued keep the grants they
    /// carry until they expire; new tokens and refreshes get these.
    pub async fn set_user_grants(
        &self,
        id: &str,
        roles: &[String],
        permissions: &[String],
    ) -> StoreResult<()> {
        let id = id_arg("user_id", id)?;
        let roles = input::name_list("roles", roles)?;
        let permissions = input::name_list("permissions", permissions)?;
        if self
            .backends
            .users
            .set_user_grants(&id, &roles, &permissions, self.now())
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::NotFound("user"))
        }
    }

    /// Sets a new password (hashed with argon2id) and revokes every session
    /// and refresh family of the user: whoever held them must log in again.
    pub async fn reset_password(&self, id: &str, password: &str) -> StoreResult<()> {
        let id = id_arg("user_id", id)?;
        let pw = input::password(password.as_bytes())?;
        let hash = self.passwords.hash(pw).await?;
        if !self
            .backends
            .users
            .set_password_hash(&id, &hash, self.now())
            .await?
        {
            return Err(StoreError::NotFound("user"));
        }
        self.revoke_user_tokens(&id).await?;
        Ok(())
    }

    /// A page of users in username order: those whose username starts with
    /// `search` (case-insensitive), after the cursor `after` (the last
    /// username of the previous page), at most `limit` (1 to 500).
    pub async fn list_users(
        &self,
        search: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<User>> {
        let search = if search.is_empty() {
            String::new()
        } else {
            input::bounded("search", search, input::MAX_USERNAME)?.to_lowercase()
        };
        let after = match after {
            Some(a) => Some(input::bounded("after", a, input::MAX_USERNAME)?.to_lowercase()),
            None => None,
        };
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(StoreError::invalid("limit", "must be 1 to 500"));
        }
        self.backends
            .users
            .list_users(&search, after.as_deref(), limit)
            .await
    }

    /// Deletes a user: revokes its sessions, refresh families and API keys,
    /// then removes the record (the username becomes free). Audit events
    /// that name the user are kept.
    pub async fn delete_user(&self, id: &str) -> StoreResult<()> {
        let id = id_arg("user_id", id)?;
        if self.backends.users.user_by_id(&id).await?.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        self.revoke_user_tokens(&id).await?;
        for key in self.backends.api_keys.api_keys_of(&id).await? {
            if key.revoked_at.is_none() {
                self.revoke_api_key(&key.id).await?;
            }
        }
        self.backends.users.delete_user(&id).await?;
        self.caches.users_disabled.invalidate(&id);
        Ok(())
    }
}

impl Stores {
    /// Reads every stored password hash once and notes the costliest
    /// bcrypt one (accounts imported and not yet rehashed), so that from
    /// then on every login check in this process, an unknown user's too,
    /// pays a bcrypt verification at that cost: call at startup. Returns
    /// how many bcrypt hashes were found.
    pub async fn note_stored_password_hashes(&self) -> StoreResult<usize> {
        let mut after: Option<String> = None;
        let mut found = 0usize;
        let mut costliest: Option<(u32, String)> = None;
        loop {
            let page = self.list_users("", after.as_deref(), MAX_PAGE).await?;
            for user in &page {
                if let Some(cost) = super::password::bcrypt_cost(&user.password_hash) {
                    found += 1;
                    if costliest.as_ref().is_none_or(|(c, _)| *c < cost) {
                        costliest = Some((cost, user.password_hash.clone()));
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == MAX_PAGE => after = Some(last.username.clone()),
                _ => break,
            }
        }
        if let Some((_, hash)) = costliest {
            self.passwords.note_hash(&hash).await?;
        }
        Ok(found)
    }
}

/// The most users one [`Stores::list_users`] call returns.
pub const MAX_PAGE: usize = 500;

/// Prefix of password reset tokens.
pub const RESET_TOKEN_PREFIX: &str = "pcr_";

/// Longest reset token accepted for parsing.
const MAX_RESET_TOKEN: usize = 512;

/// Longest a reset token may live: 30 days.
pub const MAX_RESET_TTL: u64 = 30 * 24 * 3600;

impl Stores {
    /// The MAC of a reset token: keyed by the pepper and bound to the
    /// user's current password hash, so setting a password (this token or
    /// any other way) spends every token issued before.
    fn reset_mac(&self, user: &User, expires_at: i64) -> [u8; 32] {
        self.config.hasher.hash(&format!(
            "portcullis password reset\0{}\0{expires_at}\0{}",
            user.id, user.password_hash
        ))
    }

    /// A one-time password reset token for user `id`, valid `ttl` (at most
    /// [`MAX_RESET_TTL`]): for invitations (a user created without a
    /// usable password) and reset links. Nothing is stored: the token is
    /// the user id, its expiry and a MAC over them and the current password
    /// hash, so it stops working once any new password is set.
    pub async fn password_reset_token(
        &self,
        id: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<(String, i64)> {
        let id = id_arg("user_id", id)?;
        if ttl.is_zero() || ttl.as_secs() > MAX_RESET_TTL {
            return Err(StoreError::invalid("ttl", "must be 1 s to 30 days"));
        }
        let user = self
            .backends
            .users
            .user_by_id(&id)
            .await?
            .ok_or(StoreError::NotFound("user"))?;
        let expires_at = self
            .now()
            .saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let mac = self.reset_mac(&user, expires_at);
        let token = format!(
            "{RESET_TOKEN_PREFIX}{}.{expires_at}.{}",
            portcullis_core::jose::b64_encode(user.id.as_bytes()),
            portcullis_core::jose::b64_encode(&mac)
        );
        Ok((token, expires_at))
    }

    /// Sets `password` for the user a reset token names, once: a malformed,
    /// forged, expired or already-spent token (or a disabled user) is
    /// [`StoreError::InvalidCredentials`], whichever it was. Every session
    /// of the user is revoked. Returns the user id.
    pub async fn redeem_password_reset(&self, token: &str, password: &str) -> StoreResult<String> {
        let invalid = || StoreError::InvalidCredentials;
        if token.len() > MAX_RESET_TOKEN {
            return Err(invalid());
        }
        let rest = token.strip_prefix(RESET_TOKEN_PREFIX).ok_or_else(invalid)?;
        let mut parts = rest.split('.');
        let (Some(id), Some(exp), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let id = portcullis_core::jose::b64_decode(id.as_bytes())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        let expires_at: i64 = exp.parse().map_err(|_| invalid())?;
        let mac = portcullis_core::jose::b64_decode(mac.as_bytes()).ok_or_else(invalid)?;
        // The new password is checked first: a bad one spends nothing.
        input::password(password.as_bytes())?;
        if expires_at < self.now() {
            return Err(invalid());
        }
        let id = id_arg("user_id", &id).map_err(|_| invalid())?;
        let user = self
            .backends
            .users
            .user_by_id(&id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(invalid)?;
        if !portcullis_core::opaque::ct_eq(&self.reset_mac(&user, expires_at), &mac) {
            return Err(invalid());
        }
        // The write succeeds only while the hash the token is bound to is
        // still current (compare-and-set): of concurrent redemptions of one
        // token exactly one sets its password, the others find it spent.
        let pw = input::password(password.as_bytes())?;
        let hash = self.passwords.hash(pw).await?;
        if !self
            .backends
            .users
            .replace_password_hash(&id, &user.password_hash, &hash, self.now())
            .await?
        {
            return Err(invalid());
        }
        self.revoke_user_tokens(&id).await?;
        Ok(id)
    }
}
