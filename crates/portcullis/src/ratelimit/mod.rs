//! Rate limiting: a [`RateLimiter`] checks every rule that applies to a
//! request against memory or Redis (Cluster), admits it only if all admit,
//! and reports the most restrictive in standard response fields. When Redis
//! fails, each rule's `on_backend_error` decides, behind a circuit breaker.

pub mod fallback;
#[cfg(feature = "redis")]
pub mod lease;
pub mod memory;
mod outcome;
#[cfg(feature = "redis")]
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;

use crate::anomaly::{AnomalyError, Observed};
use portcullis_core::anomaly::{SampleRequest, Signal};
use portcullis_core::ratelimit::algorithm::micros;
use portcullis_core::ratelimit::{
    ClientIpConfig, HeaderLookup, RequestFacts, Rule, RuleError, validate_rules,
};
#[cfg(feature = "redis")]
use portcullis_core::ratelimit::{Decision, OnBackendError};
use portcullis_core::{Clock, SystemClock};

pub use memory::MemoryLimiter;
pub use outcome::{Outcome, RuleSet, Verdict};

/// Default bound on in-memory keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Adapts an `http::HeaderMap` to [`HeaderLookup`] (for header key parts).
#[derive(Debug, Clone, Copy)]
pub struct HttpHeaders<'a>(pub &'a http::HeaderMap);

impl HeaderLookup for HttpHeaders<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The grouped client IP of a request from its socket peer and the one
/// forwarding header `config` names (several lines of it are one list).
/// Only the rightmost 8 KiB are read, and bytes that are not visible ASCII
/// only spoil the element they sit in, so nothing a client prepends can
/// change the answer (see [`ClientIpConfig::client_ip`]).
pub fn client_key(config: &ClientIpConfig, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    use portcullis_core::ratelimit::ForwardingHeader;
    use portcullis_core::ratelimit::client_ip::MAX_HEADER_LEN;
    // The last lines, right to left, until they hold MAX_HEADER_LEN bytes.
    let mut lines = Vec::new();
    let mut total = 0;
    for v in headers.get_all(config.header().name()).iter().rev() {
        lines.push(v.as_bytes());
        total += v.len() + 1;
        if total > MAX_HEADER_LEN {
            break;
        }
    }
    let mut joined = Vec::with_capacity(total);
    for (i, line) in lines.iter().rev().enumerate() {
        if i > 0 {
            joined.push(b',');
        }
        joined.extend_from_slice(line);
    }
    let list = (!lines.is_empty()).then(|| String::from_utf8_lossy(&joined));
    let list = list.as_deref();
    match config.header() {
        ForwardingHeader::Forwarded => config.client_key(peer, list, None),
        ForwardingHeader::Xff => config.client_key(peer, None, list),
    }
}

/// Why a limiter could not be built or an admin operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The rules are invalid.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A partition key part is not in every rule's key.
    #[error(
        "rate limit partition: every rule's key must include the partition part (rule `{0}` does not)"
    )]
    Partition(String),
    /// No rule has this name.
    #[error("no rate limit rule named `{0}`")]
    UnknownRule(String),
    /// The backend failed.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Backend(#[from] redis::RedisLimitError),
}

enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis {
        redis: Box<redis::RedisLimiter>,
        breaker: fallback::CircuitBreaker,
        log: fallback::FallbackLog,
        /// Lease state, when a rule sets `lease`.
        leases: Option<lease::Leases>,
    },
}

struct Inner {
    rules: Arc<[Rule]>,
    /// The memory backend, or the per-replica fallback of a Redis backend.
    memory: MemoryLimiter,
    backend: Backend,
    clock: Arc<dyn Clock>,
    legacy_headers: bool,
    /// Each rule's `RateLimit-Policy` item (`"name";q=…;w=…`), built once.
    policies: Box<[PolicyItem]>,
}

/// One rule's `RateLimit-Policy` item, as text and as a ready field value.
struct PolicyItem {
    text: Box<str>,
    value: Option<http::HeaderValue>,
}

impl PolicyItem {
    fn new(rule: &Rule) -> Self {
        let (q, w) = rule.algorithm.policy();
        let text = format!("\"{}\";q={q};w={w}", rule.name);
        Self {
            value: http::HeaderValue::from_str(&text).ok(),
            text: text.into_boxed_str(),
        }
    }
}

/// Appends `n` in decimal (itoa: no formatter on the request path).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Checks requests against a set of rules; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rules", &self.inner.rules)
            .field(
                "backend",
                &match self.inner.backend {
                    Backend::Memory => "memory",
                    #[cfg(feature = "redis")]
                    Backend::Redis { .. } => "redis",
                },
            )
            .finish()
    }
}

