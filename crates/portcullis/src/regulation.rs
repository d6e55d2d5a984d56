//! Login regulation at run time: the state of
//! [`portcullis_core::regulation`] in this process, on the shared Redis or
//! in the shared PostgreSQL database (so a limit of N failures is N across
//! every replica), asked before a credential is checked.
//!
//! A shared store that fails (or hangs past its call budget: 100 ms for
//! Redis, 250 ms for a PostgreSQL transaction) trips a circuit breaker, and
//! attempts are then regulated by this process's own state until a probe
//! succeeds: the protection stays, only its sharing is lost for the outage.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "postgres")]
use std::time::Duration;

use portcullis_core::Clock;
use portcullis_core::regulation::{
    Attempt, FailureRecord, RegulationConfigError, RegulationPolicy, Scope, Surface, key,
};

/// Most keys held in memory (each well under 1 KiB); past it, idle keys are
/// dropped, then arbitrary ones (an attacker spraying addresses can only
/// make the state forget, never grow).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// One attempt's charges, to give back when it succeeds.
#[derive(Debug)]
#[must_use = "give a successful attempt's ticket to `Regulator::succeeded`"]
pub struct Ticket {
    /// Charged keys and their scopes.
    charged: Vec<(String, Scope)>,
    /// The answer.
    pub attempt: Attempt,
}

impl Ticket {
    /// Whether the attempt may go on.
    pub fn admitted(&self) -> bool {
        self.attempt == Attempt::Admitted
    }
}

/// Regulates attempts at credentials; cheap to share (`Arc`).
pub struct Regulator {
    policy: RegulationPolicy,
    local: Memory,
    shared: Option<Shared>,
    breaker: crate::ratelimit::fallback::CircuitBreaker,
    clock: Arc<dyn Clock>,
    refused: AtomicU64,
}

