//! Rate limits on Redis (single server or Cluster): every rule of a request
//! is decided atomically in ONE round trip by `redis.lua`, loaded once and
//! called by SHA (`EVALSHA`, re-loaded only after a `NOSCRIPT`).
//!
//! Keys: `P:rl:{T}:<rule>:<g|l|f>:<key>` with `P` the configured prefix, `T`
//! the hash tag, so all keys of one request land on one Cluster slot, and
//! the algorithm's letter (GCRA, sliding log, fixed window), so a rule that
//! changes algorithm under the same name starts on keys of its own type. `T` is
//! the prefix itself by default (every rate-limit key on one slot: the
//! Cluster then gives failover, not sharding), or, with
//! [`Partition::By`], the value of a key part every rule includes (e.g. the
//! tenant), which spreads load across the Cluster.

use std::fmt::Write as _;

use portcullis_core::ratelimit::algorithm::{GcraParams, micros};
use portcullis_core::ratelimit::{Algorithm, Decision, KeyPart, MAX_RULES, RequestFacts, Rule};
use redis::Script;

use super::outcome::{Outcome, RuleSet};
pub use crate::redis_conn::RedisConnection;

/// The script's source.
pub const SCRIPT: &str = include_str!("redis.lua");

/// Which hash tag a request's keys share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Partition {
    /// One tag for every key (one Cluster slot).
    #[default]
    Single,
    /// The value of this key part, which every rule's key must include.
    By(KeyPart),
}

/// A Redis failure, or a reply the script should never give.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    /// Redis could not be reached or failed.
    #[error("rate-limit backend: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script replied something unexpected.
    #[error("rate-limit backend: unexpected script reply ({0} values)")]
    BadReply(usize),
}

/// Rate-limit state on Redis.
#[derive(Debug, Clone)]
pub struct RedisLimiter {
    conn: RedisConnection,
    prefix: String,
    partition: Partition,
    script: Script,
}

impl RedisLimiter {
    /// State under `prefix` (braces are removed; empty means `portcullis`)
    /// on `conn`.
    pub fn new(conn: RedisConnection, prefix: &str, partition: Partition) -> Self {
        let prefix = prefix.replace(['{', '}'], "");
        Self {
            conn,
            // An empty tag (`{}`) is no tag at all in Cluster hashing.
            prefix: if prefix.is_empty() {
                "portcullis".to_owned()
            } else {
                prefix
            },
            partition,
            script: Script::new(SCRIPT),
        }
    }

    /// Appends the request's hash tag (see the module docs) to `key`;
    /// `false` when a fact it needs is missing.
    fn tag_into(&self, facts: &RequestFacts<'_>, key: &mut String) -> bool {
        match &self.partition {
            Partition::Single => {
                key.push_str(&self.prefix);
                true
            }
            Partition::By(part) => {
                portcullis_core::ratelimit::KeySpec::new([part.clone()]).render_into(facts, key)
            }
        }
    }

    /// The key of `rule` for `facts`, or `None` when a fact is missing.
    pub fn key(&self, rule: &Rule, facts: &RequestFacts<'_>) -> Option<String> {
        let mut key = String::with_capacity(64);
        key.push_str(&self.prefix);
        key.push_str(":rl:{");
        if !self.tag_into(facts, &mut key) {
            return None;
        }
        // The algorithm letter: a rule that keeps its name and changes
        // algorithm must not meet a key of another Redis type (WRONGTYPE).
        let _ = write!(key, "}}:{}:{}:", rule.name, script_args(&rule.algorithm).0);
        rule.key.render_into(facts, &mut key).then_some(key)
    }

    /// Decides the rules in `set` that apply to `facts` in one round trip;
    /// records the request in all of them only if all admit (`consume`).
    pub async fn check(
        &self,
        rules: &[Rule],
        facts: &RequestFacts<'_>,
        set: RuleSet,
        consume: bool,
    ) -> Result<Outcome, RedisLimitError> {
        self.check_asking(rules, facts, set, consume, &[1; MAX_RULES])
            .await
            .map(|(outcome, _)| outcome)
    }

    /// [`Self::check`] asking rule `i` for `ask[i]` tokens (a lease; 1 for
    /// the request alone); returns the tokens each rule granted, by rule
    /// index (0 for a rule that refused or did not apply). Tokens are taken
    /// only if every rule admits.
    pub async fn check_asking(
        &self,
        rules: &[Rule],
        facts: &RequestFacts<'_>,
        set: RuleSet,
        consume: bool,
        ask: &[u64; MAX_RULES],
    ) -> Result<(Outcome, [u64; MAX_RULES]), RedisLimitError> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(if consume { "check" } else { "peek" });
        let mut used = [0usize; MAX_RULES];
        let mut n = 0;
        let mut args: Vec<(&'static str, u64, u64, u64, u64)> = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate().take(MAX_RULES) {
            if !set.contains(i) {
                continue;
            }
            let Some(key) = self.key(rule, facts) else {
                continue;
            };
            inv.key(key);
            let (algo, a, b, c) = script_args(&rule.algorithm);
            args.push((algo, a, b, c, ask[i].max(1)));
            used[n] = i;
            n += 1;
        }
        let mut outcome = Outcome::empty();
        let mut granted = [0u64; MAX_RULES];
        if n == 0 {
            outcome.finish();
            return Ok((outcome, granted));
        }
        inv.arg(n);
        for (algo, a, b, c, k) in args {
            inv.arg(algo).arg(a).arg(b).arg(c).arg(k);
        }
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = inv.invoke_async(&mut conn).await?;
        if raw.len() != n * 6 + 1 {
            return Err(RedisLimitError::BadReply(raw.len()));
        }
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        for (i, chunk) in raw[..n * 6].chunks_exact(6).enumerate() {
            outcome.push(
                used[i],
                Decision {
                    allowed: chunk[0] == 1,
                    remaining: u(chunk[1]),
                    reset_after_us: u(chunk[2]),
                    retry_after_us: u(chunk[3]),
                    limit: u(chunk[4]),
                },
            );
            granted[used[i]] = u(chunk[5]);
        }
        outcome.finish();
        Ok((outcome, granted))
    }

    /// Deletes `rule`'s state for the key `facts` make; whether there was any.
    pub async fn reset(
        &self,
        rule: &Rule,
        facts: &RequestFacts<'_>,
    ) -> Result<bool, RedisLimitError> {
        let Some(key) = self.key(rule, facts) else {
            return Ok(false);
        };
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = self
            .script
            .key(key)
            .arg("reset")
            .arg(1)
            .invoke_async(&mut conn)
            .await?;
        Ok(raw.first().copied().unwrap_or(0) > 0)
    }
}

fn script_args(algorithm: &Algorithm) -> (&'static str, u64, u64, u64) {
    match *algorithm {
        Algorithm::Gcra {
            rate,
            period,
            burst,
        } => {
            let p = GcraParams::new(rate, period, burst);
            ("g", p.emission_us, p.tolerance_us, p.burst)
        }
        Algorithm::SlidingLog { limit, period } => ("l", limit, micros(period), 0),
        Algorithm::FixedWindow { limit, period } => ("f", limit, micros(period), 0),
    }
}
