//! Login regulation at run time: the state of
//! [`portcullis_core::regulation`] in this process, on the shared Redis or
//! in the shared PostgreSQL database (so a limit of N failures is N across
//! every replica), asked before a credential is checked.
//!
//! A shared store that fails (or hangs past its call budget: 100 ms for
//! Redis, 250 ms for PostgreSQL) trips a circuit breaker, and attempts are
//! then regulated by this process's own state until a probe succeeds: the
//! protection stays, only its sharing is lost for the outage. One attempt
//! waits for at most one call budget: once the shared store failed it, the
//! attempt's other key is charged locally too.

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
    fallbacks: AtomicU64,
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
            fallbacks: AtomicU64::new(0),
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
    /// `regulation`, created by the stores' migrations; each attempt at a
    /// key one statement that locks its row only while it runs, bounded to
    /// 250 ms; the database's clock): for replicas that share PostgreSQL and
    /// no Redis.
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

    /// How many keys were charged or settled in this process because the
    /// shared store failed, hung past its budget or was skipped by the open
    /// breaker (always 0 without a shared store).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
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
        // Cleared once the shared store fails this attempt: one budget each.
        let mut shared = true;
        for (k, scope) in keys {
            let answer = self.charge(&k, scope, &mut shared).await;
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
        let mut shared = true;
        for (k, scope) in ticket.charged {
            if !self.settle_shared(&k, scope, &mut shared).await {
                self.local.settle(&k, scope);
            }
        }
    }

    /// Settles in the shared store; `false` when there is none, it failed,
    /// or `shared` was cleared (it failed earlier in this call, which then
    /// clears it).
    async fn settle_shared(&self, k: &str, scope: Scope, shared: &mut bool) -> bool {
        let Some(store) = self.shared_store(shared) else {
            return false;
        };
        match store.settle(k, scope).await {
            Ok(()) => {
                self.breaker.success();
                true
            }
            Err(e) => {
                self.shared_failed(store, shared, &e, "settling locally");
                false
            }
        }
    }

    /// Charges in the shared store; `None` when there is none, it failed,
    /// or `shared` was cleared (as for [`Self::settle_shared`]).
    async fn charge_shared(&self, k: &str, scope: Scope, shared: &mut bool) -> Option<Attempt> {
        let store = self.shared_store(shared)?;
        let p = &self.policy;
        match store
            .attempt(k, p.limit(scope), p.window_ms(), p.ban_ms())
            .await
        {
            Ok(answer) => {
                self.breaker.success();
                Some(answer)
            }
            Err(e) => {
                self.shared_failed(store, shared, &e, "regulating locally");
                None
            }
        }
    }

    /// The shared store to call now: `None` when there is none, when this
    /// call already saw it fail (`shared` cleared) or when the breaker is
    /// open (then counted as a fallback).
    fn shared_store(&self, shared: &mut bool) -> Option<&Shared> {
        let store = self.shared.as_ref()?;
        if *shared && self.breaker.allow() {
            return Some(store);
        }
        *shared = false;
        self.fell_back(store);
        None
    }

    fn shared_failed(&self, store: &Shared, shared: &mut bool, error: &str, then: &str) {
        *shared = false;
        self.breaker.failure();
        self.fell_back(store);
        tracing::warn!(backend = store.name(), error = %error, "regulation backend failed; {then}");
    }

    /// Counts one key handled in this process for want of the shared store.
    fn fell_back(&self, store: &Shared) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("portcullis_regulation_fallback_total", "backend" => store.name())
            .increment(1);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    async fn charge(&self, k: &str, scope: Scope, shared: &mut bool) -> Attempt {
        if let Some(answer) = self.charge_shared(k, scope, shared).await {
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

/// The budget of one regulation statement on PostgreSQL (one round trip,
/// and the wait for the key's row lock while other attempts at that key
/// run theirs).
#[cfg(feature = "postgres")]
const POSTGRES_CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// Every this many attempts, rows past their expiry are deleted.
#[cfg(feature = "postgres")]
const POSTGRES_PURGE_EVERY: u64 = 256;

/// One key's attempt in one statement (so its row is locked only while the
/// database runs it, never across round trips): `FailureRecord::attempt`
/// on the database's clock, `$2` the limit (at least 1), `$3` the window
/// and `$4` the ban in milliseconds. A new key is inserted charged once;
/// an existing one is, in order: left alone while locked; started afresh
/// when empty or past its window; locked for the ban when used up; else
/// charged. Returns the row's `locked_until` and the time of the attempt
/// (refused while the first is later).
///
/// Committed asynchronously (`synchronous_commit` off for this statement's
/// transaction): attempts at one key queue on its row lock, which a
/// synchronous commit would hold through a WAL flush each (about 1 ms: a
/// burst of 120 would outlast the call budget and be answered locally). A
/// PostgreSQL crash may forget the last fraction of a second of charges,
/// as a Redis restart forgets its counts.
#[cfg(feature = "postgres")]
const POSTGRES_ATTEMPT: &str = "\
WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now, \
  set_config('synchronous_commit', 'off', true) AS async), \
up AS ( \
  INSERT INTO regulation AS r (key, count, window_start, locked_until, expires_at) \
  SELECT $1, 1, t.now, 0, t.now + $3 FROM t \
  ON CONFLICT (key) DO UPDATE SET \
    count = CASE \
      WHEN r.locked_until > excluded.window_start THEN r.count \
      WHEN r.count = 0 OR excluded.window_start >= r.window_start + $3 THEN 1 \
      WHEN r.count >= $2 THEN 0 \
      ELSE r.count + 1 END, \
    window_start = CASE \
      WHEN r.locked_until > excluded.window_start THEN r.window_start \
      WHEN r.count = 0 OR excluded.window_start >= r.window_start + $3 \
        THEN excluded.window_start \
      ELSE r.window_start END, \
    locked_until = CASE \
      WHEN r.locked_until > excluded.window_start THEN r.locked_until \
      WHEN r.count = 0 OR excluded.window_start >= r.window_start + $3 THEN r.locked_until \
      WHEN r.count >= $2 THEN excluded.window_start + $4 \
      ELSE r.locked_until END, \
    expires_at = CASE \
      WHEN r.locked_until > excluded.window_start THEN r.expires_at \
      WHEN r.count = 0 OR excluded.window_start >= r.window_start + $3 \
        THEN excluded.window_start + $3 \
      WHEN r.count >= $2 THEN GREATEST(excluded.window_start + $4, r.window_start + $3) \
      ELSE GREATEST(r.locked_until, r.window_start + $3) END \
  RETURNING r.locked_until) \
SELECT up.locked_until, t.now FROM up, t";

/// The state in the `regulation` table: each attempt runs the state machine
/// of `FailureRecord::attempt` in one statement ([`POSTGRES_ATTEMPT`]) on
/// the row it inserts or locks, on the database's clock.
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
        let db = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let statement = sqlx::query_as::<_, (i64, i64)>(POSTGRES_ATTEMPT)
            .bind(k)
            .bind(i64::from(limit.max(1)))
            .bind(db(window_ms))
            .bind(db(ban_ms.max(1)))
            .fetch_one(&self.pool);
        // A statement cut off here may still run once the database answers
        // again: the key is then charged twice (here and locally), never
        // less.
        let (locked_until, now) = tokio::time::timeout(POSTGRES_CALL_TIMEOUT, statement)
            .await
            .map_err(|_| format!("no answer within {POSTGRES_CALL_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let answer = match u64::try_from(locked_until.saturating_sub(now)) {
            Ok(0) | Err(_) => Attempt::Admitted,
            Ok(retry_after_ms) => Attempt::Refused { retry_after_ms },
        };
        if self.attempts.fetch_add(1, Ordering::Relaxed) % POSTGRES_PURGE_EVERY
            == POSTGRES_PURGE_EVERY - 1
        {
            // Off the login's path: the attempt is answered already.
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let purge = sqlx::query("DELETE FROM regulation WHERE expires_at < $1")
                    .bind(now)
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
