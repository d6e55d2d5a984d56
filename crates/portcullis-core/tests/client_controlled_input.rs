//! What a client controls — the forwarding headers it sends, the account
//! names it tries, the paths it requests — must neither pick its rate-limit
//! key nor reach an alert receiver as markup (issue 12 items 6, 7 and 22).

use std::net::IpAddr;

use portcullis_core::ratelimit::ClientIpConfig;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Trusts the proxies in 10.0.0.0/8, with the default header (`xff`).
fn behind_nginx() -> ClientIpConfig {
    ClientIpConfig::new()
        .trusted_proxies(["10.0.0.0/8"])
        .unwrap()
}

/// Item 6: nginx appends only `X-Forwarded-For` and passes a client's
/// `Forwarded` through untouched; that header must not choose the key.
#[test]
fn a_client_sent_forwarded_header_is_ignored_behind_an_xff_proxy() {
    let c = behind_nginx();
    let peer = ip("10.0.0.1");
    for spoof in ["for=6.6.6.6", "for=\"[2001:db8::66]\"", "for=unknown"] {
        assert_eq!(
            c.client_key(peer, Some(spoof), Some("203.0.113.9")),
            ip("203.0.113.9"),
            "{spoof}"
        );
    }
}

/// Item 7: whatever a client writes left of the hop its proxy appended
/// (garbage, padding past 8 KiB, hundreds of hops) must not move it into
/// the proxy's shared bucket.
#[test]
fn client_padding_left_of_its_hop_cannot_select_the_proxy_bucket() {
    let c = behind_nginx();
    let peer = ip("10.0.0.1");
    let client = ip("203.0.113.9");
    for padding in [
        "garbage".to_owned(),
        "1.1.1.1, ".repeat(2_000),
        "x".repeat(20_000),
        "10.0.0.2, ".repeat(500),
        "unknown, _hidden, [::1".to_owned(),
    ] {
        let xff = format!("{padding}, 203.0.113.9, 10.0.0.5");
        assert_eq!(
            c.client_key(peer, None, Some(&xff)),
            client,
            "padding {}",
            &padding[..padding.len().min(20)]
        );
    }
    // Empty list elements are allowed by the list syntax and skipped.
    assert_eq!(
        c.client_key(peer, None, Some("203.0.113.9, , 10.0.0.5,")),
        client
    );
}

/// Item 22: account names and paths are the attacker's text; in a Slack
/// message `<!channel>` pings everyone and `<url|text>` renders a link.
#[test]
fn slack_alerts_escape_attacker_text() {
    use portcullis_core::anomaly::webhook::{PayloadFormat, payload};
    use portcullis_core::anomaly::{AnomalyEvent, DetectorKind, SampleRequest};
    let event = AnomalyEvent {
        detector: DetectorKind::AuthFailures,
        key: "account:<!channel> & <https://evil.example|reset your password>".into(),
        count: 10,
        window_secs: 60.0,
        first_seen_ms: 1,
        last_seen_ms: 2,
        sample: SampleRequest::new("POST", "/login?<!here>", "curl/8"),
    };
    let body: serde_json::Value =
        serde_json::from_slice(&payload(&event, PayloadFormat::Slack)).unwrap();
    let text = body["text"].as_str().unwrap();
    for raw in ["<!channel>", "<!here>", "<https://", "& <"] {
        assert!(!text.contains(raw), "{raw} reached Slack unescaped: {text}");
    }
    assert!(text.contains("&lt;!channel&gt; &amp; &lt;https://evil.example|reset"));
    assert!(text.contains("/login?&lt;!here&gt;"));
}

/// Item 22: an attempted account name is the attacker's text and goes into
/// detector keys and distinct-count members: its length is capped (long
/// names are hashed), as the rate limiter does for key values.
#[test]
fn long_account_names_are_hashed_in_detection_keys() {
    use portcullis_core::anomaly::DetectionKey;
    let long = "a".repeat(100_000);
    let key = DetectionKey::Account(&long).render();
    assert!(key.len() <= 8 + 1 + 64, "{} bytes", key.len());
    assert!(key.starts_with("account:#"));
    let other = format!("{}b", "a".repeat(99_999));
    assert_ne!(key, DetectionKey::Account(&other).render());
    assert_eq!(DetectionKey::Account("alice").render(), "account:alice");
}
