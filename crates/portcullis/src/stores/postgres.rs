//! Every store in one PostgreSQL database (shared by every replica):
//! migrations embedded in the binary, run at connect under sqlx's advisory
//! lock, so replicas starting at the same time migrate exactly once.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::{EmbeddedMigrations, Sql, SqlDb};
use super::{
    ApiKeyRecord, ApiKeyStore, AppRecord, AppStore, AppendSignal, BoxFuture, Denylist, PendingKey,
    RefreshRecord, RefreshStore, RevocationLog, RevocationPage, Session, SessionStore,
    SigningKeyRecord, SigningKeyStore, StoreError, StoreResult, User, UserStore, Username,
    WatchEvent,
};

/// The PostgreSQL schema, versioned.
pub const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations(&[
    (
        1,
        "stores",
        include_str!("../../migrations/postgres/0001_stores.sql"),
    ),
    (
        2,
        "lifecycle",
        include_str!("../../migrations/postgres/0002_lifecycle.sql"),
    ),
    (
        3,
        "signing keys",
        include_str!("../../migrations/postgres/0003_signing_keys.sql"),
    ),
    (
        26,
        "revocation log",
        include_str!("../../migrations/postgres/0026_revocation_log.sql"),
    ),
    (
        27,
        "regulation",
        include_str!("../../migrations/postgres/0027_regulation.sql"),
    ),
]);

/// All six stores in one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStores {
    pool: PgPool,
}

impl PostgresStores {
    /// Connects to `url` (`postgres://user@host:port/db`) with up to
    /// `max_connections` connections and migrates the schema.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("connect to PostgreSQL: {e}")))?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool, running the migrations first.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Runs the embedded migrations (idempotent; serialised across replicas by
/// a PostgreSQL advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let migrator = sqlx::migrate::Migrator::new(MIGRATIONS)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
    migrator
        .run(pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))
}

/// Least time between two reconnects of the revocation `LISTEN`.
const RELISTEN_BACKOFF: Duration = Duration::from_secs(1);

/// The channel on which appends to the revocation log are announced.
pub const REVOCATION_CHANNEL: &str = "portcullis_revocation";

impl PostgresStores {
    /// Run first by every transaction that appends to the revocation log:
    /// the log's advisory lock (appends commit in `seq` order), and the
    /// notification the other replicas' feeds listen for (sent at commit,
    /// never for a transaction rolled back; repeats within one transaction
    /// are folded into one).
    const REVOCATION_BEGIN: &'static [&'static str] = &[
        "SELECT pg_advisory_xact_lock(2026000026)",
        "SELECT pg_notify('portcullis_revocation', '')",
    ];

    /// Listens on [`REVOCATION_CHANNEL`] on a connection of its own and
    /// reports each notification ([`WatchEvent::Appended`]) and each time it
    /// listens, first and after every reconnect ([`WatchEvent::Listening`]:
    /// what was sent meanwhile is lost, so the feed reads then). A lost
    /// connection is replaced at once (sqlx's listener reconnects and
    /// listens again before it reports the loss), at most once a second;
    /// while PostgreSQL is unreachable it retries every second. Ends when
    /// the pool is closed.
    #[allow(clippy::unnecessary_wraps)]
    fn watch_revocations(&self, on_append: AppendSignal) -> Option<BoxFuture<'static, ()>> {
        let pool = self.pool.clone();
        Some(Box::pin(async move {
            while !pool.is_closed() {
                match listen(&pool).await {
                    Ok(mut listener) => {
                        on_append(WatchEvent::Listening);
                        let mut last_lost: Option<std::time::Instant> = None;
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => on_append(WatchEvent::Appended),
                                Ok(None) => {
                                    // The connection was lost, and the
                                    // listener has reconnected and listens
                                    // again. Lost again within a second:
                                    // back off for one (no reconnect storm).
                                    on_append(WatchEvent::Listening);
                                    if last_lost.is_some_and(|t| t.elapsed() < RELISTEN_BACKOFF) {
                                        tokio::time::sleep(RELISTEN_BACKOFF).await;
                                    }
                                    last_lost = Some(std::time::Instant::now());
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "revocation LISTEN connection failed; retrying");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot LISTEN for revocations; retrying");
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

async fn listen(pool: &PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(REVOCATION_CHANNEL).await?;
    Ok(listener)
}

impl SqlDb for sqlx::Postgres {
    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl PostgresStores {
    /// The store operations shared with the other SQL backend, on this pool.
    fn sql(&self) -> Sql<'_, sqlx::Postgres> {
        Sql {
            pool: &self.pool,
            revocation_begin: Self::REVOCATION_BEGIN,
        }
    }
}

impl SigningKeyStore for PostgresStores {
    fn insert_signing_key<'a>(&'a self, k: &'a SigningKeyRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().insert_signing_key(k))
    }

    fn insert_signing_key_unless_pending<'a>(
        &'a self,
        k: &'a SigningKeyRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<PendingKey>>> {
        Box::pin(self.sql().insert_signing_key_unless_pending(k, now))
    }

    fn signing_keys(&self) -> BoxFuture<'_, StoreResult<Vec<SigningKeyRecord>>> {
        Box::pin(self.sql().signing_keys())
    }

    fn delete_signing_key<'a>(&'a self, kid: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().delete_signing_key(kid))
    }
}

impl UserStore for PostgresStores {
    fn insert_user<'a>(&'a self, u: &'a User) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().insert_user(u))
    }

    fn user_by_username<'a>(
        &'a self,
        username: &'a Username,
    ) -> BoxFuture<'a, StoreResult<Option<User>>> {
        Box::pin(self.sql().user_by_username(username))
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<User>>> {
        Box::pin(self.sql().user_by_id(id))
    }

    fn set_password_hash<'a>(
        &'a self,
        id: &'a str,
        hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().set_password_hash(id, hash, now))
    }

    fn replace_password_hash<'a>(
        &'a self,
        id: &'a str,
        expected: &'a str,
        hash: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().replace_password_hash(id, expected, hash, now))
    }

    fn set_user_disabled<'a>(
        &'a self,
        id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().set_user_disabled(id, disabled, now))
    }

    fn set_user_grants<'a>(
        &'a self,
        id: &'a str,
        roles: &'a [String],
        permissions: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().set_user_grants(id, roles, permissions, now))
    }

    fn list_users<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, StoreResult<Vec<User>>> {
        Box::pin(self.sql().list_users(prefix, after, limit))
    }

    fn delete_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().delete_user(id))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl SessionStore for PostgresStores {
    fn purge_expired_sessions(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.sql().purge_expired_sessions(now))
    }

    fn insert_session<'a>(&'a self, s: &'a Session) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().insert_session(s))
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Session>>> {
        Box::pin(self.sql().session(id))
    }

    fn sessions_of<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, StoreResult<Vec<Session>>> {
        Box::pin(self.sql().sessions_of(user_id))
    }

    fn touch_session<'a>(
        &'a self,
        id: &'a str,
        now: i64,
        stale_before: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().touch_session(id, now, stale_before))
    }

    fn revoke_session<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().revoke_session(id, now))
    }

    fn revoke_sessions_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.sql().revoke_sessions_of(user_id, now))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

