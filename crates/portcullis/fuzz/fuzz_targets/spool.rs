//! The audit spool's reader: arbitrary bytes as a spool file (a torn
//! append, a foreign file, a record whose checksum holds but whose payload
//! is anything) are opened, recovered and drained. Never a panic; the
//! spool always ends empty or stops on an error, never loops; the payload
//! decoder alone never panics either.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use portcullis::audit::spool::{Spool, decode_payload};

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_payload(data);

    let dir = scratch();
    let path = dir.join("audit.spool");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let Ok(spool) = Spool::open(&path) else {
            return;
        };
        // Each record read moves the position forward: a bounded drain.
        for _ in 0..=data.len() {
            match spool.peek().await {
                Ok(Some((_, next))) => {
                    if spool.advance(next).await.is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
});
