//! Rate limiting end to end: multi-rule semantics and response fields in
//! memory, client-IP safety, memory and Redis deciding alike, exactness
//! across four replicas on one Redis and on the Cluster, one EVALSHA per
//! request, and each `on_backend_error` mode through a Redis outage.

#[path = "support/own_redis.rs"]
mod own_redis;
mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis::ratelimit::{RateLimiter, Verdict, client_key};
use portcullis_core::ManualClock;
use portcullis_core::ratelimit::{Algorithm, ClientIpConfig, KeySpec, RequestFacts, Rule};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn facts(client: &str, subject: Option<&'static str>) -> RequestFacts<'static> {
    RequestFacts {
        client_ip: Some(ip(client)),
        subject,
        route: Some("GET /orders"),
        ..Default::default()
    }
}

fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

fn per_ip_and_subject() -> (Rule, Rule) {
    (
        Rule::new(
            "per_ip",
            Algorithm::Gcra {
                rate: 10,
                period: Duration::from_secs(1),
                burst: 20,
            },
            KeySpec::ip(),
        ),
        Rule::new(
            "per_subject",
            Algorithm::FixedWindow {
                limit: 25,
                period: Duration::from_secs(3600),
            },
            KeySpec::subject(),
        ),
    )
}

#[tokio::test]
async fn memory_multi_rule_admits_only_when_all_admit_and_reports_the_most_restrictive() {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_800_000_000));
    let (a, b) = per_ip_and_subject();
    let limiter = RateLimiter::builder()
        .rule(a)
        .rule(b)
        .clock(clock.clone())
        .legacy_headers(true)
        .build()
        .unwrap();
    let alice_a = facts("203.0.113.1", Some("alice"));
    for i in 0..20 {
        let o = limiter.check(&alice_a).await;
        assert!(o.admitted(), "request {i}");
        let h = limiter.headers(&o);
        assert!(header(&h, "ratelimit").is_some());
        assert!(header(&h, "retry-after").is_none());
        assert!(limiter.refusal(&o).is_none());
        let mut map = http::HeaderMap::new();
        limiter.apply_headers(&o, &mut map);
        assert!(map.contains_key("ratelimit-policy"));
    }
    let o = limiter.check(&alice_a).await;
    assert_eq!(o.verdict(), Verdict::Limited);
    assert_eq!(o.status(), 429);
    let h = limiter.headers(&o);
    assert_eq!(header(&h, "ratelimit"), Some("\"per_ip\";r=0;t=1"));
    assert_eq!(
        header(&h, "ratelimit-policy"),
        Some("\"per_ip\";q=20;w=2, \"per_subject\";q=25;w=3600")
    );
    assert_eq!(header(&h, "retry-after"), Some("1"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    let body: serde_json::Value = serde_json::from_str(&limiter.problem_body(&o).unwrap()).unwrap();
    assert_eq!(body["code"], "rate_limit.exceeded");

    // The refused request did not count against the subject: 5 remain.
    let alice_b = facts("203.0.113.2", Some("alice"));
    let peek = limiter.peek(&alice_b).await;
    let (_, d) = peek.decisions().find(|(r, _)| *r == 1).unwrap();
    assert_eq!(d.remaining, 4, "a 21st request would leave 4 of 25");
    for _ in 0..5 {
        assert!(limiter.check(&alice_b).await.admitted());
    }
    let o = limiter.check(&alice_b).await;
    assert_eq!(o.verdict(), Verdict::Limited);
    assert_eq!(
        o.primary().unwrap().0,
        1,
        "the subject rule is the binding one"
    );

    // An anonymous request is not counted by the per-subject rule.
    let anon = facts("203.0.113.3", None);
    assert_eq!(limiter.check(&anon).await.decisions().count(), 1);

    // GCRA refills at 10/s; reset forgets a key.
    clock.advance(Duration::from_millis(100));
    assert!(limiter.check(&alice_a).await.verdict() == Verdict::Limited); // subject exhausted
    assert!(limiter.reset("per_subject", &alice_a).await.unwrap());
    assert!(limiter.check(&alice_a).await.admitted());
    assert!(limiter.reset("nope", &alice_a).await.is_err());
}

#[tokio::test]
async fn ipv6_clients_in_one_prefix_share_a_limit_and_spoofed_xff_is_ignored() {
    let limiter = RateLimiter::builder()
        .rule(Rule::new(
            "per_ip",
            Algorithm::FixedWindow {
                limit: 1,
                period: Duration::from_secs(3600),
            },
            KeySpec::ip(),
        ))
        .build()
        .unwrap();
    let cfg = ClientIpConfig::new()
        .trusted_proxies(["10.0.0.0/8"])
        .unwrap();
    let mut spoofed = http::HeaderMap::new();
    spoofed.insert("x-forwarded-for", "192.0.2.200".parse().unwrap());

    // Rotating addresses inside one /64 does not escape the limit.
    let a = client_key(&cfg, ip("2001:db8:1:2::1"), &http::HeaderMap::new());
    let b = client_key(
        &cfg,
        ip("2001:db8:1:2:dead:beef::9"),
        &http::HeaderMap::new(),
    );
    let check = |client: IpAddr| {
        let limiter = limiter.clone();
        async move {
            let f = RequestFacts {
                client_ip: Some(client),
                ..Default::default()
            };
            limiter.check(&f).await.admitted()
        }
    };
    assert!(check(a).await);
    assert!(!check(b).await);
    assert!(
        check(client_key(
            &cfg,
            ip("2001:db8:1:3::1"),
            &http::HeaderMap::new()
        ))
        .await
    );

    // An untrusted peer cannot pick its own key with X-Forwarded-For.
    let peer = ip("198.51.100.7");
    assert!(check(client_key(&cfg, peer, &http::HeaderMap::new())).await);
    assert_eq!(client_key(&cfg, peer, &spoofed), peer);
    assert!(!check(client_key(&cfg, peer, &spoofed)).await);

    // Two trusted proxies: the real client is found.
    let mut chain = http::HeaderMap::new();
    chain.append("x-forwarded-for", "6.6.6.6, 203.0.113.50".parse().unwrap());
    chain.append("x-forwarded-for", "10.0.0.5".parse().unwrap());
    assert_eq!(client_key(&cfg, ip("10.1.1.1"), &chain), ip("203.0.113.50"));
}

/// Issue 12 items 6 and 7 through the runtime's header handling: behind
/// nginx (which appends only X-Forwarded-For), neither a client-sent
/// `Forwarded`, nor bytes that are not visible ASCII, nor padding past 8 KiB
/// in what the client sent can change the key from the client's address.
#[test]
fn client_key_reads_only_the_configured_header_and_ignores_client_garbage() {
    let cfg = ClientIpConfig::new()
        .trusted_proxies(["10.0.0.0/8"])
        .unwrap();
    let nginx = ip("10.1.1.1");
    let client = ip("203.0.113.50");
    let with = |lines: &[&[u8]], forwarded: Option<&str>| {
        let mut h = http::HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", http::HeaderValue::from_bytes(l).unwrap());
        }
        if let Some(f) = forwarded {
            h.insert("forwarded", f.parse().unwrap());
        }
        client_key(&cfg, nginx, &h)
    };
    assert_eq!(with(&[b"203.0.113.50"], Some("for=6.6.6.6")), client);
    assert_eq!(with(&[b"\xff\xfe, 203.0.113.50"], None), client);
    assert_eq!(with(&[b"caf\xc3\xa9", b"203.0.113.50"], None), client);
    let padding = "1.1.1.1, ".repeat(2_000);
    assert_eq!(
        with(&[padding.as_bytes(), b"203.0.113.50, 10.0.0.5"], None),
        client
    );
    let long_line = format!("{padding}203.0.113.50");
    assert_eq!(with(&[long_line.as_bytes()], None), client);
    // Without a trusted peer nothing is read.
    let mut h = http::HeaderMap::new();
    h.insert("x-forwarded-for", "192.0.2.200".parse().unwrap());
    assert_eq!(client_key(&cfg, ip("198.51.100.7"), &h), ip("198.51.100.7"));
}

