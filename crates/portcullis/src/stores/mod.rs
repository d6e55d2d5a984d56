//! Durable and hot state behind one facade, [`Stores`]: users, sessions,
//! refresh-token families, the access-token denylist, API keys and app
//! credentials, each a trait with one implementation per backend.
//!
//! Input is validated once, in [`Stores`], before any backend is touched;
//! the backend traits take already-validated records. Which backend holds
//! which store is configuration ([`Backends`]).

pub mod api_keys;
pub mod apps;
pub mod hook;
pub mod input;
#[cfg(feature = "memory")]
pub mod memory;
pub mod password;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod refresh;
pub mod revocation;
pub mod revocation_set;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod users;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{Clock, SecretHasher, SystemClock};

pub use self::api_keys::{API_KEY_PREFIX, CreatedApiKey, NewApiKey};
pub use self::apps::{
    APP_SECRET_PREFIX, BasicAuthError, CreatedApp, MAX_APP_SECRET_GRACE, NewApp, parse_basic_auth,
};
pub use self::hook::StoresRevocation;
pub use self::input::Username;
pub use self::password::PasswordHasher;
pub use self::refresh::Rotation;
pub use self::revocation::RevocationCaches;
pub use self::revocation_set::{
    OnStale, RevocationFeedStats, RevocationPolicy, RevocationSet, SESSION_REVOCATION_TTL,
};
pub use self::users::{NewSession, NewUser};

/// A boxed, `Send` future: what every store method returns (object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Something that must reach the audit log.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// An already-rotated refresh token was presented again: its family and
    /// session were revoked.
    RefreshReuse {
        /// The revoked family.
        family: String,
        /// The revoked session.
        session: String,
        /// The user the family belonged to.
        user: String,
        /// Generation of the replayed token.
        generation: u32,
    },
    /// An already-rotated refresh token was presented again within the
    /// reuse window and its successor was handed back (at most once per
    /// token, only while its session, user and family are live).
    RefreshGraceReplay {
        /// The token's family.
        family: String,
        /// The token's session.
        session: String,
        /// The user the family belongs to.
        user: String,
        /// Generation of the replayed token.
        generation: u32,
    },
}

/// Why a store operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller's input is malformed; nothing was changed.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record with the same unique key exists; pick another.
    #[error("{0} already exists; choose another")]
    Conflict(&'static str),
    /// No such record.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Login failed (unknown user, wrong password or disabled user).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// An already-rotated refresh token was presented; the family and the
    /// session are revoked and the event must be audited.
    #[error("refresh token reused; its family and session were revoked, log in again")]
    RefreshReused(SecurityEvent),
    /// The refresh token is not a well-formed `pcr_` token (prefix, length, checksum).
    #[error("refresh token is malformed; log in again")]
    RefreshMalformed,
    /// The refresh token is unknown or revoked.
    #[error("refresh token is invalid or revoked; log in again")]
    RefreshInvalid,
    /// The refresh token expired.
    #[error("refresh token expired; log in again")]
    RefreshExpired,
    /// The API key is malformed, unknown, revoked or expired.
    #[error("invalid, revoked or expired API key; check the key or create a new one")]
    InvalidApiKey,
    /// The app id or secret is wrong, or the app is disabled.
    #[error(
        "invalid app id or secret; check both (a rotated-out secret works only during its grace period)"
    )]
    InvalidAppCredentials,
    /// The backend could not be reached or answered with an error; retry, and
    /// check that the server is up.
    #[error("store backend unavailable: {0}; check that the server is running and reachable")]
    Unavailable(String),
    /// Too many password hashes are being computed at once (each holds
    /// 19 MiB): the login waited its bounded time and was refused; retry
    /// shortly.
    #[error("too many logins are being checked at once; retry in a moment")]
    Busy,
    /// A stored value could not be decoded (corrupt row); inspect the record.
    #[error("stored data is corrupt: {0}; restore the record or the database from a backup")]
    Corrupt(String),
}

impl StoreError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput { .. } => "store.invalid_input",
            Self::Conflict(_) => "store.conflict",
            Self::NotFound(_) => "store.not_found",
            Self::InvalidCredentials => "auth.invalid_credentials",
            Self::RefreshReused(_) => "auth.refresh_reused",
            Self::RefreshMalformed => "auth.malformed_token",
            Self::RefreshInvalid => "auth.token_revoked",
            Self::RefreshExpired => "auth.token_expired",
            Self::InvalidApiKey => "auth.invalid_api_key",
            Self::InvalidAppCredentials => "auth.invalid_app_credentials",
            Self::Unavailable(_) => "store.unavailable",
            Self::Busy => "backend.unavailable",
            Self::Corrupt(_) => "store.corrupt",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::InvalidInput { field, reason }
    }
}

