//! Every store in one PostgreSQL database (shared by every replica):
//! migrations embedded in the binary, run at connect under sqlx's advisory
//! lock, so replicas starting at the same time migrate exactly once.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::StoreError;
use super::sql::{EmbeddedMigrations, sql_stores};

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

impl PostgresStores {
    /// Taken first by every transaction that appends to the revocation log.
    const REVOCATION_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(2026000026)");
}

sql_stores!(PostgresStores, sqlx::Postgres);
