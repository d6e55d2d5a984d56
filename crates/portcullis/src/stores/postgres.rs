//! Every store in one PostgreSQL database (shared by every replica):
//! migrations embedded in the binary, run at connect under sqlx's advisory
//! lock, so replicas starting at the same time migrate exactly once.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::{EmbeddedMigrations, sql_stores};
use super::{StoreError, WatchEvent};

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
    fn watch_revocations(&self, on_append: super::AppendSignal) -> Option<BoxFuture<'static, ()>> {
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

sql_stores!(PostgresStores, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_notify_the_channel_the_feeds_listen_on() {
        let notify = format!("SELECT pg_notify('{REVOCATION_CHANNEL}', '')");
        assert!(PostgresStores::REVOCATION_BEGIN.contains(&notify.as_str()));
    }
}