/// A user account (its `Debug` output includes the password hash, never a password).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Stable id.
    pub id: String,
    /// Display form of the username (unique case-insensitively).
    pub username: String,
    /// PHC string (argon2id) or bcrypt hash.
    pub password_hash: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Whether login is refused.
    pub disabled: bool,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
}

/// A login session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Session id (`sid`).
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last activity, Unix seconds.
    pub last_seen_at: i64,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Client user agent (bounded).
    pub user_agent: Option<String>,
    /// Client IP address.
    pub client_ip: Option<String>,
    /// Whether the long lifetime applies.
    pub remember_me: bool,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

impl Session {
    /// Whether the session is neither revoked nor expired at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A stored refresh token: only its keyed hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefreshRecord {
    /// HMAC-SHA256 (server pepper) of the token.
    pub hash: [u8; 32],
    /// Rotation family.
    pub family: String,
    /// Position in the family.
    pub generation: u32,
    /// Session.
    pub session_id: String,
    /// User.
    pub user_id: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// Whether the remember-me lifetime applies (carried over).
    pub remember_me: bool,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// When it was rotated (single use).
    pub rotated_at: Option<i64>,
    /// Hash of the token that replaced it.
    pub successor: Option<[u8; 32]>,
    /// When its family was revoked.
    pub revoked_at: Option<i64>,
}

impl RefreshRecord {
    /// The record for a token the issuer just produced.
    pub fn from_issued(issued: &portcullis_core::IssuedRefresh, user_id: &str, now: i64) -> Self {
        Self {
            hash: issued.hash,
            family: issued.family.clone(),
            generation: issued.generation,
            session_id: issued.session_id.clone(),
            user_id: user_id.to_owned(),
            expires_at: issued.expires_at,
            remember_me: issued.remember_me,
            created_at: now,
            rotated_at: None,
            successor: None,
            revoked_at: None,
        }
    }
}

/// A stored API key (hash only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (embedded in the key).
    pub id: String,
    /// HMAC-SHA256 (server pepper) of the key without its checksum.
    pub hash: [u8; 32],
    /// Human name.
    pub name: String,
    /// Owner (user or service id).
    pub owner: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Optional expiry, Unix seconds.
    pub expires_at: Option<i64>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Last use (updated at most once a minute).
    pub last_used_at: Option<i64>,
}

/// Stored app credentials (hashes only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppRecord {
    /// App id (`x-app-id`).
    pub app_id: String,
    /// Human name.
    pub name: String,
    /// Keyed hash of the current secret.
    pub secret_hash: [u8; 32],
    /// Version of the current secret (1 at creation).
    pub secret_version: u32,
    /// Keyed hash of the previous secret, valid until `previous_valid_until`.
    pub previous_hash: Option<[u8; 32]>,
    /// End of the previous secret's grace period, Unix seconds.
    pub previous_valid_until: Option<i64>,
    /// Services the app may call.
    pub services: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Whether the app is refused.
    pub disabled: bool,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last update time, Unix seconds.
    pub updated_at: i64,
}

/// A signing key rotated in through the admin API: its private part sealed
/// with [`portcullis_core::KeySealer`] (never stored in the clear), and its
/// schedule ([`portcullis_core::jose::rotation`]).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SigningKeyRecord {
    /// Key id.
    pub kid: String,
    /// The `alg` it signs with.
    pub alg: String,
    /// The sealed private key.
    pub sealed: Vec<u8>,
    /// Creation (and publication) time, Unix seconds.
    pub created_at: i64,
    /// When it starts signing, Unix seconds.
    pub activates_at: i64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .finish()
    }
}

/// Users (unique case-insensitive usernames).
pub trait UserStore: Send + Sync {
    /// Inserts `user`; [`StoreError::Conflict`] when the username is taken.
    fn insert_user<'a>(&'a self, user: &'a User) -> BoxFuture<'a, StoreResult<()>>;
    /// The user with this username (case-insensitive).
    fn user_by_username<'a>(
        &'a self,
        username: &'a Username,
    ) -> BoxFuture<'a, StoreResult<Option<User>>>;
    /// The user with this id.
    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<User>>>;
    /// Replaces the password hash; false when there is no such user.
    fn set_password_hash<'a>(
        &'a self,
        id: &'a str,
        hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Replaces the password hash only while it is still `expected`, as one
    /// atomic compare-and-set (of N concurrent calls with the same
    /// `expected`, at most one returns true); false when there is no such
    /// user or its hash changed.
    fn replace_password_hash<'a>(
        &'a self,
        id: &'a str,
        expected: &'a str,
        hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Enables or disables a user; false when there is no such user.
    fn set_user_disabled<'a>(
        &'a self,
        id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Replaces a user's roles and permissions; false when there is no such user.
    fn set_user_grants<'a>(
        &'a self,
        id: &'a str,
        roles: &'a [String],
        permissions: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Users whose lower-cased username starts with `prefix` and sorts
    /// after `after` (a lower-cased username, exclusive), in username
    /// order, at most `limit`.
    fn list_users<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<User>>>;
    /// Deletes a user record (its username becomes free); false when there
    /// is no such user. Sessions, refresh families and API keys are the
    /// caller's to revoke first.
    fn delete_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<bool>>;
    /// The log this backend appends each change of a user's `disabled`
    /// flag to ([`RevokedKind::UserDisabled`] / [`RevokedKind::UserEnabled`]),
    /// in the same transaction (`None`: it keeps none, and only the
    /// status cache carries the change, within 1 s).
    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        None
    }
}

