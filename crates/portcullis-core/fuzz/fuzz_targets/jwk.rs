//! Feeds arbitrary bytes to the JWK and JWKS parsers: typed errors, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::KeySet;
use portcullis_core::jose::jwk::key_from_jwk_json;

fuzz_target!(|data: &[u8]| {
    let _ = key_from_jwk_json(data);
    if let Ok((set, _warnings)) = KeySet::from_jwks_json(data) {
        // Export must never fail or leak for whatever was accepted.
        let _ = set.public_jwks();
    }
    let _ = portcullis_core::Key::from_pem(data, None);
});