// ---------------------------------------------------------------- Redis

#[cfg(feature = "redis")]
mod redis_backend {
    use super::*;
    use portcullis::ratelimit::redis::RedisConnection;
    use portcullis_core::ratelimit::{Decision, KeyPart, OnBackendError};
    use portcullis_core::{Clock, SystemClock};
    use std::time::Instant;

    fn three_rules(limit: u64) -> Vec<Rule> {
        vec![
            Rule::new(
                "g",
                Algorithm::Gcra {
                    rate: 1,
                    period: Duration::from_secs(7 * 24 * 3600),
                    burst: limit,
                },
                KeySpec::ip(),
            ),
            Rule::new(
                "l",
                Algorithm::SlidingLog {
                    limit: limit + 2,
                    period: Duration::from_secs(3600),
                },
                KeySpec::subject(),
            ),
            Rule::new(
                "f",
                Algorithm::FixedWindow {
                    limit: limit + 1,
                    period: Duration::from_secs(24 * 3600),
                },
                KeySpec::new([KeyPart::Subject, KeyPart::Route]),
            ),
        ]
    }

    fn build(rules: &[Rule], conn: Option<RedisConnection>, prefix: &str) -> RateLimiter {
        let mut b = RateLimiter::builder().clock(Arc::new(ManualClock::new(SystemClock.now())));
        for r in rules {
            b = b.rule(r.clone());
        }
        if let Some(conn) = conn {
            b = b.redis(conn, prefix);
        }
        b.build().unwrap()
    }