impl std::fmt::Debug for Regulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Regulator")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Regulator {
    /// A regulator keeping its state in this process.
    pub fn memory(
        policy: RegulationPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RegulationConfigError> {
        policy.validate()?;
        Ok(Self {
            policy,
            local: Memory::new(DEFAULT_MAX_KEYS),
            shared: None,
            breaker: crate::ratelimit::fallback::CircuitBreaker::new(
                crate::ratelimit::fallback::DEFAULT_FAILURE_THRESHOLD,
                crate::ratelimit::fallback::DEFAULT_PROBE_INTERVAL,
            )
            .named("regulation"),
            clock,
            refused: AtomicU64::new(0),
        })
    }

    /// The same, with its state on the shared Redis (keys under
    /// `<prefix>:regulation:`, each call bounded to 100 ms; Redis's clock).
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn on_redis(mut self, conn: crate::redis_conn::RedisConnection, prefix: &str) -> Self {
        self.shared = Some(Shared::Redis(RedisRegulation::new(conn, prefix)));
        self
    }

    /// The same, with its state in the shared PostgreSQL database (table
    /// `regulation`, created by the stores' migrations; each attempt one
    /// transaction that locks its key's row, bounded to 250 ms; the
    /// database's clock): for replicas that share PostgreSQL and no Redis.
    #[cfg(feature = "postgres")]
    #[must_use]
    pub fn on_postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.shared = Some(Shared::Postgres(PostgresRegulation::new(pool)));
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &RegulationPolicy {
        &self.policy
    }

    /// How many attempts this process refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// One attempt on `surface` from client `ip` (the trusted-proxy client
    /// address; `None` when unknown: then only the account is counted) at
    /// `account` (the case-folded username, if any). Charges the client IP
    /// first, then the (account, IP) pair; the first refusal ends it (an
    /// attempt refused for the account still counts against the IP).
    pub async fn attempt(
        &self,
        surface: Surface,
        ip: Option<&str>,
        account: Option<&str>,
    ) -> Ticket {
        let mut keys = Vec::with_capacity(2);
        if let Some(ip) = ip {
            keys.push((key(surface, ip, None), Scope::Ip));
        }
        if let Some(account) = account {
            keys.push((
                key(surface, ip.unwrap_or("-"), Some(account)),
                Scope::AccountAtIp,
            ));
        }
        let mut charged = Vec::with_capacity(2);
        for (k, scope) in keys {
            let answer = self.charge(&k, scope).await;
            if let Attempt::Refused { .. } = answer {
                self.refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("portcullis_regulation_refused_total", "surface" => surface.as_str())
                    .increment(1);
                return Ticket {
                    charged,
                    attempt: answer,
                };
            }
            charged.push((k, scope));
        }
        Ticket {
            charged,
            attempt: Attempt::Admitted,
        }
    }

    /// The credential was right: the IP's charge is given back and the
    /// (account, IP) pair starts afresh.
    pub async fn succeeded(&self, ticket: Ticket) {
        for (k, scope) in ticket.charged {
            if !self.settle_shared(&k, scope).await {
                self.local.settle(&k, scope);
            }
        }
    }

    /// Settles in the shared store; `false` when there is none or it failed.
    async fn settle_shared(&self, k: &str, scope: Scope) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        if !self.breaker.allow() {
            return false;
        }
        match shared.settle(k, scope).await {
            Ok(()) => {
                self.breaker.success();
                true
            }
            Err(e) => {
                self.breaker.failure();
                tracing::warn!(backend = shared.name(), error = %e, "regulation backend failed; settling locally");
                false
            }
        }
    }

    /// Charges in the shared store; `None` when there is none or it failed.
    async fn charge_shared(&self, k: &str, scope: Scope) -> Option<Attempt> {
        let shared = self.shared.as_ref()?;
        if !self.breaker.allow() {
            return None;
        }
        let p = &self.policy;
        match shared
            .attempt(k, p.limit(scope), p.window_ms(), p.ban_ms())
            .await
        {
            Ok(answer) => {
                self.breaker.success();
                Some(answer)
            }
            Err(e) => {
                self.breaker.failure();
                tracing::warn!(backend = shared.name(), error = %e, "regulation backend failed; regulating locally");
                None
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    async fn charge(&self, k: &str, scope: Scope) -> Attempt {
        if let Some(answer) = self.charge_shared(k, scope).await {
            return answer;
        }
        let p = &self.policy;
        self.local
            .attempt(k, self.now_ms(), p.limit(scope), p.window_ms(), p.ban_ms())
    }
}

/// State in this process, bounded in keys.
struct Memory {
    max_keys: usize,
    table: std::sync::Mutex<HashMap<String, FailureRecord>>,
}

impl Memory {
    fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            table: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailureRecord>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attempt(&self, k: &str, now_ms: u64, limit: u32, window_ms: u64, ban_ms: u64) -> Attempt {
        let mut table = self.table();
        if let Some(r) = table.get_mut(k) {
            return r.attempt(now_ms, limit, window_ms, ban_ms);
        }
        if table.len() >= self.max_keys {
            table.retain(|_, r| !r.is_idle(now_ms, window_ms));
            if table.len() >= self.max_keys
                && let Some(victim) = table.keys().next().cloned()
            {
                table.remove(&victim);
            }
        }
        let mut r = FailureRecord::default();
        let answer = r.attempt(now_ms, limit, window_ms, ban_ms);
        table.insert(k.to_owned(), r);
        answer
    }

    fn settle(&self, k: &str, scope: Scope) {
        let mut table = self.table();
        match scope {
            Scope::Ip => {
                if let Some(r) = table.get_mut(k) {
                    r.release();
                }
            }
            Scope::AccountAtIp => {
                table.remove(k);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().len()
    }
}

/// The store that shares the state between replicas.
enum Shared {
    #[cfg(feature = "redis")]
    Redis(RedisRegulation),
    #[cfg(feature = "postgres")]
    Postgres(PostgresRegulation),
}

impl Shared {
    fn name(&self) -> &'static str {
        match *self {
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
        }
    }

    async fn attempt(
        &self,
        k: &str,
        limit: u32,
        window_ms: u64,
        ban_ms: u64,
    ) -> Result<Attempt, String> {
        match *self {
            #[cfg(feature = "redis")]
            Self::Redis(ref r) => r
                .attempt(k, limit, window_ms, ban_ms)
                .await
                .map_err(|e| e.to_string()),
            #[cfg(feature = "postgres")]
            Self::Postgres(ref p) => p.attempt(k, limit, window_ms, ban_ms).await,
        }
    }

    async fn settle(&self, k: &str, scope: Scope) -> Result<(), String> {
        // Unused without a shared backend compiled in.
        let _ = (k, scope);
        match *self {
            #[cfg(feature = "redis")]
            Self::Redis(ref r) => r.settle(k, scope).await.map_err(|e| e.to_string()),
            #[cfg(feature = "postgres")]
            Self::Postgres(ref p) => p.settle(k, scope).await,
        }
    }
}

/// The budget of one regulation transaction on PostgreSQL (three round
/// trips and a row lock that concurrent attempts at one key wait for).
#[cfg(feature = "postgres")]
const POSTGRES_CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Every this many attempts, rows past their expiry are deleted.
#[cfg(feature = "postgres")]
const POSTGRES_PURGE_EVERY: u64 = 256;

/// The state in the `regulation` table: each attempt runs
/// `FailureRecord::attempt` on the row it locks (`INSERT … ON CONFLICT DO
/// UPDATE` inserts or locks it in one statement), on the database's clock.
#[cfg(feature = "postgres")]
struct PostgresRegulation {
    pool: sqlx::PgPool,
    attempts: AtomicU64,
}

#[cfg(feature = "postgres")]
impl PostgresRegulation {
    fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            attempts: AtomicU64::new(0),
        }
    }

    async fn attempt(
        &self,
        k: &str,
        limit: u32,
        window_ms: u64,
        ban_ms: u64,
    ) -> Result<Attempt, String> {
        let (answer, now) = tokio::time::timeout(
            POSTGRES_CALL_TIMEOUT,
            self.attempt_in_transaction(k, limit, window_ms, ban_ms),
        )
        .await
        .map_err(|_| format!("no answer within {POSTGRES_CALL_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
        if self.attempts.fetch_add(1, Ordering::Relaxed) % POSTGRES_PURGE_EVERY
            == POSTGRES_PURGE_EVERY - 1
        {
            // Off the login's path: the attempt is answered already.
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let purge = sqlx::query("DELETE FROM regulation WHERE expires_at < $1")
                    .bind(i64::try_from(now).unwrap_or(i64::MAX))
                    .execute(&pool);
                match tokio::time::timeout(POSTGRES_CALL_TIMEOUT, purge).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "regulation purge failed"),
                    Err(_) => tracing::debug!("regulation purge timed out"),
                }
            });
        }
        Ok(answer)
    }

    /// The attempt and the database's time of it.
    async fn attempt_in_transaction(
        &self,
        k: &str,
        limit: u32,
        window_ms: u64,
        ban_ms: u64,
    ) -> Result<(Attempt, u64), sqlx::Error> {
        use sqlx::Row;
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO regulation AS r (key, count, window_start, locked_until, expires_at) \
             VALUES ($1, 0, 0, 0, 0) \
             ON CONFLICT (key) DO UPDATE SET count = r.count \
             RETURNING r.count, r.window_start, r.locked_until, \
             (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now",
        )
        .bind(k)
        .fetch_one(&mut *tx)
        .await?;
        let now = ms(row.try_get("now")?);
        let mut record = FailureRecord {
            count: u32::try_from(row.try_get::<i64, _>("count")?).unwrap_or(u32::MAX),
            window_start_ms: ms(row.try_get("window_start")?),
            locked_until_ms: ms(row.try_get("locked_until")?),
        };
        let answer = record.attempt(now, limit, window_ms, ban_ms);
        let expires = record
            .locked_until_ms
            .max(record.window_start_ms.saturating_add(window_ms));
        let db = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE regulation SET count = $2, window_start = $3, locked_until = $4, \
             expires_at = $5 WHERE key = $1",
        )
        .bind(k)
        .bind(i64::from(record.count))
        .bind(db(record.window_start_ms))
        .bind(db(record.locked_until_ms))
        .bind(db(expires))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((answer, now))
    }

    async fn settle(&self, k: &str, scope: Scope) -> Result<(), String> {
        let query = match scope {
            Scope::Ip => {
                sqlx::query("UPDATE regulation SET count = GREATEST(count - 1, 0) WHERE key = $1")
            }
            Scope::AccountAtIp => sqlx::query("DELETE FROM regulation WHERE key = $1"),
        };
        tokio::time::timeout(POSTGRES_CALL_TIMEOUT, query.bind(k).execute(&self.pool))
            .await
            .map_err(|_| format!("no answer within {POSTGRES_CALL_TIMEOUT:?}"))?
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// One key's attempt, atomically on Redis (the state machine of
/// `FailureRecord::attempt`, on Redis's clock). Returns 0 when admitted,
/// else the milliseconds until the refusal ends.
#[cfg(feature = "redis")]
const ATTEMPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local ban = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'c', 's', 'u')
local c = tonumber(v[1]) or 0
local s = tonumber(v[2]) or 0
local u = tonumber(v[3]) or 0
if u > now then return u - now end
if c == 0 or now >= s + window then
  c = 0
  s = now
