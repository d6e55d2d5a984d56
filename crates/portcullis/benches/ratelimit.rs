//! Cost of a rate-limit check in memory: one hot key uncontended, and the
//! throughput of 2 threads on distinct keys.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis::ratelimit::{MemoryLimiter, RuleSet};
use portcullis_core::ratelimit::{Algorithm, KeySpec, RequestFacts, Rule};

fn limiter() -> MemoryLimiter {
    let rules: Arc<[Rule]> = vec![Rule::new(
        "per_ip",
        // Buckets that never run dry or go idle: the steady state of the
        // check itself, without refusals or evictions.
        Algorithm::Gcra {
            rate: 1_000_000,
            period: Duration::from_secs(1),
            burst: 1_000_000_000,
        },
        KeySpec::ip(),
    )]
    .into();
    MemoryLimiter::new(rules, 1_000_000)
}

fn facts(i: u32) -> RequestFacts<'static> {
    RequestFacts {
        client_ip: Some(IpAddr::V4(Ipv4Addr::from(i))),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let l = limiter();
    let mut g = c.benchmark_group("ratelimit/memory");
    let now = AtomicU64::new(1_800_000_000_000_000);
    g.bench_function("check, one hot key", |b| {
        let f = facts(0x0a00_0001);
        b.iter(|| {
            let t = now.load(Ordering::Relaxed);
            black_box(l.check(black_box(&f), RuleSet::ALL, t, true))
        })
    });

    // 2 threads, each cycling through its own 4 096 keys.
    g.throughput(Throughput::Elements(2));
    g.bench_function("check, 2 threads, distinct keys (per pair)", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2u32 {
                    let l = &l;
                    s.spawn(move || {
                        let base = 0x0b00_0000 + t * 0x0010_0000;
                        let now = 1_800_000_000_000_000u64;
                        for i in 0..iters {
                            let f = facts(base + (i % 4096) as u32);
                            black_box(l.check(&f, RuleSet::ALL, now, true));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
