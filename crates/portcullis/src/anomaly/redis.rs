//! Detector windows, bans and alert de-duplication on Redis (single server
//! or Cluster), so every gateway replica sees what the others saw.
//!
//! Keys (with `P` the configured prefix, which must not contain `{` or `}`):
//! - `P:anomaly:{<key>}:<detector>`: a sorted set of event times (or of
//!   distinct members), trimmed to the threshold, expiring with the window.
//!   The `{<key>}` hash tag keeps one key's detectors on one Cluster slot, so
//!   one script call updates them together.
//! - `P:{bans}:ban:<target>`: one ban's JSON, expiring with the ban
//!   (`PXAT`), and `P:{bans}:until`, a sorted set `target -> until_ms` for
//!   listing, trimmed of expired entries on every write and expiring with
//!   its last ban. All bans share the `{bans}` slot, so a check of an IP and
//!   a subject is one `MGET`.
//! - `P:alert:{<detector>:<key>}`: `SET NX PX cooldown` de-duplication.
//!
//! Time is the Redis server's (`TIME`), so replicas with skewed clocks agree.
//! Every call has a time budget (default 100 ms, `call_timeout` on each
//! type); a call over it is a backend error like any other.

use crate::redis_conn::DEFAULT_CALL_TIMEOUT;
pub use crate::redis_conn::RedisConnection;
use portcullis_core::anomaly::window::WindowCount;
use portcullis_core::anomaly::{Ban, BanTarget, DetectorConfig, Observation};
use redis::Script;

/// Records updates to the windows in KEYS; per key, ARGV holds window ms,
/// threshold, a member count `n` and `n` members (unique event ids, or one
/// distinct-count member). Returns per key `{count, first_seen_ms}` and
/// finally the server time.
pub const RECORD: &str = concat!(
    include_str!("window.lua"),
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local base = 0
for _, key in ipairs(KEYS) do
  local window, threshold, n = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local members = {}
  for j = 1, n do members[j] = ARGV[base + 3 + j] end
  base = base + 3 + n
  local count, first = record_window(key, now, window, threshold, members)
  out[#out + 1] = count
  out[#out + 1] = first
end
out[#out + 1] = now
return out
"
);

/// One window's update as script arguments (see [`RECORD`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUpdate {
    /// The window's key (hash-tagged by the detection key).
    pub key: String,
    /// The window length.
    pub window_ms: u64,
    /// The count at which the detector fires (the window keeps no more).
    pub threshold: u32,
    /// The members to add: unique event ids, or a distinct-count member.
    pub members: Vec<String>,
}

/// Detector windows on Redis.
#[derive(Debug, Clone)]
pub struct RedisCounters {
    conn: RedisConnection,
    prefix: String,
    script: Script,
}

impl RedisCounters {
    /// Counters under `prefix` (no braces) on `conn`, each call bounded to
    /// 100 ms.
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        Self {
            conn: conn.with_call_timeout(DEFAULT_CALL_TIMEOUT),
            prefix: prefix.replace(['{', '}'], ""),
            script: Script::new(RECORD),
        }
    }

    /// Bounds each call to `budget` instead.
    pub fn call_timeout(mut self, budget: std::time::Duration) -> Self {
        self.conn = self.conn.with_call_timeout(budget);
        self
    }

    /// The window key of `obs` (hash-tagged by its detection key).
    pub fn key(&self, obs: &Observation<'_>) -> String {
        format!(
            "{}:anomaly:{{{}}}:{}",
            self.prefix,
            obs.key.render().replace(['{', '}'], "_"),
            obs.kind.as_str()
        )
    }

    /// Whether the connection is to a Cluster (one call per hash tag).
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The update one observation makes: its distinct-count member, or a
    /// unique event id.
    pub fn update(&self, obs: &Observation<'_>, config: &DetectorConfig) -> WindowUpdate {
        WindowUpdate {
            key: self.key(obs),
            window_ms: config.window_ms(),
            threshold: config.threshold,
            members: vec![match obs.member {
                // An attempted account name: capped like key values.
                Some(m) => format!("m:{}", portcullis_core::anomaly::capped(m)),
                None => unique_event_id(),
            }],
        }
    }

    /// Records observations that share one hash tag in one script call;
    /// returns their counts and the server time in Unix milliseconds.
    pub async fn record(
        &self,
        batch: &[(Observation<'_>, &DetectorConfig)],
    ) -> redis::RedisResult<(Vec<WindowCount>, u64)> {
        let updates: Vec<WindowUpdate> = batch
            .iter()
            .map(|(obs, config)| self.update(obs, config))
            .collect();
        self.record_updates(&updates).await
    }

    /// Applies `updates` (their keys on one hash tag, for a Cluster) in one
    /// script call; returns their counts and the server time in Unix
    /// milliseconds.
    pub async fn record_updates(
        &self,
        updates: &[WindowUpdate],
    ) -> redis::RedisResult<(Vec<WindowCount>, u64)> {
        let mut inv = self.script.prepare_invoke();
        for u in updates {
            inv.key(&u.key);
            inv.arg(u.window_ms).arg(u.threshold).arg(u.members.len());
            for m in &u.members {
                inv.arg(m);
            }
        }
        let mut conn = self.conn.clone();
        let raw: Vec<u64> = inv.invoke_async(&mut conn).await?;
        if raw.len() != updates.len() * 2 + 1 {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected detector script reply",
            )));
        }
        let now = raw.last().copied().unwrap_or_default();
        let counts = raw
            .chunks_exact(2)
            .map(|c| WindowCount {
                count: c[0],
                first_seen_ms: c[1],
            })
            .collect();
        Ok((counts, now))
    }

    /// The hash tag an observation's key lands on (observations with equal
    /// tags can share one call).
    pub fn tag(obs: &Observation<'_>) -> String {
        obs.key.render()
    }
}

