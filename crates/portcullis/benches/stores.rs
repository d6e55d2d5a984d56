//! Request-path store costs: the access-token denylist check and API-key
//! verification, in memory (polled directly: the memory futures are ready
//! at once) and on the servers that are reachable (SQLite always).

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::stores::memory::MemoryStores;
use portcullis::stores::{Backends, NewApiKey, Stores, StoresConfig};
use portcullis_core::SecretHasher;

/// Polls a future once; the memory backend never waits.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("memory store future was not ready"),
    }
}

fn config() -> StoresConfig {
    let mut c = StoresConfig::new(SecretHasher::new(&[7u8; 32]).expect("pepper"));
    c.revocation_cache_ttl = std::time::Duration::ZERO;
    c
}

fn bench_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stores = rt.block_on(async {
        Stores::new(Backends::all(Arc::new(MemoryStores::new())), config()).expect("stores")
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    for i in 0..100_000 {
        ready(stores.revoke_jti(&format!("jti-{i}"), now + 3600)).expect("deny");
    }
    let key = rt
        .block_on(stores.create_api_key(&NewApiKey {
            name: "bench".into(),
            owner: "owner".into(),
            roles: vec!["reader".into()],
            ..NewApiKey::default()
        }))
        .expect("create key")
        .key;

    let mut group = c.benchmark_group("stores/memory");
    group.bench_function("denylist check (hit, 100k entries)", |b| {
        b.iter(|| black_box(ready(stores.is_jti_revoked(black_box("jti-4242"))).expect("check")))
    });
    group.bench_function("denylist check (miss)", |b| {
        b.iter(|| black_box(ready(stores.is_jti_revoked(black_box("not-there"))).expect("check")))
    });
    group.bench_function("api key verify", |b| {
        b.iter(|| black_box(ready(stores.verify_api_key(black_box(&key))).expect("verify")))
    });
    group.finish();
}

criterion_group!(benches, bench_memory);
criterion_main!(benches);