/// Login sessions.
pub trait SessionStore: Send + Sync {
    /// Inserts a session.
    fn insert_session<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, StoreResult<()>>;
    /// The session with this id.
    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Session>>>;
    /// When the session `id` expires, if it is present and not revoked
    /// (the request path's question: answered without copying the record
    /// where the backend can).
    fn live_session_expiry<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<i64>>> {
        Box::pin(async move {
            Ok(self
                .session(id)
                .await?
                .filter(|s| s.revoked_at.is_none())
                .map(|s| s.expires_at))
        })
    }
    /// Every session of a user (revoked and expired ones included).
    fn sessions_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, StoreResult<Vec<Session>>>;
    /// Sets `last_seen_at = now` on a live session last seen at or before
    /// `stale_before`; false when nothing was written.
    fn touch_session<'a>(
        &'a self,
        id: &'a str,
        now: i64,
        stale_before: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Revokes one session; false when absent or already revoked.
    fn revoke_session<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>>;
    /// Revokes every live session of a user; returns how many.
    fn revoke_sessions_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>>;
    /// Deletes sessions expired at `now`; returns how many (0 where the
    /// backend expires them itself).
    fn purge_expired_sessions(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// The log this backend appends each session revocation to, in the
    /// same transaction (`None`: it keeps none, and every session check
    /// asks the backend).
    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        None
    }
}

/// Refresh-token families.
pub trait RefreshStore: Send + Sync {
    /// Inserts a fresh token record.
    fn insert_refresh<'a>(&'a self, record: &'a RefreshRecord) -> BoxFuture<'a, StoreResult<()>>;
    /// The record with this hash.
    fn refresh_by_hash<'a>(
        &'a self,
        hash: &'a [u8; 32],
    ) -> BoxFuture<'a, StoreResult<Option<RefreshRecord>>>;
    /// Atomically marks `old` rotated (only if not yet rotated nor revoked)
    /// and inserts `successor`; true for the one caller that won.
    fn rotate_refresh<'a>(
        &'a self,
        old: &'a [u8; 32],
        successor: &'a RefreshRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// Revokes every token of a family, atomically with respect to
    /// concurrent rotations (a successor stored meanwhile is revoked too);
    /// returns how many were live.
    fn revoke_family<'a>(&'a self, family: &'a str, now: i64) -> BoxFuture<'a, StoreResult<u64>>;
    /// Revokes every family of a user; returns how many tokens were live.
    fn revoke_families_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>>;
    /// Deletes token records that expired at or before `before`; returns
    /// how many (0 where the backend expires them itself).
    fn purge_expired_refresh(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// Marks the one hand-out of a rotated token's successor within the
    /// reuse window; true for the one caller that got it (false when it was
    /// already claimed, or the token is unknown or revoked).
    fn claim_reuse_grace<'a>(
        &'a self,
        family: &'a str,
        hash: &'a [u8; 32],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
}

/// The access-token denylist (`jti` until the token's `exp`).
pub trait Denylist: Send + Sync {
    /// Denies `jti` until `expires_at` (Unix seconds); an entry already
    /// there keeps the later of the two expiries.
    fn deny<'a>(&'a self, jti: &'a str, expires_at: i64) -> BoxFuture<'a, StoreResult<()>>;
    /// Whether `jti` is denied at `now`.
    fn is_denied<'a>(&'a self, jti: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>>;
    /// Drops entries expired at `now`; returns how many (0 where the backend expires them itself).
    fn purge_expired(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// The log this backend appends each denied `jti` to, in the same
    /// transaction or script (`None`: it keeps none, and every `jti` check
    /// asks the backend).
    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        None
    }
}