/// An id no other event of any replica has (a window member per event).
pub fn unique_event_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = portcullis_core::opaque::fill_random(&mut b);
        u64::from_le_bytes(b)
    });
    format!("e:{process:x}:{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Bans on Redis, shared by every replica; each expires in storage with
/// the ban itself.
#[derive(Debug, Clone)]
pub struct RedisBans {
    conn: RedisConnection,
    /// `P:{bans}`: the hash tag and start of every ban key.
    base: String,
}

/// Adds or extends one ban, atomically. KEYS: the ban, the index. ARGV:
/// target, JSON, until_ms. Returns 1 when written, 0 when a ban at least as
/// long exists (or this one is already over).
const BAN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(ARGV[3])
if until_ms <= now then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, b = pcall(cjson.decode, cur)
  if ok and tonumber(b['until_ms']) and tonumber(b['until_ms']) >= until_ms then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
redis.call('ZADD', KEYS[2], until_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[2], last[2]) end
return 1
";

/// Lifts one ban. KEYS: the ban, the index. ARGV: target.
const LIFT: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
";

impl RedisBans {
    /// Bans under `prefix` (no braces) on `conn`, each call bounded to
    /// 100 ms.
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        Self {
            conn: conn.with_call_timeout(DEFAULT_CALL_TIMEOUT),
            base: format!("{}:{{bans}}", prefix.replace(['{', '}'], "")),
        }
    }

    /// Bounds each call to `budget` instead (the CLI allows more).
    pub fn call_timeout(mut self, budget: std::time::Duration) -> Self {
        self.conn = self.conn.with_call_timeout(budget);
        self
    }

    fn ban_key(&self, target: &str) -> String {
        format!("{}:ban:{target}", self.base)
    }

    fn index_key(&self) -> String {
        format!("{}:until", self.base)
    }

    /// Adds or extends a ban (a longer existing ban is kept), atomically;
    /// it expires in Redis when it ends.
    pub async fn ban(&self, ban: &Ban) -> redis::RedisResult<()> {
        let json = serde_json::to_string(ban).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "ban encoding", e.to_string()))
        })?;
        let target = ban.target.render();
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(BAN)
            .key(self.ban_key(&target))
            .key(self.index_key())
            .arg(target)
            .arg(json)
            .arg(ban.until_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The ban blocking `ip` or `subject` at `now_ms`, if any (one `MGET`).
    pub async fn banned(
        &self,
        ip: Option<&str>,
        subject: Option<&str>,
        now_ms: u64,
    ) -> redis::RedisResult<Option<Ban>> {
        let keys: Vec<String> = ip
            .map(|v| BanTarget::Ip(v.to_owned()))
            .into_iter()
            .chain(subject.map(|v| BanTarget::Subject(v.to_owned())))
            .map(|t| self.ban_key(&t.render()))
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(raw
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<Ban>(&json).ok())
            .find(|b| b.until_ms > now_ms))
    }

    /// Active bans, soonest to expire first.
    pub async fn list(&self, now_ms: u64) -> redis::RedisResult<Vec<Ban>> {
        let mut conn = self.conn.clone();
        let targets: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.index_key())
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        let mut live = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|t| self.ban_key(t)).collect();
            let raw: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            live.extend(
                raw.into_iter()
                    .flatten()
                    .filter_map(|json| serde_json::from_str::<Ban>(&json).ok())
                    .filter(|b| b.until_ms > now_ms),
            );
        }
        live.sort_by(|a, b| {
            a.until_ms
                .cmp(&b.until_ms)
                .then_with(|| a.target.render().cmp(&b.target.render()))
        });
        Ok(live)
    }

    /// Lifts a ban on every replica; whether one existed.
    pub async fn lift(&self, target: &BanTarget) -> redis::RedisResult<bool> {
        let target = target.render();
        let mut conn = self.conn.clone();
        let n: i64 = Script::new(LIFT)
            .key(self.ban_key(&target))
            .key(self.index_key())
            .arg(target)
            .invoke_async(&mut conn)
            .await?;
        Ok(n > 0)
    }
}

/// Alert de-duplication across replicas with `SET NX PX`.
#[derive(Debug, Clone)]
pub struct RedisDedup {
    conn: RedisConnection,
    prefix: String,
}

impl RedisDedup {
    /// De-duplication under `prefix` (no braces) on `conn`, each call
    /// bounded to 100 ms.
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        Self {
            conn: conn.with_call_timeout(DEFAULT_CALL_TIMEOUT),
            prefix: prefix.replace(['{', '}'], ""),
        }
    }

    /// Bounds each call to `budget` instead.
    pub fn call_timeout(mut self, budget: std::time::Duration) -> Self {
        self.conn = self.conn.with_call_timeout(budget);
        self
    }

    /// Whether this replica is the first to alert on `id` in the cooldown.
    pub async fn claim(&self, id: &str, cooldown_ms: u64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!(
                "{}:alert:{{{}}}",
                self.prefix,
                id.replace(['{', '}'], "_")
            ))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(cooldown_ms.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }
}