    /// Waits while a fixed day window is about to roll over.
    async fn away_from_day_boundary() {
        let day = 24 * 3600;
        while (SystemClock.unix_seconds() + 5) % day < 10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn summary(o: &portcullis::ratelimit::Outcome) -> Vec<(usize, bool, u64, u64)> {
        o.decisions()
            .map(|(r, d): (usize, Decision)| (r, d.allowed, d.remaining, d.limit))
            .collect()
    }

    #[tokio::test]
    async fn memory_and_redis_decide_alike() {
        let Some(url) = support::redis_url() else {
            return;
        };
        away_from_day_boundary().await;
        let prefix = support::unique_prefix("rl_alike");
        let rules = three_rules(5);
        for (single, rule) in rules.iter().enumerate() {
            let subset = vec![rule.clone()];
            let memory = build(&subset, None, "");
            let redis = build(
                &subset,
                Some(RedisConnection::single(&url).await.unwrap()),
                &format!("{prefix}{single}"),
            );
            let f = facts("203.0.113.9", Some("carol"));
            for i in 0..12 {
                let (pm, pr) = (memory.peek(&f).await, redis.peek(&f).await);
                assert_eq!(summary(&pm), summary(&pr), "peek {i} of rule {single}");
                let (m, r) = (memory.check(&f).await, redis.check(&f).await);
                assert_eq!(summary(&m), summary(&r), "check {i} of rule {single}");
                assert!(!r.degraded());
            }
        }
        // All three rules at once: the most restrictive binds.
        let memory = build(&rules, None, "");
        let redis = build(
            &rules,
            Some(RedisConnection::single(&url).await.unwrap()),
            &format!("{prefix}all"),
        );
        let f = facts("203.0.113.10", Some("dave"));
        let mut admitted = 0;
        for i in 0..10 {
            let (m, r) = (memory.check(&f).await, redis.check(&f).await);
            assert_eq!(summary(&m), summary(&r), "check {i}");
            assert_eq!(m.verdict(), r.verdict());
            admitted += usize::from(r.admitted());
        }
        assert_eq!(admitted, 5);
        assert!(redis.reset("g", &f).await.unwrap());
        assert!(redis.check(&f).await.admitted());
        support::redis_cleanup(&url, &prefix).await;
    }

    async fn exact_across_replicas(connect: impl AsyncFn() -> RedisConnection, prefix: &str) {
        for rule in [
            Rule::new(
                "log",
                Algorithm::SlidingLog {
                    limit: 1000,
                    period: Duration::from_secs(3600),
                },
                KeySpec::subject(),
            ),
            Rule::new(
                "gcra",
                Algorithm::Gcra {
                    rate: 1,
                    period: Duration::from_secs(7 * 24 * 3600),
                    burst: 1000,
                },
                KeySpec::subject(),
            ),
        ] {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..4 {
                // Exactness is what is asserted here, not latency: a budget
                // that a loaded CI machine cannot miss keeps every call on Redis.
                let limiter = RateLimiter::builder()
                    .clock(Arc::new(ManualClock::new(SystemClock.now())))
                    .rule(rule.clone())
                    .redis(connect().await, prefix)
                    .redis_timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                for _ in 0..4 {
                    let limiter = limiter.clone();
                    tasks.spawn(async move {
                        let f = facts("203.0.113.20", Some("erin"));
                        let mut admitted = 0u32;
                        for _ in 0..625 {
                            let o = limiter.check(&f).await;
                            assert!(!o.degraded());
                            admitted += u32::from(o.admitted());
                        }
                        admitted
                    });
                }
            }
            let total: u32 = tasks.join_all().await.into_iter().sum();
            assert_eq!(
                total, 1000,
                "rule {}: 10 000 requests, limit 1 000",
                rule.name
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_replicas_on_one_redis_admit_exactly_the_limit() {
        let Some(url) = support::redis_url() else {
            return;
        };
        let prefix = support::unique_prefix("rl_replicas");
        exact_across_replicas(
            async || RedisConnection::single(&url).await.unwrap(),
            &prefix,
        )
        .await;
        support::redis_cleanup(&url, &prefix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_replicas_on_the_cluster_admit_exactly_the_limit() {
        let Some(urls) = support::redis_cluster_urls() else {
            return;
        };
        if urls.is_empty() {
            return;
        }
        let prefix = support::unique_prefix("rl_cluster");
        exact_across_replicas(
            async || RedisConnection::cluster(&urls).await.unwrap(),
            &prefix,
        )
        .await;
        support::redis_cluster_cleanup(&urls, &prefix).await;
    }

    #[tokio::test]
    async fn cluster_partition_by_subject_keeps_a_request_on_one_slot() {
        let Some(urls) = support::redis_cluster_urls() else {
            return;
        };
        if urls.is_empty() {
            return;
        }
        let prefix = support::unique_prefix("rl_part");
        let conn = RedisConnection::cluster(&urls).await.unwrap();
        let rules = [
            Rule::new(
                "sub",
                Algorithm::SlidingLog {
                    limit: 10,
                    period: Duration::from_secs(3600),
                },
                KeySpec::subject(),
            ),
            Rule::new(
                "sub_route",
                Algorithm::FixedWindow {
                    limit: 20,
                    period: Duration::from_secs(3600),
                },
                KeySpec::new([KeyPart::Subject, KeyPart::Route]),
            ),
        ];
        let mut b = RateLimiter::builder();
        for r in &rules {
            b = b.rule(r.clone());
        }
        let limiter = b
            .redis(conn.clone(), &prefix)
            .redis_partition(KeyPart::Subject)
            .build()
            .unwrap();
        for subject in ["p1", "p2", "p3", "p4"] {
            let f = RequestFacts {
                subject: Some(subject),
                route: Some("GET /x"),
                ..Default::default()
            };
            let mut admitted = 0;
            for _ in 0..15 {
                let o = limiter.check(&f).await;
                assert!(
                    !o.degraded(),
                    "no CROSSSLOT: both keys share the subject tag"
                );
                assert_eq!(o.decisions().count(), 2);
                admitted += usize::from(o.admitted());
            }
            assert_eq!(admitted, 10);
        }
        // A rule without the partition part is refused at build time.
        let err = RateLimiter::builder()
            .rule(Rule::new(
                "by_ip",
                Algorithm::FixedWindow {
                    limit: 1,
                    period: Duration::from_secs(1),
                },
                KeySpec::ip(),
            ))
            .redis(conn, &prefix)
            .redis_partition(KeyPart::Subject)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("by_ip"), "{err}");
        support::redis_cluster_cleanup(&urls, &prefix).await;
    }

    use crate::own_redis::{OwnCluster, OwnRedis};

    async fn evalsha_calls(url: &str) -> (u64, u64) {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let calls = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (calls("evalsha"), calls("eval") + calls("script|load"))
    }

    #[tokio::test]
    async fn one_evalsha_round_trip_per_request_with_three_rules() {
        let mut server = OwnRedis::start(None).await;
        let url = server.url();
        let limiter = build(
            &three_rules(1000),
            Some(RedisConnection::single(&url).await.unwrap()),
            "pcx_test_rt",
        );
        let f = facts("203.0.113.30", Some("frank"));
        assert_eq!(limiter.check(&f).await.decisions().count(), 3);
        let (sha0, other0) = evalsha_calls(&url).await;
        for _ in 0..50 {
            assert!(limiter.check(&f).await.admitted());
        }
        let (sha1, other1) = evalsha_calls(&url).await;
        assert_eq!(sha1 - sha0, 50, "one EVALSHA per request");
        assert_eq!(other1, other0, "no EVAL or SCRIPT LOAD once loaded");
        server.stop().await;
    }

    /// A GCRA rule of `limit` per hour (burst `limit`) by IP with `lease`.
    fn leased_rule(limit: u64, lease: u32) -> Rule {
        Rule::new(
            "leased",
            Algorithm::Gcra {
                rate: limit,
                period: Duration::from_secs(3600),
                burst: limit,
            },
            KeySpec::ip(),
        )
        .lease(lease)
    }

    /// With a lease, one replica admits exactly the limit, in fewer Redis
    /// calls than requests; a refusal is remembered until its Retry-After
    /// (no call while it holds); an admin reset forgets the lease at once.
    #[tokio::test]
    async fn a_leased_rule_admits_exactly_the_limit_in_fewer_calls() {
        let mut server = OwnRedis::start(None).await;
        let url = server.url();
        let conn = RedisConnection::single(&url).await.unwrap();
        let limiter = build(&[leased_rule(40, 16)], Some(conn), "pcx_test_lease");
        let f = facts("203.0.113.60", None);
        assert!(limiter.check(&f).await.admitted(), "loads the script");
        let (sha0, _) = evalsha_calls(&url).await;
        let mut admitted = 1;
        let mut last_remaining = u64::MAX;
        for _ in 0..60 {
            let o = limiter.check(&f).await;
            if o.admitted() {
                admitted += 1;
                let (_, d) = o.primary().unwrap();
                assert!(d.remaining < last_remaining, "remaining counts down");
                last_remaining = d.remaining;
            } else {
                let (_, d) = o.decisions().next().unwrap();
                assert!(d.retry_after_us > 0, "a refusal says when to retry");
            }
        }
        let (sha1, _) = evalsha_calls(&url).await;
        assert_eq!(admitted, 40, "exactly the limit, on one replica");
        assert!(
            sha1 - sha0 < 20,
            "{} calls for 60 requests: leases and the remembered refusal save calls",
            sha1 - sha0
        );
        assert!(limiter.reset("leased", &f).await.unwrap());
        assert!(
            limiter.check(&f).await.admitted(),
            "a reset forgets the refusal"
        );
        server.stop().await;
    }

    /// Replicas with leases hammering one key at once never admit more than
    /// the rule allows, and admit all but what their held leases can hide.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leased_replicas_never_admit_more_than_the_limit() {
        let Some(url) = support::redis_url() else {
            return;
        };
        let prefix = support::unique_prefix("rl_lease");
        const LIMIT: u64 = 500;
        const LEASE: u32 = 32;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let limiter = Arc::new(build(
                &[leased_rule(LIMIT, LEASE)],
                Some(RedisConnection::single(&url).await.unwrap()),
                &prefix,
            ));
            for _ in 0..2 {
                let limiter = Arc::clone(&limiter);
                tasks.push(tokio::spawn(async move {
                    let f = facts("203.0.113.61", None);
                    let mut n = 0u64;
                    for _ in 0..300 {
                        n += u64::from(limiter.check(&f).await.admitted());
                    }
                    n
                }));
            }
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        // GCRA refills LIMIT per hour: what the test's own duration adds.
        let refill = (started.elapsed().as_secs_f64() * LIMIT as f64 / 3600.0).ceil() as u64;
        assert!(
            admitted <= LIMIT + refill,
            "{admitted} admitted of a limit of {LIMIT} (+{refill} refilled)"
        );
        // Four replicas each hold at most one lease (a quarter of what was
        // left, at most LEASE) when the key runs out.
        assert!(
            admitted + 4 * u64::from(LEASE) >= LIMIT,
            "{admitted} admitted: more hidden in leases than four can hold"
        );
        support::redis_cleanup(&url, &prefix).await;
    }

    /// A limiter and a `burst` detector (threshold 5, tag) sharing `conn`.
    fn limiter_and_detector(
        conn: &RedisConnection,
        prefix: &str,
    ) -> (RateLimiter, portcullis::anomaly::AnomalyEngine) {
        use portcullis::anomaly::redis::{RedisBans, RedisCounters};
        use portcullis::anomaly::{AnomalyBackend, AnomalyEngine};
        use portcullis_core::anomaly::{Action, DetectorConfig, DetectorKind};
        let limiter = build(&three_rules(1000), Some(conn.clone()), prefix);
        let burst = DetectorConfig {
            threshold: 5,
            window: Duration::from_secs(60),
            actions: vec![Action::Tag],
            ..DetectorConfig::default_for(DetectorKind::Burst)
        };
        let engine = AnomalyEngine::new(
            vec![burst],
            AnomalyBackend::Redis {
                counters: RedisCounters::new(conn.clone(), prefix),
                bans: RedisBans::new(conn.clone(), prefix),
            },
            None,
            Arc::new(SystemClock),
        )
        .unwrap();
        (limiter, engine)
    }

    /// Requests from one IP: rate-limit outcomes and whether `burst` fired.
    async fn observe_burst(
        limiter: &RateLimiter,
        engine: &portcullis::anomaly::AnomalyEngine,
        client: &'static str,
        requests: usize,
    ) -> Vec<bool> {
        use portcullis_core::anomaly::{SampleRequest, Signal};
        let f = facts(client, Some("grace"));
        let mut fired = Vec::new();
        for _ in 0..requests {
            let (outcome, observed) = limiter
                .check_observing(&f, engine, Signal::Request { ip: client }, || {
                    SampleRequest::new("GET", "/x", "test")
                })
                .await;
            assert!(outcome.admitted() && !outcome.degraded());
            fired.push(!observed.unwrap().tags.is_empty());
        }
        fired
    }

    /// A busy key's detector events cost Redis one call per flush, not one
    /// per request: the limiter makes its one `EVALSHA` per request, the
    /// detector one call for the key's first event and then one per flush.
    /// The detector still fires at exactly its threshold on one replica, and
    /// the flushed events reach another replica's count.
    #[tokio::test]
    async fn detector_events_of_a_busy_key_are_sent_per_flush_not_per_request() {
        use portcullis::anomaly::batch::FLUSH_INTERVAL;
        let mut server = OwnRedis::start(None).await;
        let url = server.url();
        let conn = RedisConnection::single(&url).await.unwrap();
        let (limiter, engine) = limiter_and_detector(&conn, "pcx_test_fold");
        // Load both scripts first, so the count below is of calls only.
        observe_burst(&limiter, &engine, "203.0.113.39", 1).await;
        let (sha0, _) = evalsha_calls(&url).await;
        let flushes0 = engine.batch_stats().unwrap().flushes;
        let fired = observe_burst(&limiter, &engine, "203.0.113.40", 200).await;
        let (sha1, _) = evalsha_calls(&url).await;
        let flushes = engine.batch_stats().unwrap().flushes - flushes0;
        // The detector fires at its threshold (the 5th request), not before.
        assert_eq!(fired[..6], [false, false, false, false, true, true]);
        assert!(fired[4..].iter().all(|f| *f), "and on every request after");
        assert!(
            sha1 - sha0 <= 200 + 1 + flushes,
            "{} EVALSHA for 200 requests and {flushes} flushes",
            sha1 - sha0
        );

        // Once flushed, another replica's first event of the key counts
        // what this one saw.
        tokio::time::sleep(FLUSH_INTERVAL * 3).await;
        let (limiter2, engine2) = limiter_and_detector(&conn, "pcx_test_fold");
        let fired2 = observe_burst(&limiter2, &engine2, "203.0.113.40", 1).await;
        assert_eq!(fired2, [true], "the shared window holds the flushed events");
        server.stop().await;
    }

    #[tokio::test]
    async fn detectors_fire_at_their_threshold_beside_the_limiter_on_the_cluster() {
        let Some(urls) = support::redis_cluster_urls() else {
            return;
        };
        let prefix = support::unique_prefix("rl_fold_cluster");
        let conn = RedisConnection::cluster(&urls).await.unwrap();
        // The detector windows are tagged by IP, the limits by the prefix:
        // on a Cluster the engine records them in its own call instead.
        let (limiter, engine) = limiter_and_detector(&conn, prefix.trim_end_matches(':'));
        let fired = observe_burst(&limiter, &engine, "203.0.113.42", 6).await;
        assert_eq!(fired, [false, false, false, false, true, true]);
        support::redis_cluster_cleanup(&urls, &prefix).await;
    }

    fn outage_rule(mode: OnBackendError) -> Rule {
        Rule::new(
            "per_ip",
            Algorithm::Gcra {
                rate: 1,
                period: Duration::from_secs(7 * 24 * 3600),
                burst: 5,
            },
            KeySpec::ip(),
        )
        .on_backend_error(mode)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_outage_follows_on_backend_error_and_recovers_within_two_seconds() {
        let mut server = OwnRedis::start(None).await;
        let url = server.url();
        let modes = [
            OnBackendError::Allow,
            OnBackendError::Deny,
            OnBackendError::Local,
        ];
        let mut limiters = Vec::new();
        for mode in modes {
            limiters.push(build(
                &[outage_rule(mode)],
                Some(RedisConnection::single(&url).await.unwrap()),
                &format!("pcx_test_outage_{}", mode.as_str()),
            ));
        }
        let f = facts("203.0.113.40", None);
        // Redis up: 5 admitted, then limited, for every mode.
        for l in &limiters {
            for _ in 0..5 {
                assert!(l.check(&f).await.admitted());
            }
            assert_eq!(l.check(&f).await.verdict(), Verdict::Limited);
        }

        server.stop().await;
        for (mode, l) in modes.iter().zip(&limiters) {
            let verdicts: Vec<Verdict> = {
                let mut v = Vec::new();
                for _ in 0..10 {
                    let o = l.check(&f).await;
                    assert!(o.degraded(), "{mode:?}");
                    assert_ne!(o.status(), 500);
                    v.push(o.verdict());
                }
                v
            };
            let admitted = verdicts.iter().filter(|v| **v == Verdict::Admitted).count();
            match mode {
                OnBackendError::Allow => assert_eq!(admitted, 10),
                OnBackendError::Deny => {
                    assert!(verdicts.iter().all(|v| *v == Verdict::Unavailable))
                }
                // The replica's own memory limiter: a fresh bucket of 5.
                _ => {
                    assert_eq!(admitted, 5);
                    assert_eq!(verdicts[5..], [Verdict::Limited; 5]);
                }
            }
            assert!(l.backend_down());
            assert!(l.fallbacks() >= 10);
        }

        // Redis returns (empty): shared limiting resumes within 2 s.
        let server2 = OwnRedis::start(Some(server.port)).await;
        let back = std::time::Instant::now();
        for l in &limiters {
            let g = facts("203.0.113.41", None);
            loop {
                let o = l.check(&g).await;
                if !o.degraded() {
                    break;
                }
                assert!(
                    back.elapsed() < Duration::from_secs(2),
                    "still degraded after 2 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut admitted = 1;
            for _ in 0..9 {
                let o = l.check(&g).await;
                assert!(!o.degraded());
                admitted += usize::from(o.admitted());
            }
            assert_eq!(admitted, 5, "normal shared limiting");
        }
        assert!(back.elapsed() < Duration::from_secs(2));
        drop(server2);
    }

    /// Issue 12 item 8: the algorithm letter is part of every key, so a rule
    /// that keeps its name and changes algorithm starts on fresh keys instead
    /// of meeting a key of another Redis type (WRONGTYPE, which would trip
    /// the breaker for the key's whole TTL).
    #[tokio::test]
    async fn redis_keys_name_the_algorithm_so_a_rule_can_change_it() {
        use portcullis::ratelimit::redis::{Partition, RedisLimiter};
        let Some(url) = support::redis_url() else {
            return;
        };
        let prefix = support::unique_prefix("rl_keys");
        let prefix = prefix.trim_end_matches(':');
        let conn = RedisConnection::single(&url).await.unwrap();
        let hour = Duration::from_secs(3600);
        let key = KeySpec::new([KeyPart::Subject, KeyPart::Route]);
        let rules = [
            Rule::new(
                "api",
                Algorithm::Gcra {
                    rate: 10,
                    period: hour,
                    burst: 10,
                },
                key.clone(),
            ),
            Rule::new(
                "api",
                Algorithm::SlidingLog {
                    limit: 10,
                    period: hour,
                },
                key.clone(),
            ),
            Rule::new(
                "api",
                Algorithm::FixedWindow {
                    limit: 10,
                    period: hour,
                },
                key,
            ),
        ];
        let f = facts("203.0.113.9", Some("alice"));
        let layout = RedisLimiter::new(conn.clone(), prefix, Partition::Single);
        for (rule, letter) in rules.iter().zip(["g", "l", "f"]) {
            assert_eq!(
                layout.key(rule, &f).unwrap(),
                format!("{prefix}:rl:{{{prefix}}}:api:{letter}:sub=alice|rt=GET%20/orders")
            );
        }
        let by_subject = RedisLimiter::new(conn.clone(), prefix, Partition::By(KeyPart::Subject));
        assert_eq!(
            by_subject.key(&rules[0], &f).unwrap(),
            format!("{prefix}:rl:{{sub=alice}}:api:g:sub=alice|rt=GET%20/orders")
        );
        // The same rule name under each algorithm in turn, as after a
        // configuration change: every check is answered by Redis.
        for rule in &rules {
            let limiter = build(std::slice::from_ref(rule), Some(conn.clone()), prefix);
            for _ in 0..3 {
                let o = limiter.check(&f).await;
                assert!(o.admitted() && !o.degraded(), "{}", rule.algorithm.as_str());
            }
            assert!(!limiter.backend_down());
        }
        support::redis_cleanup(&url, &format!("{prefix}:")).await;
    }

    /// Checks `limiter` `n` times while its backend hangs: every call is
    /// answered (degraded) within the budget's order of magnitude, and the
    /// breaker opens.
    async fn hung_calls_are_bounded(limiter: &RateLimiter, f: &RequestFacts<'_>, what: &str) {
        let started = Instant::now();
        for i in 0..20 {
            let t = Instant::now();
            let o = tokio::time::timeout(Duration::from_secs(10), limiter.check(f))
                .await
                .unwrap_or_else(|_| panic!("{what}: call {i} hung for 10 s"));
            assert!(o.degraded(), "{what}: call {i}");
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{what}: call {i} took {:?} while the backend hung",
                t.elapsed()
            );
        }
        assert!(limiter.backend_down(), "{what}: timeouts count as failures");
        assert!(started.elapsed() < Duration::from_secs(3), "{what}");
    }

    /// Waits until `limiter` is answered by Redis again.
    async fn recovers(limiter: &RateLimiter, f: &RequestFacts<'_>, within: Duration) {
        let back = Instant::now();
        while limiter.check(f).await.degraded() {
            assert!(back.elapsed() < within, "still degraded after {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Issue 12 item 9: a server that hangs (SIGSTOP: connections stay
    /// open, nothing answers) is a server that is down: each limiter, ban and
    /// detector call gives up after its budget (100 ms by default), the
    /// breaker opens, and shared limiting resumes once it answers again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_costs_each_call_its_budget_and_opens_the_breaker() {
        use portcullis_core::anomaly::{SampleRequest, Signal};
        let server = OwnRedis::start(None).await;
        let conn = RedisConnection::single(&server.url()).await.unwrap();
        let limiter = build(
            &[outage_rule(OnBackendError::Local)],
            Some(conn.clone()),
            "pcx_test_hang",
        );
        let (_, engine) = limiter_and_detector(&conn, "pcx_test_hang");
        let f = facts("203.0.113.60", None);
        assert!(!limiter.check(&f).await.degraded());
        assert!(engine.banned(Some("203.0.113.60"), None).await.is_ok());

        server.pause();
        hung_calls_are_bounded(&limiter, &f, "single server").await;
        for i in 0..5 {
            let t = Instant::now();
            let banned = tokio::time::timeout(
                Duration::from_secs(10),
                engine.banned(Some("203.0.113.60"), None),
            )
            .await
            .expect("ban check hung");
            assert!(
                banned.is_err(),
                "a hung ban store is an error, not 'not banned'"
            );
            let observed = tokio::time::timeout(
                Duration::from_secs(10),
                engine.observe(Signal::Request { ip: "203.0.113.60" }, || {
                    SampleRequest::new("GET", "/", "t")
                }),
            )
            .await
            .expect("detector update hung");
            assert!(observed.is_err());
            assert!(
                t.elapsed() < Duration::from_millis(700),
                "ban check and detector update {i} took {:?}",
                t.elapsed()
            );
        }

        server.resume();
        recovers(&limiter, &f, Duration::from_secs(3)).await;
        // The engine's own breaker lets a probe through every 250 ms.
        let back = Instant::now();
        while engine.banned(Some("203.0.113.60"), None).await.is_err() {
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "bans still failing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Issue 12 item 9 on a Cluster of this test's own (ports 7410-7412,
    /// never the shared one): the node serving the limits' slot hangs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_cluster_node_costs_each_call_its_budget_and_opens_the_breaker() {
        let cluster = OwnCluster::start([7410, 7411, 7412]).await;
        let conn = RedisConnection::cluster(&cluster.urls()).await.unwrap();
        let prefix = "pcx_test_hang_cluster";
        let limiter = build(&[outage_rule(OnBackendError::Local)], Some(conn), prefix);
        let f = facts("203.0.113.61", None);
        assert!(!limiter.check(&f).await.degraded());
        let node = cluster.node_for(prefix).await;
        node.pause();
        hung_calls_are_bounded(&limiter, &f, "cluster node").await;
        node.resume();
        recovers(&limiter, &f, Duration::from_secs(5)).await;
    }
}

/// Issue 12 item 10: when the memory limiter is full, eviction forgets the
/// buckets that limit nobody, never a throttled one: an attacker with many
/// fresh keys cannot push its own exhausted bucket out and start over.
#[test]
fn memory_eviction_keeps_the_buckets_that_are_limiting_someone() {
    use portcullis::ratelimit::{MemoryLimiter, RuleSet};
    let rules: Arc<[Rule]> = vec![Rule::new(
        "per_ip",
        Algorithm::FixedWindow {
            limit: 3,
            period: Duration::from_secs(3600),
        },
        KeySpec::ip(),
    )]
    .into();
    // 64 shards of at most 1 024 keys.
    let limiter = MemoryLimiter::new(rules, 64 * 1024);
    let now = 1_800_000_000_000_000u64;
    let attacker = facts("198.51.100.66", None);
    for _ in 0..3 {
        assert!(limiter.check(&attacker, RuleSet::ALL, now, true).admitted());
    }
    assert!(!limiter.check(&attacker, RuleSet::ALL, now, true).admitted());
    for i in 0..400_000u32 {
        let f = RequestFacts {
            client_ip: Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
            ..Default::default()
        };
        assert!(limiter.check(&f, RuleSet::ALL, now + 1, true).admitted());
    }
    assert!(limiter.len() <= 64 * 1024, "{} keys", limiter.len());
    assert!(
        !limiter
            .check(&attacker, RuleSet::ALL, now + 2, true)
            .admitted(),
        "the throttled bucket survived 400 000 fresh keys"
    );
}