/// Builds a [`RateLimiter`].
pub struct RateLimiterBuilder {
    rules: Vec<Rule>,
    clock: Arc<dyn Clock>,
    max_keys: usize,
    max_bytes: Option<usize>,
    legacy_headers: bool,
    #[cfg(feature = "redis")]
    redis: Option<(redis::RedisConnection, String, redis::Partition)>,
    failure_threshold: u32,
    probe_interval: std::time::Duration,
    #[cfg(feature = "redis")]
    redis_timeout: std::time::Duration,
}

impl std::fmt::Debug for RateLimiterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl RateLimiterBuilder {
    /// Adds a rule.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The clock of the memory backend (and of the local fallback).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Bound on in-memory keys (default one million).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Bound on in-memory bytes (default 128 per allowed key: 128 MB for
    /// the default million keys); sliding logs count their stamps.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Also emit `X-RateLimit-Limit` / `-Remaining` / `-Reset`.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Breaker: consecutive failures before opening, and the probe interval.
    pub fn circuit_breaker(mut self, threshold: u32, probe_interval: std::time::Duration) -> Self {
        self.failure_threshold = threshold;
        self.probe_interval = probe_interval;
        self
    }

    /// Keeps the state on Redis under `prefix` (shared by every replica).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, conn: redis::RedisConnection, prefix: &str) -> Self {
        self.redis = Some((conn, prefix.to_owned(), redis::Partition::Single));
        self
    }

    /// The time budget of each Redis call (default 100 ms,
    /// `redis_conn::DEFAULT_CALL_TIMEOUT`): a call that takes longer counts
    /// as a backend failure (the rules' `on_backend_error` applies and the
    /// breaker counts it), so a hung server costs a request at most this.
    #[cfg(feature = "redis")]
    pub fn redis_timeout(mut self, budget: std::time::Duration) -> Self {
        self.redis_timeout = budget;
        self
    }

    /// Hash-tags Redis keys by the value of `part` (every rule must include
    /// it) so load spreads over a Cluster.
    #[cfg(feature = "redis")]
    pub fn redis_partition(mut self, part: portcullis_core::ratelimit::KeyPart) -> Self {
        if let Some((_, _, p)) = &mut self.redis {
            *p = redis::Partition::By(part);
        }
        self
    }

    /// Validates the rules and builds the limiter.
    pub fn build(self) -> Result<RateLimiter, RateLimitError> {
        validate_rules(&self.rules)?;
        let rules: Arc<[Rule]> = self.rules.into();
        let policies = rules.iter().map(PolicyItem::new).collect();
        let memory = match self.max_bytes {
            Some(bytes) => MemoryLimiter::with_max_bytes(rules.clone(), self.max_keys, bytes),
            None => MemoryLimiter::new(rules.clone(), self.max_keys),
        };
        #[cfg(feature = "redis")]
        let backend = match self.redis {
            None => Backend::Memory,
            Some((conn, prefix, partition)) => {
                if let redis::Partition::By(part) = &partition
                    && let Some(r) = rules.iter().find(|r| !r.key.parts().contains(part))
                {
                    return Err(RateLimitError::Partition(r.name.clone()));
                }
                Backend::Redis {
                    redis: Box::new(redis::RedisLimiter::new(
                        conn.with_call_timeout(self.redis_timeout),
                        &prefix,
                        partition,
                    )),
                    breaker: fallback::CircuitBreaker::new(
                        self.failure_threshold,
                        self.probe_interval,
                    ),
                    log: fallback::FallbackLog::default(),
                    leases: rules
                        .iter()
                        .any(|r| r.lease > 1)
                        .then(lease::Leases::default),
                }
            }
        };
        #[cfg(not(feature = "redis"))]
        let backend = Backend::Memory;
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                rules,
                memory,
                backend,
                clock: self.clock,
                legacy_headers: self.legacy_headers,
                policies,
            }),
        })
    }
}

