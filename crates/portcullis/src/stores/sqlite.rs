//! Every store in one SQLite file (the embedded durable default): WAL mode,
//! migrations embedded in the binary and run at open.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::sql::{EmbeddedMigrations, Sql, SqlDb};
use super::{
    ApiKeyRecord, ApiKeyStore, AppRecord, AppStore, AppendSignal, BoxFuture, Denylist, PendingKey,
    RefreshRecord, RefreshStore, RevocationLog, RevocationPage, Session, SessionStore,
    SigningKeyRecord, SigningKeyStore, StoreError, StoreResult, User, UserStore, Username,
};

/// The SQLite schema, versioned.
pub const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations(&[
    (
        1,
        "stores",
        include_str!("../../migrations/sqlite/0001_stores.sql"),
    ),
    (
        2,
        "lifecycle",
        include_str!("../../migrations/sqlite/0002_lifecycle.sql"),
    ),
    (
        3,
        "signing keys",
        include_str!("../../migrations/sqlite/0003_signing_keys.sql"),
    ),
    (
        26,
        "revocation log",
        include_str!("../../migrations/sqlite/0026_revocation_log.sql"),
    ),
]);

/// All six stores in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStores {
    pool: SqlitePool,
}

impl SqliteStores {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", path.display())))?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool, running the migrations first.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        let migrator = sqlx::migrate::Migrator::new(MIGRATIONS)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        Ok(Self { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl SqliteStores {
    /// Run first by every transaction that appends to the revocation log
    /// (nothing: SQLite has one writer at a time).
    const REVOCATION_BEGIN: &'static [&'static str] = &[];

    /// No signal: the feed polls (a SQLite file has one writer process).
    #[allow(clippy::unused_self)]
    fn watch_revocations(&self, _on_append: AppendSignal) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

impl SqlDb for sqlx::Sqlite {
    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqliteStores {
    /// The store operations shared with the other SQL backend, on this pool.
    fn sql(&self) -> Sql<'_, sqlx::Sqlite> {
        Sql {
            pool: &self.pool,
            revocation_begin: Self::REVOCATION_BEGIN,
        }
    }
}

impl SigningKeyStore for SqliteStores {
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

impl UserStore for SqliteStores {
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

impl SessionStore for SqliteStores {
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

impl RevocationLog for SqliteStores {
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

impl RefreshStore for SqliteStores {
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

impl Denylist for SqliteStores {
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

impl ApiKeyStore for SqliteStores {
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

impl AppStore for SqliteStores {
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