/// What a revocation-log entry says.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokedKind {
    /// An access token's `jti` is refused.
    Jti,
    /// A session id (`sid`) is refused: every token it issued.
    Session,
    /// An API key (by id) is revoked.
    ApiKey,
    /// A user (by id) is disabled: every API key it owns is refused.
    UserDisabled,
    /// A user (by id) is enabled again: cancels an earlier
    /// [`Self::UserDisabled`] (the set holds nothing for it).
    UserEnabled,
    /// An app (client credentials, by app id) is disabled.
    AppDisabled,
    /// An app is enabled again: cancels an earlier [`Self::AppDisabled`].
    AppEnabled,
    /// An entry this build cannot read: a kind tag written by a newer
    /// version (during a rolling upgrade), or fields that do not parse
    /// (tag 0). The set skips it, counts it and warns; following the log
    /// goes on past it (one bad entry must not stop every replica's feed).
    Unrecognized(i64),
}

impl RevokedKind {
    /// The stored tag (1: `jti`, 2: session, 3: API key, 4: user disabled,
    /// 5: user enabled, 6: app disabled, 7: app enabled).
    pub fn tag(self) -> i64 {
        match self {
            Self::Jti => 1,
            Self::Session => 2,
            Self::ApiKey => 3,
            Self::UserDisabled => 4,
            Self::UserEnabled => 5,
            Self::AppDisabled => 6,
            Self::AppEnabled => 7,
            Self::Unrecognized(tag) => tag,
        }
    }

    /// The entry a change of a user's `disabled` flag appends.
    pub fn user_status(disabled: bool) -> Self {
        if disabled {
            Self::UserDisabled
        } else {
            Self::UserEnabled
        }
    }

    /// The entry a change of an app's `disabled` flag appends.
    pub fn app_status(disabled: bool) -> Self {
        if disabled {
            Self::AppDisabled
        } else {
            Self::AppEnabled
        }
    }

    /// The kind of a stored tag ([`Self::Unrecognized`] for one this
    /// build does not know).
    pub fn from_tag(tag: i64) -> Self {
        match tag {
            1 => Self::Jti,
            2 => Self::Session,
            3 => Self::ApiKey,
            4 => Self::UserDisabled,
            5 => Self::UserEnabled,
            6 => Self::AppDisabled,
            7 => Self::AppEnabled,
            _ => Self::Unrecognized(tag),
        }
    }
}

/// One entry of a revocation log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRevocation {
    /// Position in the log (monotonic, assigned by the backend).
    pub seq: u64,
    /// What is refused.
    pub kind: RevokedKind,
    /// The `jti` or session id.
    pub subject: String,
    /// When the entry stops mattering, Unix seconds (the latest expiry of
    /// a token it refuses).
    pub expires_at: i64,
}

/// A page of a revocation log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationPage {
    /// Live entries after the cursor, in `seq` order.
    pub entries: Vec<LoggedRevocation>,
    /// The highest `seq` the log has assigned (lower than a follower's
    /// cursor only when the log was reset, e.g. a Redis restarted empty).
    pub head: u64,
}

/// The append-only log of revocations a backend keeps beside the state it
/// revokes, which every replica's [`RevocationSet`] follows.
pub trait RevocationLog: Send + Sync {
    /// Up to `limit` entries with `seq > after`, in `seq` order, and the
    /// log's head. Entries expired at `now` may be left out (a log that
    /// returns them counts them in `limit`; the set ignores them).
    fn revocations_after(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RevocationPage>>;
    /// Deletes entries expired at `now`; returns how many.
    fn purge_revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// A task, run for as long as the set follows this log, that calls
    /// `on_append` with [`WatchEvent::Appended`] whenever another process
    /// appends to it (PostgreSQL: `LISTEN`), so the feed reads at once
    /// instead of at its next poll, and with [`WatchEvent::Listening`] each
    /// time it (re)starts listening (what was announced while it was not is
    /// lost, so the feed reads then too); `None` (the default) for a log
    /// with no such signal. A hint only: the feed polls every
    /// `poll_interval` whether or not it comes.
    fn watch(&self, on_append: AppendSignal) -> Option<BoxFuture<'static, ()>> {
        let _ = on_append;
        None
    }
}

/// What a log's [`RevocationLog::watch`] task reports.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// Another process appended to the log (a notification arrived).
    Appended,
    /// The watch listens (again): at its start and after each reconnect.
    Listening,
}

/// What a log's [`RevocationLog::watch`] task calls on each event.
pub type AppendSignal = Arc<dyn Fn(WatchEvent) + Send + Sync>;

