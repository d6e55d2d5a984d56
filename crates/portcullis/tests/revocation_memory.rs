//! What the local revocation set costs in memory, counted by a global
//! allocator (exact heap bytes, not RSS): one million live revocations, and
//! the estimate the set reports (`RevocationFeedStats::bytes`, the gauge
//! `portcullis_revocation_bytes`) against the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use portcullis::stores::{RevocationPolicy, RevocationSet, RevokedKind};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_million_live_revocations_cost_under_100_bytes_each_and_the_estimate_is_honest() {
    const N: usize = 1_000_000;
    // Ids as the gateway makes them: 16 random bytes, base64url (22 chars).
    let ids: Vec<String> = (0..N).map(|i| format!("{i:0>22}")).collect();
    let set = RevocationSet::new(
        Vec::new(),
        RevocationPolicy::default(),
        Arc::new(portcullis_core::SystemClock),
    );
    let before = LIVE.load(Ordering::Relaxed);
    for (i, id) in ids.iter().enumerate() {
        let kind = if i % 2 == 0 {
            RevokedKind::Jti
        } else {
            RevokedKind::Session
        };
        set.insert(kind, id, i64::MAX);
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    let per_entry = used as f64 / N as f64;
    let reported = set.stats().bytes as f64;
    eprintln!(
        "1 M live revocations: {:.1} MB on the heap ({per_entry:.1} B/entry); the set reports {:.1} MB",
        used as f64 / 1e6,
        reported / 1e6
    );
    assert!(per_entry < 100.0, "{per_entry} bytes an entry");
    let ratio = reported / used as f64;
    assert!(
        (0.7..=1.5).contains(&ratio),
        "the reported estimate is off: {reported} vs {used} counted"
    );
}
