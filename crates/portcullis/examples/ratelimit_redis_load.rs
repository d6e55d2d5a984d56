//! Drives rate-limit checks against a local Redis at a fixed concurrency
//! and prints checks per second. Used by `bench/ratelimit-redis-load.sh`.
//!
//! `cargo run --release -p portcullis --features redis --example
//! ratelimit_redis_load -- [redis_url] [concurrency] [seconds] [rules]`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis::ratelimit::RateLimiter;
use portcullis::redis_conn::RedisConnection;
use portcullis_core::ratelimit::{Algorithm, KeySpec, RequestFacts, Rule};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("redis://127.0.0.1:6379", String::as_str);
    let concurrency: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rules: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let prefix = format!("pcx_load_{}", std::process::id());
    let mut builder = RateLimiter::builder();
    for i in 0..rules.clamp(1, 3) {
        builder = builder.rule(Rule::new(
            format!("r{i}"),
            Algorithm::Gcra {
                rate: 1_000_000,
                period: Duration::from_secs(1),
                burst: 1000,
            },
            if i == 1 {
                KeySpec::subject()
            } else {
                KeySpec::ip()
            },
        ));
    }
    let limiter = builder
        .redis(RedisConnection::single(url).await?, &prefix)
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let degraded = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (limiter, done, degraded) = (limiter.clone(), done.clone(), degraded.clone());
        tasks.spawn(async move {
            let mut i = 0u32;
            while Instant::now() < deadline {
                let f = RequestFacts {
                    client_ip: Some(IpAddr::V4(Ipv4Addr::from(
                        0x0a00_0000 + t * 1000 + i % 1000,
                    ))),
                    subject: Some("load"),
                    ..Default::default()
                };
                if limiter.check(&f).await.degraded() {
                    degraded.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
                i = i.wrapping_add(1);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let n = done.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} checks in {secs:.2} s at concurrency {concurrency} with {rules} rule(s): {:.0} checks/s ({} degraded)",
        n as f64 / secs,
        degraded.load(Ordering::Relaxed)
    );
    // Every key expires by itself within milliseconds (PX = the bucket's depth).
    Ok(())
}
