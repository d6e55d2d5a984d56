//! Cost of a detector update on the request path, in memory: one key hot,
//! and a rotating set of 100 000 keys (cache-cold shards).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::anomaly::memory::MemoryCounters;
use portcullis_core::anomaly::{Action, DetectionKey, DetectorConfig, DetectorKind, Observation};

fn config(kind: DetectorKind) -> DetectorConfig {
    DetectorConfig {
        threshold: 50,
        window: Duration::from_secs(10),
        actions: vec![Action::Tag],
        ..DetectorConfig::default_for(kind)
    }
}

fn bench_update(c: &mut Criterion) {
    let burst = config(DetectorKind::Burst);
    let distinct = config(DetectorKind::DistinctAccounts);
    let counters = MemoryCounters::new(1_000_000);
    let mut group = c.benchmark_group("anomaly/memory");

    // The sliding log is at its cap (50 stamps) after warm-up: the steady
    // state of a busy client.
    let mut now = 1_800_000_000_000u64;
    group.bench_function("burst update, one hot key", |b| {
        b.iter(|| {
            now += 1;
            let obs = Observation {
                kind: DetectorKind::Burst,
                key: DetectionKey::Ip(black_box("203.0.113.7")),
                member: None,
            };
            black_box(counters.record(&obs, &burst, now))
        })
    });

    let ips: Vec<String> = (0..100_000u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let mut i = 0usize;
    group.bench_function("burst update, 100k keys", |b| {
        b.iter(|| {
            now += 1;
            i = (i + 1) % ips.len();
            let obs = Observation {
                kind: DetectorKind::Burst,
                key: DetectionKey::Ip(&ips[i]),
                member: None,
            };
            black_box(counters.record(&obs, &burst, now))
        })
    });

    let accounts: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    group.bench_function("distinct_accounts update", |b| {
        b.iter(|| {
            now += 1;
            i = (i + 1) % accounts.len();
            let obs = Observation {
                kind: DetectorKind::DistinctAccounts,
                key: DetectionKey::Ip("198.51.100.1"),
                member: Some(&accounts[i]),
            };
            black_box(counters.record(&obs, &distinct, now))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_update);
criterion_main!(benches);
