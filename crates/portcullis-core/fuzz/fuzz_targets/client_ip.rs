//! Bytes into the client-IP walk over `X-Forwarded-For` and `Forwarded`
//! behind trusted proxies: never a panic, and an untrusted peer is always
//! the client whatever it wrote.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::ratelimit::{ClientIpConfig, ForwardingHeader};

fn configs() -> &'static [ClientIpConfig; 2] {
    static CONFIGS: OnceLock<[ClientIpConfig; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let base = match ClientIpConfig::new().trusted_proxies(["10.0.0.0/8", "::1/128", "127.0.0.1/32"]) {
            Ok(c) => c,
            Err(e) => panic!("the fuzz config must parse: {e}"),
        };
        [base.clone(), base.forwarding_header(ForwardingHeader::Forwarded)]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let peer = if data.first().is_some_and(|b| b % 2 == 0) {
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
    };
    for config in configs() {
        let ip = config.client_ip(peer, Some(text), Some(text));
        // An untrusted peer is the client, whatever it wrote.
        if !config.is_trusted(peer) {
            assert_eq!(ip, peer);
        }
        let _ = config.group(ip);
    }
});
