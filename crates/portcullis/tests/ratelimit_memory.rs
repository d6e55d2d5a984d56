//! The memory backend's footprint, measured with a counting allocator:
//! one million keys must fit in 150 MB; idle keys are swept.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use portcullis::ratelimit::{MemoryLimiter, RuleSet};
use portcullis_core::ratelimit::{Algorithm, KeySpec, RequestFacts, Rule};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocation count is process-wide: one measuring test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn memory_one_million_keys_fit_and_idle_keys_are_swept() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rules: Arc<[Rule]> = vec![Rule::new(
        "per_ip",
        Algorithm::Gcra {
            rate: 10,
            period: Duration::from_secs(1),
            burst: 20,
        },
        KeySpec::ip(),
    )]
    .into();
    let before = LIVE.load(Ordering::Relaxed);
    let limiter = MemoryLimiter::new(rules, 2_000_000);
    let now = 1_800_000_000_000_000u64;
    for i in 0..1_000_000u32 {
        let f = RequestFacts {
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
            ..Default::default()
        };
        assert!(
            limiter
                .check(&f, RuleSet::ALL, now, true)
                .primary()
                .is_some()
        );
    }
    assert_eq!(limiter.len(), 1_000_000);
    let used = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "1 000 000 keys: {used} bytes, {} bytes/key",
        used / 1_000_000
    );
    assert!(
        used <= 150 * 1024 * 1024,
        "{used} bytes for one million keys"
    );

    // A second later every bucket is full again: a sweep drops them all.
    limiter.sweep(now + 1_000_000);
    assert_eq!(limiter.len(), 0);
}

/// Issue 12 item 10: memory is bounded in bytes, not only in keys. A
/// sliding log holds a stamp per admitted request, so 1 000 keys of 3 000
/// stamps would take 32 MB; the default bound for 65 536 keys is 16 MiB.
#[test]
fn sliding_logs_are_bounded_in_bytes_not_only_in_keys() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rules: Arc<[Rule]> = vec![Rule::new(
        "per_ip",
        Algorithm::SlidingLog {
            limit: 3_000,
            period: Duration::from_secs(3600),
        },
        KeySpec::ip(),
    )]
    .into();
    let before = LIVE.load(Ordering::Relaxed);
    let limiter = MemoryLimiter::new(rules, 64 * 1024);
    let now = 1_800_000_000_000_000u64;
    for k in 0..1_000u32 {
        let f = RequestFacts {
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k))),
            ..Default::default()
        };
        for i in 0..3_000u64 {
            limiter.check(&f, RuleSet::ALL, now + i, true);
        }
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("1 000 logs of 3 000 stamps: {used} bytes held");
    assert!(
        used <= 18 * 1024 * 1024,
        "{used} bytes held for a 16 MiB bound"
    );
}
