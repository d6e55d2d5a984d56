//! Every store in one SQLite file (the embedded durable default): WAL mode,
//! migrations embedded in the binary and run at open.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::StoreError;
use super::sql::{EmbeddedMigrations, sql_stores};

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
    fn watch_revocations(
        &self,
        _on_append: super::AppendSignal,
    ) -> Option<super::BoxFuture<'static, ()>> {
        None
    }
}

sql_stores!(SqliteStores, sqlx::Sqlite);
