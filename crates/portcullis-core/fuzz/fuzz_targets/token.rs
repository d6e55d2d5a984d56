//! Feeds arbitrary bytes to the token verifier: it must never panic, and
//! nothing but a real signature by our key may verify.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portcullis_core::{Key, KeySet, ManualClock, Validation, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut keys = KeySet::new();
        // A fixed HMAC key and an Ed25519 key, so both verification paths run.
        let hs = Key::hmac(&[0x42; 32], None).expect("hmac key").with_kid("hs");
        keys.insert(hs).expect("insert");
        let ed = Key::generate(portcullis_core::Algorithm::EdDSA)
            .expect("ed25519 key")
            .with_kid("ed");
        keys.insert(ed).expect("insert");
        Verifier::new(keys, Validation::new())
            .with_clock(Arc::new(ManualClock::at_unix_seconds(1_700_000_000)))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = verifier().verify(data);
    let _ = portcullis_core::jose::jws::decode_unverified(data);
});