/// API keys.
pub trait ApiKeyStore: Send + Sync {
    /// Inserts a key record.
    fn insert_api_key<'a>(&'a self, key: &'a ApiKeyRecord) -> BoxFuture<'a, StoreResult<()>>;
    /// The key with this id.
    fn api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Arc<ApiKeyRecord>>>>;
    /// Every key of an owner.
    fn api_keys_of<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, StoreResult<Vec<ApiKeyRecord>>>;
    /// Revokes a key; false when absent or already revoked.
    fn revoke_api_key<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>>;
    /// Records a use at `at`.
    fn touch_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, StoreResult<()>>;
    /// Deletes keys that expired at or before `before`; returns how many
    /// (0 where the backend expires them itself).
    fn purge_expired_api_keys(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>>;
    /// The log this backend appends each key revocation to
    /// ([`RevokedKind::ApiKey`]), in the same transaction (`None`: it keeps
    /// none, and only the key cache carries the revocation, within 1 s).
    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        None
    }
}

/// App credentials.
pub trait AppStore: Send + Sync {
    /// Inserts an app; [`StoreError::Conflict`] when the id is taken.
    fn insert_app<'a>(&'a self, app: &'a AppRecord) -> BoxFuture<'a, StoreResult<()>>;
    /// The app with this id.
    fn app<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, StoreResult<Option<AppRecord>>>;
    /// Makes the current secret the previous one (valid until
    /// `previous_valid_until`) and installs `new_hash` as the next version,
    /// incremented in the store (concurrent rotations get distinct
    /// versions); the new version, or `None` when the app is absent.
    fn rotate_app_secret<'a>(
        &'a self,
        app_id: &'a str,
        new_hash: &'a [u8; 32],
        previous_valid_until: i64,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<u32>>>;
    /// Enables or disables an app; false when absent.
    fn set_app_disabled<'a>(
        &'a self,
        app_id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>>;
    /// The log this backend appends each change of an app's `disabled`
    /// flag to ([`RevokedKind::AppDisabled`] / [`RevokedKind::AppEnabled`]),
    /// in the same transaction (`None`: only the app cache carries it,
    /// within 1 s).
    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        None
    }
}

/// The stored key that makes a rotation wait: it activates later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    /// Its key id.
    pub kid: String,
    /// When it activates, Unix seconds.
    pub activates_at: i64,
}

/// Rotated-in signing keys (a handful of records, read by every replica's
/// key ring every poll).
pub trait SigningKeyStore: Send + Sync {
    /// Inserts a key; [`StoreError::Conflict`] when the kid is taken.
    fn insert_signing_key<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// Inserts a key only when no stored key activates after `now` (no
    /// rotation is pending), as one atomic step: of N concurrent calls at
    /// most one stores its key. Returns the pending key that refused it.
    fn insert_signing_key_unless_pending<'a>(
        &'a self,
        key: &'a SigningKeyRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<PendingKey>>>;
    /// Every stored key.
    fn signing_keys(&self) -> BoxFuture<'_, StoreResult<Vec<SigningKeyRecord>>>;
    /// Deletes a retired key; false when absent.
    fn delete_signing_key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, StoreResult<bool>>;
}

/// Which backend holds which store.
#[derive(Clone)]
pub struct Backends {
    /// Users.
    pub users: Arc<dyn UserStore>,
    /// Sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Refresh-token families.
    pub refresh: Arc<dyn RefreshStore>,
    /// Access-token denylist.
    pub denylist: Arc<dyn Denylist>,
    /// API keys.
    pub api_keys: Arc<dyn ApiKeyStore>,
    /// App credentials.
    pub apps: Arc<dyn AppStore>,
    /// Rotated-in signing keys.
    pub signing_keys: Arc<dyn SigningKeyStore>,
}

impl Backends {
    /// Every store on one backend.
    pub fn all<B>(backend: Arc<B>) -> Self
    where
        B: UserStore
            + SessionStore
            + RefreshStore
            + Denylist
            + ApiKeyStore
            + AppStore
            + SigningKeyStore
            + 'static,
    {
        Self {
            users: backend.clone(),
            sessions: backend.clone(),
            refresh: backend.clone(),
            denylist: backend.clone(),
            api_keys: backend.clone(),
            apps: backend.clone(),
            signing_keys: backend,
        }
    }
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backends(..)")
    }
}

/// Behaviour of [`Stores`].
#[derive(Debug, Clone)]
pub struct StoresConfig {
    /// Keyed hashing (server pepper) of refresh tokens and app secrets.
    pub hasher: SecretHasher,
    /// A rotated refresh token presented again within this interval gets the
    /// successor back once instead of revoking the family (default 0: off;
    /// at most [`MAX_REUSE_INTERVAL`]).
    pub reuse_interval: Duration,
    /// How long a replica may trust a looked-up session, API key or app
    /// before asking the backend again (at most 1 s; `ZERO` disables the
    /// caches, right for the memory backend).
    pub revocation_cache_ttl: Duration,
    /// Minimum time between two `last_used_at` writes of one API key
    /// (default 60 s; at least 1 s).
    pub api_key_touch_interval: Duration,
    /// Most password hashes computed at once (default 0: one per core;
    /// each argon2id hash holds 19 MiB).
    pub hashing_concurrency: usize,
    /// Longest wait for a hashing slot before a login is refused with
    /// [`StoreError::Busy`] (default 2 s).
    pub hashing_wait: Duration,
    /// How the local revocation set follows the logs, and what a stale
    /// feed means (default: 100 ms polls, `max_stale` 30 s, `deny`).
    pub revocation: RevocationPolicy,
}