impl RateLimiter {
    /// A builder with no rules, the system clock and the memory backend.
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder {
            rules: Vec::new(),
            clock: Arc::new(SystemClock),
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: None,
            legacy_headers: false,
            #[cfg(feature = "redis")]
            redis: None,
            failure_threshold: fallback::DEFAULT_FAILURE_THRESHOLD,
            probe_interval: fallback::DEFAULT_PROBE_INTERVAL,
            #[cfg(feature = "redis")]
            redis_timeout: crate::redis_conn::DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The rules, in configuration order (outcomes refer to them by index).
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    /// Response fields for `outcome` (with the legacy ones if configured).
    pub fn headers(&self, outcome: &Outcome) -> Vec<(&'static str, String)> {
        outcome.headers(&self.inner.rules, self.inner.legacy_headers)
    }

    /// The response fields of `outcome` as header values, appended to
    /// `out` (what [`Self::headers`] gives, ready to send). For an admitted
    /// request this is the request path's cost: the `RateLimit-Policy`
    /// value is the rule's own, built once (several rules: joined), and
    /// `RateLimit` is written without a formatter.
    pub fn push_header_values(
        &self,
        outcome: &Outcome,
        out: &mut Vec<(http::HeaderName, http::HeaderValue)>,
    ) {
        const POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
        const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
        let inner = &*self.inner;
        let primary = outcome.primary();
        let fast = outcome.admitted()
            && !inner.legacy_headers
            && primary.is_some_and(|(i, _)| i < inner.rules.len())
            && outcome.decisions().all(|(i, _)| i < inner.rules.len());
        let Some((main, d)) = primary.filter(|_| fast) else {
            for (name, value) in self.headers(outcome) {
                if let Ok(v) = http::HeaderValue::try_from(value) {
                    out.push((http::HeaderName::from_static(name), v));
                }
            }
            return;
        };
        let policy = if outcome.len() == 1 {
            inner.policies[main].value.clone()
        } else {
            let mut text = Vec::with_capacity(
                outcome
                    .decisions()
                    .map(|(i, _)| inner.policies[i].text.len() + 2)
                    .sum(),
            );
            for (n, (i, _)) in outcome.decisions().enumerate() {
                if n > 0 {
                    text.extend_from_slice(b", ");
                }
                text.extend_from_slice(inner.policies[i].text.as_bytes());
            }
            http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
        };
        if let Some(policy) = policy {
            out.push((POLICY, policy));
        }
        let name = &inner.rules[main].name;
        let mut value = Vec::with_capacity(name.len() + 48);
        value.push(b'"');
        value.extend_from_slice(name.as_bytes());
        value.extend_from_slice(b"\";r=");
        push_decimal(&mut value, d.remaining);
        value.extend_from_slice(b";t=");
        push_decimal(
            &mut value,
            portcullis_core::ratelimit::headers::ceil_secs(d.reset_after_us),
        );
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            out.push((RATELIMIT, v));
        }
    }