end
if c >= limit then
  redis.call('HSET', KEYS[1], 'c', 0, 's', now, 'u', now + ban)
  redis.call('PEXPIRE', KEYS[1], ban)
  return ban
end
redis.call('HSET', KEYS[1], 'c', c + 1, 's', s, 'u', 0)
redis.call('PEXPIRE', KEYS[1], s + window - now + 1)
return 0
";

/// Gives back one charge of a key (never below zero).
#[cfg(feature = "redis")]
const RELEASE: &str = r"
local c = tonumber(redis.call('HGET', KEYS[1], 'c') or '0')
if c > 0 then redis.call('HINCRBY', KEYS[1], 'c', -1) end
return 0
";

#[cfg(feature = "redis")]
struct RedisRegulation {
    conn: crate::redis_conn::RedisConnection,
    prefix: String,
    attempt: redis::Script,
    release: redis::Script,
}

#[cfg(feature = "redis")]
impl RedisRegulation {
    fn new(conn: crate::redis_conn::RedisConnection, prefix: &str) -> Self {
        Self {
            conn: conn.with_call_timeout(crate::redis_conn::DEFAULT_CALL_TIMEOUT),
            prefix: format!("{}:regulation:", prefix.replace(['{', '}'], "")),
            attempt: redis::Script::new(ATTEMPT),
            release: redis::Script::new(RELEASE),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}{}", self.prefix, k)
    }