/// How long expired refresh tokens and API keys are kept before they are
/// purged (or expire, on Redis): a late replay of a refresh token is still
/// recognised as reuse, and `api_keys_of` still shows a recently expired key.
pub const EXPIRED_RETENTION: Duration = Duration::from_secs(86_400);

/// What one [`Stores::purge_expired`] pass deleted, per store (0 where the
/// backend expires records itself, as Redis does).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Denylist entries past their token's `exp`.
    pub denylist: u64,
    /// Refresh-token records expired for longer than [`EXPIRED_RETENTION`].
    pub refresh_tokens: u64,
    /// Sessions past their expiry.
    pub sessions: u64,
    /// API keys expired for longer than [`EXPIRED_RETENTION`].
    pub api_keys: u64,
    /// Revocation-log entries past their expiry.
    pub revocation_log: u64,
}

/// Longest accepted [`StoresConfig::reuse_interval`].
pub const MAX_REUSE_INTERVAL: Duration = Duration::from_secs(10);

impl StoresConfig {
    /// Defaults with `hasher`: no reuse interval, 1 s revocation caches,
    /// `last_used_at` written at most once a minute.
    pub fn new(hasher: SecretHasher) -> Self {
        Self {
            hasher,
            reuse_interval: Duration::ZERO,
            revocation_cache_ttl: Duration::from_secs(1),
            api_key_touch_interval: Duration::from_secs(60),
            hashing_concurrency: 0,
            hashing_wait: password::DEFAULT_HASHING_WAIT,
            revocation: RevocationPolicy::default(),
        }
    }
}

/// The stores facade: validates input, hashes secrets, and drives the
/// backends. Cheap to share (`Arc` it).
pub struct Stores {
    backends: Backends,
    config: StoresConfig,
    clock: Arc<dyn Clock>,
    passwords: PasswordHasher,
    caches: RevocationCaches,
    verified_keys: api_keys::VerifiedKeys,
    revocations: RevocationSet,
    /// Opens after consecutive failures of request-path calls
    /// ([`Stores::on_request_path`]): a backend known down costs nothing.
    request_breaker: crate::ratelimit::fallback::CircuitBreaker,
    /// Whether denied `jti`s / revoked sessions reach the set through a
    /// log (else each check asks the backend).
    jtis_in_set: bool,
    sessions_in_set: bool,
    /// Whether revoked API keys / user status changes reach the set
    /// (else the 1 s caches alone carry them).
    keys_in_set: bool,
    users_in_set: bool,
    apps_in_set: bool,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// A facade over `backends` on the system clock. Fails when
    /// `revocation_cache_ttl` exceeds 1 s (the documented revocation bound),
    /// `reuse_interval` exceeds [`MAX_REUSE_INTERVAL`] or
    /// `api_key_touch_interval` is under 1 s.
    pub fn new(backends: Backends, config: StoresConfig) -> StoreResult<Self> {
        Self::with_clock(backends, config, Arc::new(SystemClock))
    }

    /// Like [`Stores::new`] with an injected clock.
    pub fn with_clock(
        backends: Backends,
        config: StoresConfig,
        clock: Arc<dyn Clock>,
    ) -> StoreResult<Self> {
        if config.revocation_cache_ttl > Duration::from_secs(1) {
            return Err(StoreError::invalid(
                "revocation_cache_ttl",
                "must be at most 1 s (the revocation bound)",
            ));
        }
        if config.reuse_interval > MAX_REUSE_INTERVAL {
            return Err(StoreError::invalid(
                "reuse_interval",
                "must be at most 10 s (a replayed token's successor is handed out only briefly)",
            ));
        }
        if config.api_key_touch_interval < Duration::from_secs(1) {
            return Err(StoreError::invalid(
                "api_key_touch_interval",
                "must be at least 1 s (one last_used_at write per key per interval)",
            ));
        }
        config.revocation.validate()?;
        let caches = RevocationCaches::new(config.revocation_cache_ttl);
        let verified_keys = api_keys::VerifiedKeys::new(config.revocation_cache_ttl);
        let jti_log = Arc::clone(&backends.denylist).revocation_log();
        let session_log = Arc::clone(&backends.sessions).revocation_log();
        let (jtis_in_set, sessions_in_set) = (jti_log.is_some(), session_log.is_some());
        // API keys and users: the set refuses what it holds; what it does
        // not hold, the (1 s) caches and the backend answer.
        let key_log = Arc::clone(&backends.api_keys).revocation_log();
        let user_log = Arc::clone(&backends.users).revocation_log();
        let app_log = Arc::clone(&backends.apps).revocation_log();
        let (keys_in_set, users_in_set, apps_in_set) =
            (key_log.is_some(), user_log.is_some(), app_log.is_some());
        let revocations = RevocationSet::new(
            jti_log
                .into_iter()
                .chain(session_log)
                .chain(key_log)
                .chain(user_log)
                .chain(app_log)
                .collect(),
            config.revocation,
            Arc::clone(&clock),
        );
        Ok(Self {
            revocations,
            request_breaker: crate::ratelimit::fallback::CircuitBreaker::new(
                crate::ratelimit::fallback::DEFAULT_FAILURE_THRESHOLD,
                crate::ratelimit::fallback::DEFAULT_PROBE_INTERVAL,
            )
            .named("stores"),
            jtis_in_set,
            sessions_in_set,
            keys_in_set,
            users_in_set,
            apps_in_set,
            backends,
            passwords: PasswordHasher::with_limits(
                config.hashing_concurrency,
                config.hashing_wait,
            )?,
            config,
            clock,
            caches,
            verified_keys,
        })
    }