impl RevocationLog for PostgresStores {
    fn revocations_after(
        &self,
        after: u64,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RevocationPage>> {
        Box::pin(self.sql().revocations_after(after, now, limit))
    }

    fn purge_revocations(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.sql().purge_revocations(now))
    }

    fn watch(&self, on_append: AppendSignal) -> Option<BoxFuture<'static, ()>> {
        self.watch_revocations(on_append)
    }
}

impl RefreshStore for PostgresStores {
    fn purge_expired_refresh(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.sql().purge_expired_refresh(before))
    }

    fn insert_refresh<'a>(&'a self, r: &'a RefreshRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().insert_refresh(r))
    }

    fn refresh_by_hash<'a>(
        &'a self,
        hash: &'a [u8; 32],
    ) -> BoxFuture<'a, StoreResult<Option<RefreshRecord>>> {
        Box::pin(self.sql().refresh_by_hash(hash))
    }

    fn rotate_refresh<'a>(
        &'a self,
        old: &'a [u8; 32],
        successor: &'a RefreshRecord,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().rotate_refresh(old, successor, now))
    }

    fn revoke_family<'a>(&'a self, family: &'a str, now: i64) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.sql().revoke_family(family, now))
    }

    fn revoke_families_of<'a>(
        &'a self,
        user_id: &'a str,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(self.sql().revoke_families_of(user_id, now))
    }

    fn claim_reuse_grace<'a>(
        &'a self,
        _family: &'a str,
        hash: &'a [u8; 32],
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().claim_reuse_grace(hash, now))
    }
}

impl Denylist for PostgresStores {
    fn deny<'a>(&'a self, jti: &'a str, expires_at: i64) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().deny(jti, expires_at))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }

    fn is_denied<'a>(&'a self, jti: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().is_denied(jti, now))
    }

    fn purge_expired(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.sql().purge_expired(now))
    }
}

impl ApiKeyStore for PostgresStores {
    fn purge_expired_api_keys(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(self.sql().purge_expired_api_keys(before))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }

    fn insert_api_key<'a>(&'a self, k: &'a ApiKeyRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().insert_api_key(k))
    }

    fn api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<Arc<ApiKeyRecord>>>> {
        Box::pin(self.sql().api_key(id))
    }

    fn api_keys_of<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, StoreResult<Vec<ApiKeyRecord>>> {
        Box::pin(self.sql().api_keys_of(owner))
    }

    fn revoke_api_key<'a>(&'a self, id: &'a str, now: i64) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().revoke_api_key(id, now))
    }

    fn touch_api_key<'a>(&'a self, id: &'a str, at: i64) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().touch_api_key(id, at))
    }
}

impl AppStore for PostgresStores {
    fn insert_app<'a>(&'a self, a: &'a AppRecord) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.sql().insert_app(a))
    }

    fn app<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, StoreResult<Option<AppRecord>>> {
        Box::pin(self.sql().app(app_id))
    }

    fn rotate_app_secret<'a>(
        &'a self,
        app_id: &'a str,
        new_hash: &'a [u8; 32],
        previous_valid_until: i64,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<Option<u32>>> {
        Box::pin(
            self.sql()
                .rotate_app_secret(app_id, new_hash, previous_valid_until, now),
        )
    }

    fn set_app_disabled<'a>(
        &'a self,
        app_id: &'a str,
        disabled: bool,
        now: i64,
    ) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(self.sql().set_app_disabled(app_id, disabled, now))
    }

    fn revocation_log(self: Arc<Self>) -> Option<Arc<dyn RevocationLog>> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_notify_the_channel_the_feeds_listen_on() {
        let notify = format!("SELECT pg_notify('{REVOCATION_CHANNEL}', '')");
        assert!(PostgresStores::REVOCATION_BEGIN.contains(&notify.as_str()));
    }
}