    /// Adds the rate-limit response fields of `outcome` to `headers` (for
    /// admitted responses too).
    pub fn apply_headers(&self, outcome: &Outcome, headers: &mut http::HeaderMap) {
        for (name, value) in self.headers(outcome) {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(http::HeaderName::from_static(name), value);
            }
        }
    }

    /// The complete 429 (or 503) response for a refused `outcome`: status,
    /// fields and problem+json body; `None` when admitted.
    pub fn refusal(&self, outcome: &Outcome) -> Option<http::Response<String>> {
        let body = self.problem_body(outcome)?;
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(outcome.status())
            .unwrap_or(http::StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers_mut();
        self.apply_headers(outcome, headers);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(portcullis_core::ratelimit::headers::PROBLEM_JSON),
        );
        Some(response)
    }

    /// The problem+json body for a refused `outcome`.
    pub fn problem_body(&self, outcome: &Outcome) -> Option<String> {
        outcome.problem_body(&self.inner.rules)
    }

    fn now_us(&self) -> u64 {
        micros(self.inner.clock.now())
    }

    /// Checks and records a request.
    pub async fn check(&self, facts: &RequestFacts<'_>) -> Outcome {
        self.run(facts, RuleSet::ALL, true).await
    }

    /// [`Self::check`] against only the rules in `set` (a route's rules).
    pub async fn check_rules(&self, facts: &RequestFacts<'_>, set: RuleSet) -> Outcome {
        self.run(facts, set, true).await
    }

    /// The [`RuleSet`] of the rules with these names; the first unknown name is the error.
    pub fn rule_set<S: AsRef<str>>(
        &self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<RuleSet, RateLimitError> {
        let mut set = RuleSet::NONE;
        for name in names {
            let name = name.as_ref();
            let i = self
                .inner
                .rules
                .iter()
                .position(|r| r.name == name)
                .ok_or_else(|| RateLimitError::UnknownRule(name.to_owned()))?;
            set = set.with(i);
        }
        Ok(set)
    }

    /// [`Self::check`], and feeds `signal` to `engine`'s detectors (on Redis
    /// a busy key's detector events are sent in batches, off the request
    /// path: see [`crate::anomaly::batch`]). Detection fails open: a backend
    /// error is returned beside the rate-limit outcome, which follows the
    /// rules' `on_backend_error` as usual.
    pub async fn check_observing(
        &self,
        facts: &RequestFacts<'_>,
        engine: &crate::anomaly::AnomalyEngine,
        signal: Signal<'_>,
        sample: impl FnOnce() -> SampleRequest,
    ) -> (Outcome, Result<Observed, AnomalyError>) {
        self.check_observing_rules(facts, RuleSet::ALL, engine, signal, sample)
            .await
    }

    /// [`Self::check_observing`] against only the rules in `set`.
    pub async fn check_observing_rules(
        &self,
        facts: &RequestFacts<'_>,
        set: RuleSet,
        engine: &crate::anomaly::AnomalyEngine,
        signal: Signal<'_>,
        sample: impl FnOnce() -> SampleRequest,
    ) -> (Outcome, Result<Observed, AnomalyError>) {
        let outcome = self.check_rules(facts, set).await;
        (outcome, engine.observe(signal, sample).await)
    }

    /// Answers what [`Self::check`] would, without recording anything.
    pub async fn peek(&self, facts: &RequestFacts<'_>) -> Outcome {
        self.run(facts, RuleSet::ALL, false).await
    }

    /// [`Self::check_rules`] without recording anything: the current
    /// counters, read (explain).
    pub async fn peek_rules(&self, facts: &RequestFacts<'_>, set: RuleSet) -> Outcome {
        self.run(facts, set, false).await
    }

    /// The memory backend's check, synchronous (for a memory-only limiter;
    /// on a Redis limiter it checks the local fallback state).
    pub fn check_local(&self, facts: &RequestFacts<'_>) -> Outcome {
        self.inner
            .memory
            .check(facts, RuleSet::ALL, self.now_us(), true)
    }

    async fn run(&self, facts: &RequestFacts<'_>, set: RuleSet, consume: bool) -> Outcome {
        match &self.inner.backend {
            Backend::Memory => self.inner.memory.check(facts, set, self.now_us(), consume),
            #[cfg(feature = "redis")]
            Backend::Redis {
                redis,
                breaker,
                log,
                leases,
            } => {
                if breaker.allow() {
                    let checked = match leases {
                        Some(leases) if consume => {
                            self.check_leased(redis, leases, facts, set).await
                        }
                        _ => redis.check(&self.inner.rules, facts, set, consume).await,
                    };
                    match checked {
                        Ok(outcome) => {
                            breaker.success();
                            return outcome;
                        }
                        Err(e) => {
                            breaker.failure();
                            return self.fallback(facts, set, consume, log, &e);
                        }
                    }
                }
                self.fallback(facts, set, consume, log, &"circuit breaker open")
            }
        }
    }

    #[cfg(feature = "redis")]
    fn fallback(
        &self,
        facts: &RequestFacts<'_>,
        set: RuleSet,
        consume: bool,
        log: &fallback::FallbackLog,
        error: &dyn std::fmt::Display,
    ) -> Outcome {
        let rules = &self.inner.rules;
        let mut local = RuleSet::NONE;
        let mut deny = false;
        let mut allowed = RuleSet::NONE;
        for (i, rule) in rules.iter().enumerate() {
            if !set.contains(i) || !rule.key.applies(facts) {
                continue;
            }
            log.record(&rule.name, rule.on_backend_error.as_str(), error);
            match rule.on_backend_error {
                OnBackendError::Local => local = local.with(i),
                OnBackendError::Deny => deny = true,
                OnBackendError::Allow => allowed = allowed.with(i),
            }
        }
        let mut outcome = if local.is_empty() {
            Outcome::empty()
        } else {
            // Never record locally for a request a fail-closed rule refuses.
            self.inner
                .memory
                .check(facts, local, self.now_us(), consume && !deny)
        };
        for (i, rule) in rules.iter().enumerate() {
            if allowed.contains(i) {
                outcome.push(i, Decision::unknown_allowed(rule.algorithm.quota()));
            }
        }
        outcome.finish();
        if deny {
            outcome.set_unavailable();
        }
        outcome.set_degraded();
        outcome
    }

    /// [`RedisLimiter::check`](redis::RedisLimiter::check) with the leases
    /// of rules that set `lease` (see [`lease`]): rules holding a token for
    /// their key admit from it; the others, and rules whose lease is spent,
    /// are decided by one script call that may grant new tokens. A request
    /// one rule refuses gives back the tokens the others took for it.
    #[cfg(feature = "redis")]
    async fn check_leased(
        &self,
        redis: &redis::RedisLimiter,
        leases: &lease::Leases,
        facts: &RequestFacts<'_>,
        set: RuleSet,
    ) -> Result<Outcome, redis::RedisLimitError> {
        use portcullis_core::ratelimit::MAX_RULES;
        let rules = &self.inner.rules;
        let now = std::time::Instant::now();
        let mut local: [Option<Decision>; MAX_RULES] = [None; MAX_RULES];
        let mut keys: [Option<String>; MAX_RULES] = Default::default();
        let mut ask = [1u64; MAX_RULES];
        let mut remote = RuleSet::NONE;
        let give_back = |local: &[Option<Decision>; MAX_RULES],
                         keys: &[Option<String>; MAX_RULES]| {
            for (d, key) in local.iter().zip(keys) {
                if let (Some(_), Some(key)) = (d, key) {
                    leases.give_back(key);
                }
            }
        };
        for (i, rule) in rules.iter().enumerate().take(MAX_RULES) {
            if !set.contains(i) {
                continue;
            }
            if rule.lease <= 1 {
                remote = remote.with(i);
                continue;
            }
            let Some(key) = redis.key(rule, facts) else {
                continue;
            };
            match leases.take(&key, rule.lease, now) {
                lease::Local::Token(d) => local[i] = Some(d),
                lease::Local::Refused(d) => {
                    give_back(&local, &keys);
                    let mut outcome = Outcome::empty();
                    outcome.push(i, d);
                    outcome.finish();
                    return Ok(outcome);
                }
                lease::Local::Ask(k) => {
                    ask[i] = k;
                    remote = remote.with(i);
                }
            }
            keys[i] = Some(key);
        }
        let mut decided: [Option<Decision>; MAX_RULES] = local;
        if !remote.is_empty() {
            let (outcome, granted) =
                match redis.check_asking(rules, facts, remote, true, &ask).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        give_back(&local, &keys);
                        return Err(e);
                    }
                };
            if !outcome.admitted() {
                give_back(&local, &keys);
                for (i, d) in outcome.decisions() {
                    if !d.allowed
                        && let Some(Some(key)) = keys.get(i)
                    {
                        leases.refused(key, &d, now);
                    }
                }
                return Ok(outcome);
            }
            for (i, mut d) in outcome.decisions() {
                if let (Some(Some(key)), Some(&n)) = (keys.get(i), granted.get(i))
                    && n > 0
                {
                    leases.granted(key, &rules[i].algorithm, n, &d, now);
                    // The tokens held here are still the caller's to use.
                    d.remaining += n - 1;
                }
                decided[i] = Some(d);
            }
        }
        let mut outcome = Outcome::empty();
        for (i, d) in decided.into_iter().enumerate() {
            if let Some(d) = d {
                outcome.push(i, d);
            }
        }
        outcome.finish();
        Ok(outcome)
    }

    /// Forgets the state of the rule named `rule` for the key `facts` make
    /// (admin); whether there was any.
    pub async fn reset(
        &self,
        rule: &str,
        facts: &RequestFacts<'_>,
    ) -> Result<bool, RateLimitError> {
        let index = self
            .inner
            .rules
            .iter()
            .position(|r| r.name == rule)
            .ok_or_else(|| RateLimitError::UnknownRule(rule.to_owned()))?;
        let local = self.inner.memory.reset(index, facts);
        match &self.inner.backend {
            Backend::Memory => Ok(local),
            #[cfg(feature = "redis")]
            Backend::Redis { redis, leases, .. } => {
                let rule = &self.inner.rules[index];
                if let (Some(leases), Some(key)) = (leases, redis.key(rule, facts)) {
                    leases.forget(&key);
                }
                Ok(redis.reset(rule, facts).await? || local)
            }
        }
    }

    /// Whether the Redis circuit breaker is open (always `false` in memory).
    pub fn backend_down(&self) -> bool {
        match &self.inner.backend {
            Backend::Memory => false,
            #[cfg(feature = "redis")]
            Backend::Redis { breaker, .. } => breaker.is_open(),
        }
    }

    /// Fallbacks taken since start (0 in memory).
    pub fn fallbacks(&self) -> u64 {
        match &self.inner.backend {
            Backend::Memory => 0,
            #[cfg(feature = "redis")]
            Backend::Redis { log, .. } => log.total(),
        }
    }

    /// Drops idle in-memory keys; call periodically (or use
    /// [`Self::spawn_sweeper`]).
    pub fn sweep(&self) {
        self.inner.memory.sweep(self.now_us());
    }

    /// Sweeps idle in-memory keys every `every` on the current tokio
    /// runtime, until the last clone of this limiter is dropped.
    pub fn spawn_sweeper(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.memory.sweep(micros(inner.clock.now()));
            }
        })
    }
}