    /// The password hasher (counts dummy verifications).
    pub fn passwords(&self) -> &PasswordHasher {
        &self.passwords
    }

    /// The stores' clock, Unix seconds (what expiries are compared with).
    pub fn now(&self) -> i64 {
        self.clock.unix_seconds()
    }

    /// Denies an access token's `jti` until its `exp` (denying it again
    /// keeps the later expiry). The `jti` is taken exactly as given:
    /// 1..=128 bytes, no control characters, the rule `is_jti_revoked` uses.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64) -> StoreResult<()> {
        let jti = input::jti(jti)?;
        if expires_at <= self.now() {
            return Ok(());
        }
        self.backends.denylist.deny(jti, expires_at).await?;
        self.revocations.insert(RevokedKind::Jti, jti, expires_at);
        Ok(())
    }

    /// Whether an access token's `jti` is denied now, asking the backend
    /// (the request path reads [`Stores::revocations`] instead).
    pub async fn is_jti_revoked(&self, jti: &str) -> StoreResult<bool> {
        let jti = input::jti(jti)?;
        self.backends.denylist.is_denied(jti, self.now()).await
    }

    /// Runs a store call of the request path (an API-key or app lookup, a
    /// token-service read) within `budget`, behind the stores' circuit
    /// breaker: after 3 consecutive failures or timeouts the backend is
    /// known down and calls fail at once with [`StoreError::Unavailable`]
    /// (`backend.unavailable`), one probe going through every 250 ms.
    pub async fn on_request_path<T>(
        &self,
        budget: Duration,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        if !self.request_breaker.allow() {
            return Err(StoreError::Unavailable(
                "the store failed just now (circuit breaker open); retrying shortly".into(),
            ));
        }
        match hook::within_budget(budget, call).await {
            Err(StoreError::Unavailable(e)) => {
                self.request_breaker.failure();
                Err(StoreError::Unavailable(e))
            }
            // Refused before any backend call: says nothing of the backend
            // (and must not let bad input close an open breaker).
            Err(e @ StoreError::InvalidInput { .. }) => Err(e),
            answered => {
                self.request_breaker.success();
                answered
            }
        }
    }

    /// Whether the request-path circuit breaker is open (the backend is
    /// considered down).
    pub fn request_breaker_open(&self) -> bool {
        self.request_breaker.is_open()
    }

    /// This replica's live revocation set (denied `jti`s, revoked
    /// sessions, revoked API keys, disabled users), fed by the backends'
    /// revocation logs.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revocations
    }

    /// Whether `kind` is answered by [`Stores::revocations`] (its backend
    /// keeps a revocation log) rather than by asking the backend.
    pub fn revocation_in_set(&self, kind: RevokedKind) -> bool {
        match kind {
            RevokedKind::Jti => self.jtis_in_set,
            RevokedKind::Session => self.sessions_in_set,
            RevokedKind::ApiKey => self.keys_in_set,
            RevokedKind::UserDisabled | RevokedKind::UserEnabled => self.users_in_set,
            RevokedKind::AppDisabled | RevokedKind::AppEnabled => self.apps_in_set,
            RevokedKind::Unrecognized(_) => false,
        }
    }

    /// Asks the denylist's backend itself, past the cache: a readiness
    /// probe (`Ok` when the backend answered).
    pub async fn probe_denylist(&self) -> StoreResult<()> {
        self.backends
            .denylist
            .is_denied("portcullis-readiness-probe", self.now())
            .await
            .map(|_| ())
    }

    /// Every rotated-in signing key.
    pub async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.backends.signing_keys.signing_keys().await
    }

    /// Stores a rotated-in signing key (kid: 1..=128 URL-safe characters;
    /// alg: a registered name; sealed: 1 byte..=16 KiB).
    pub async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        input::kid(&key.kid)?;
        if portcullis_core::Algorithm::from_name(&key.alg).is_none() {
            return Err(StoreError::invalid("alg", "not a supported algorithm"));
        }
        if key.sealed.is_empty() || key.sealed.len() > portcullis_core::jose::seal::MAX_SEALED_LEN {
            return Err(StoreError::invalid("sealed", "must be 1 byte to 16 KiB"));
        }
        self.backends.signing_keys.insert_signing_key(key).await
    }

    /// Stores a rotated-in signing key (validated like
    /// [`Self::insert_signing_key`]) unless a stored key activates after
    /// now: atomic on every backend, so of concurrent rotations one wins.
    /// Returns the pending key when refused.
    pub async fn insert_signing_key_unless_pending(
        &self,
        key: &SigningKeyRecord,
    ) -> StoreResult<Option<PendingKey>> {
        input::kid(&key.kid)?;
        if portcullis_core::Algorithm::from_name(&key.alg).is_none() {
            return Err(StoreError::invalid("alg", "not a supported algorithm"));
        }
        if key.sealed.is_empty() || key.sealed.len() > portcullis_core::jose::seal::MAX_SEALED_LEN {
            return Err(StoreError::invalid("sealed", "must be 1 byte to 16 KiB"));
        }
        self.backends
            .signing_keys
            .insert_signing_key_unless_pending(key, self.now())
            .await
    }

    /// Deletes a rotated-in signing key; false when absent.
    pub async fn delete_signing_key(&self, kid: &str) -> StoreResult<bool> {
        let kid = input::kid(kid)?;
        self.backends.signing_keys.delete_signing_key(kid).await
    }

    /// Drops expired denylist entries (memory, SQL; Redis expires its own).
    pub async fn purge_expired_denylist(&self) -> StoreResult<u64> {
        self.backends.denylist.purge_expired(self.now()).await
    }

    /// Deletes everything that can never be valid again: denylist entries
    /// past `exp`, sessions past expiry, refresh tokens and API keys expired
    /// for longer than [`EXPIRED_RETENTION`]. SQL deletes through indexes on
    /// the expiry columns; Redis expires the same records itself (TTLs).
    /// Every store is tried; the first failure is returned after the rest.
    pub async fn purge_expired(&self) -> StoreResult<PurgeReport> {
        let now = self.now();
        let retention = i64::try_from(EXPIRED_RETENTION.as_secs()).unwrap_or(i64::MAX);
        let before = now.saturating_sub(retention);
        let (denylist, refresh_tokens, sessions, api_keys, revocation_log) = tokio::join!(
            self.backends.denylist.purge_expired(now),
            self.backends.refresh.purge_expired_refresh(before),
            self.backends.sessions.purge_expired_sessions(now),
            self.backends.api_keys.purge_expired_api_keys(before),
            self.purge_revocation_logs(now),
        );
        Ok(PurgeReport {
            denylist: denylist?,
            refresh_tokens: refresh_tokens?,
            sessions: sessions?,
            api_keys: api_keys?,
            revocation_log: revocation_log?,
        })
    }

    /// Deletes expired entries from each distinct revocation log.
    async fn purge_revocation_logs(&self, now: i64) -> StoreResult<u64> {
        let mut total = 0;
        for log in self.revocations.logs() {
            total += log.purge_revocations(now).await?;
        }
        Ok(total)
    }

    /// Runs [`Stores::purge_expired`] every `every` (at least 1 s) until the
    /// returned task is aborted; failures are logged and retried next time.
    pub fn spawn_purge(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
            loop {
                tick.tick().await;
                match self.purge_expired().await {
                    Ok(report) => tracing::debug!(?report, "expired records purged"),
                    Err(e) => tracing::warn!(error = %e, "purge of expired records failed"),
                }
            }
        })
    }

    /// The former name of [`Stores::spawn_purge`], which now purges every
    /// store, not only the denylist.
    pub fn spawn_denylist_purge(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_purge(every)
    }
}

/// Random URL-safe id of `bytes` random bytes.
pub(crate) fn random_id(bytes: usize) -> StoreResult<String> {
    let mut buf = [0u8; 32];
    let buf = &mut buf[..bytes.min(32)];
    portcullis_core::opaque::fill_random(buf)
        .map_err(|_| StoreError::Unavailable("system random source".into()))?;
    Ok(portcullis_core::jose::b64_encode(buf))
}