    async fn attempt(
        &self,
        k: &str,
        limit: u32,
        window_ms: u64,
        ban_ms: u64,
    ) -> redis::RedisResult<Attempt> {
        let mut conn = self.conn.clone();
        let retry: i64 = self
            .attempt
            .key(self.key(k))
            .arg(limit)
            .arg(window_ms)
            .arg(ban_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(match u64::try_from(retry) {
            Ok(0) | Err(_) => Attempt::Admitted,
            Ok(ms) => Attempt::Refused { retry_after_ms: ms },
        })
    }

    async fn settle(&self, k: &str, scope: Scope) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        match scope {
            Scope::Ip => {
                let _: i64 = self
                    .release
                    .key(self.key(k))
                    .invoke_async(&mut conn)
                    .await?;
            }
            Scope::AccountAtIp => {
                let _: i64 = redis::cmd("DEL")
                    .arg(self.key(k))
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portcullis_core::ManualClock;

    use super::*;

    fn policy() -> RegulationPolicy {
        RegulationPolicy {
            max_failures_per_account: 3,
            max_failures_per_ip: 5,
            window: Duration::from_secs(60),
            ban_time: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn one_ip_is_throttled_per_account_and_overall_and_others_are_not() {
        let clock = Arc::new(ManualClock::at_unix_seconds(1_000));
        let r = Regulator::memory(policy(), clock.clone()).expect("policy");
        for _ in 0..3 {
            assert!(
                r.attempt(Surface::Login, Some("1.1.1.1"), Some("alice"))
                    .await
                    .admitted()
            );
        }
        // The pair is used up: refused, with the ban time to wait.
        let t = r
            .attempt(Surface::Login, Some("1.1.1.1"), Some("alice"))
            .await;
        assert_eq!(t.attempt.retry_after_secs(), Some(30));
        // The account from elsewhere, and the console, are untouched.
        assert!(
            r.attempt(Surface::Login, Some("2.2.2.2"), Some("alice"))
                .await
                .admitted()
        );
        assert!(
            r.attempt(Surface::Console, Some("1.1.1.1"), None)
                .await
                .admitted()
        );
        // Another account from the same IP: the IP had 4 charges (the
        // refused one counts), one more, then the IP is refused.
        assert!(
            r.attempt(Surface::Login, Some("1.1.1.1"), Some("bob"))
                .await
                .admitted()
        );
        let t = r
            .attempt(Surface::Login, Some("1.1.1.1"), Some("carol"))
            .await;
        assert!(!t.admitted());
        clock.advance(Duration::from_secs(31));
        assert!(
            r.attempt(Surface::Login, Some("1.1.1.1"), Some("carol"))
                .await
                .admitted()
        );
        assert_eq!(r.refused(), 2);
    }

    #[tokio::test]
    async fn successes_do_not_add_up_to_a_refusal() {
        let clock = Arc::new(ManualClock::at_unix_seconds(1_000));
        let r = Regulator::memory(policy(), clock).expect("policy");
        for _ in 0..50 {
            let t = r
                .attempt(Surface::Login, Some("1.1.1.1"), Some("alice"))
                .await;
            assert!(t.admitted());
            r.succeeded(t).await;
        }
    }

    #[test]
    fn memory_state_is_bounded() {
        let m = Memory::new(10);
        for i in 0..1_000 {
            let _ = m.attempt(&format!("k{i}"), 1_000, 1, 60_000, 60_000);
        }
        assert!(m.len() <= 10);
    }
}
