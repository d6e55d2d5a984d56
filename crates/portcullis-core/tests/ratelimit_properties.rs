//! Each rate-limit algorithm against a naive reference model: for any
//! request sequence at any (non-decreasing) times, the same admit/deny
//! decisions; and no panic on arbitrary, unordered times.

use std::collections::VecDeque;
use std::time::Duration;

use portcullis_core::ratelimit::algorithm::{GcraParams, fixed_window, gcra, sliding_log};
use portcullis_core::ratelimit::{Algorithm, State, apply};
use proptest::prelude::*;

/// Sorted request times (µs), starting anywhere, with gaps from 0 to 3 s.
fn times() -> impl Strategy<Value = Vec<u64>> {
    (
        0u64..4_000_000_000_000_000,
        prop::collection::vec(0u64..3_000_000, 1..200),
    )
        .prop_map(|(start, gaps)| {
            let mut t = start;
            gaps.into_iter()
                .map(|g| {
                    t += g;
                    t
                })
                .collect()
        })
}

/// Leaky-bucket meter: a level in µs of debt that drains at 1 µs per µs;
/// a request fits when the level plus one emission stays within the depth.
fn reference_gcra(times: &[u64], emission: u64, depth: u64) -> Vec<bool> {
    let mut level: u64 = 0;
    let mut last: Option<u64> = None;
    times
        .iter()
        .map(|&now| {
            if let Some(l) = last {
                level = level.saturating_sub(now - l);
            }
            last = Some(now);
            if level + emission <= depth {
                level += emission;
                true
            } else {
                false
            }
        })
        .collect()
}

/// Counts admitted stamps in `(now - period, now]`.
fn reference_log(times: &[u64], limit: u64, period: u64) -> Vec<bool> {
    let mut admitted: Vec<u64> = Vec::new();
    times
        .iter()
        .map(|&now| {
            let n = admitted.iter().filter(|&&t| t + period > now).count() as u64;
            if n < limit {
                admitted.push(now);
                true
            } else {
                false
            }
        })
        .collect()
}

/// Counts admitted stamps in the same epoch-aligned window.
fn reference_fixed(times: &[u64], limit: u64, period: u64) -> Vec<bool> {
    let mut admitted: Vec<u64> = Vec::new();
    times
        .iter()
        .map(|&now| {
            let n = admitted
                .iter()
                .filter(|&&t| t / period == now / period)
                .count() as u64;
            if n < limit {
                admitted.push(now);
                true
            } else {
                false
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn gcra_matches_leaky_bucket(times in times(), rate in 1u64..50, period_ms in 1u64..5_000, burst in 1u64..30) {
        let p = GcraParams::new(rate, Duration::from_millis(period_ms), burst);
        let mut tat = 0;
        let got: Vec<bool> = times.iter().map(|&t| gcra(&mut tat, &p, t, true).allowed).collect();
        prop_assert_eq!(got, reference_gcra(&times, p.emission_us, p.tolerance_us));
    }

    #[test]
    fn sliding_log_matches_reference(times in times(), limit in 1u64..20, period_ms in 1u64..5_000) {
        let mut log = VecDeque::new();
        let period = period_ms * 1000;
        let got: Vec<bool> = times.iter().map(|&t| sliding_log(&mut log, limit, period, t, true).allowed).collect();
        prop_assert!(log.len() as u64 <= limit);
        prop_assert_eq!(got, reference_log(&times, limit, period));
    }

    #[test]
    fn fixed_window_matches_reference(times in times(), limit in 1u64..20, period_ms in 1u64..5_000) {
        let mut s = (0, 0);
        let period = period_ms * 1000;
        let got: Vec<bool> = times.iter().map(|&t| fixed_window(&mut s, limit, period, t, true).allowed).collect();
        prop_assert_eq!(got, reference_fixed(&times, limit, period));
    }

    #[test]
    fn peek_predicts_and_never_changes_state(times in times(), limit in 1u64..10, which in 0u8..3) {
        let algorithm = match which {
            0 => Algorithm::Gcra { rate: limit, period: Duration::from_secs(1), burst: limit },
            1 => Algorithm::SlidingLog { limit, period: Duration::from_secs(1) },
            _ => Algorithm::FixedWindow { limit, period: Duration::from_secs(1) },
        };
        let mut state = State::fresh(&algorithm);
        for &t in &times {
            let before = state.clone();
            let peeked = apply(&algorithm, &mut state, t, false);
            match (&before, &state) {
                // A peek may drop stamps that left the window, nothing else.
                (State::Log(b), State::Log(a)) => prop_assert!(b.iter().skip(b.len() - a.len()).eq(a.iter())),
                _ => prop_assert_eq!(&before, &state),
            }
            prop_assert_eq!(apply(&algorithm, &mut state, t, false), peeked);
            let real = apply(&algorithm, &mut state, t, true);
            prop_assert_eq!(peeked, real);
        }
    }

    #[test]
    fn unordered_times_never_panic(times in prop::collection::vec(any::<u64>(), 1..100), limit in 1u64..10) {
        for algorithm in [
            Algorithm::Gcra { rate: limit, period: Duration::from_secs(1), burst: limit },
            Algorithm::SlidingLog { limit, period: Duration::from_secs(1) },
            Algorithm::FixedWindow { limit, period: Duration::from_secs(1) },
        ] {
            let mut state = State::fresh(&algorithm);
            for &t in &times {
                let d = apply(&algorithm, &mut state, t, true);
                prop_assert!(d.remaining < d.limit || (!d.allowed && d.remaining == 0));
                if let State::Log(log) = &state {
                    prop_assert!(log.len() as u64 <= limit);
                }
            }
        }
    }
}

/// The `q` and `w` a rule's `RateLimit-Policy` item advertises.
fn advertised(algorithm: Algorithm) -> (u64, u64) {
    use portcullis_core::ratelimit::{Decision, KeySpec, Rule, RuleReport, response_headers};
    let rule = Rule::new("r", algorithm, KeySpec::ip());
    let report = RuleReport {
        rule: &rule,
        decision: Decision::unknown_allowed(algorithm.quota()),
    };
    let fields = response_headers(&[report], 0, false);
    let policy = &fields
        .iter()
        .find(|(n, _)| *n == "ratelimit-policy")
        .unwrap()
        .1;
    let param = |p: &str| -> u64 {
        policy
            .split(';')
            .find_map(|kv| kv.strip_prefix(p))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (param("q="), param("w="))
}

proptest! {
    /// Issue 12 item 11: a GCRA policy never advertises more than the rule
    /// sustains (`q / w <= rate / period`), and never less than one burst.
    #[test]
    fn gcra_policy_never_overstates_the_sustained_rate(
        rate in 1u64..5_000, period_ms in 1u64..100_000, burst in 1u64..5_000,
    ) {
        let period = Duration::from_millis(period_ms);
        prop_assume!(period.as_micros() >= u128::from(rate));
        let algorithm = Algorithm::Gcra { rate, period, burst };
        let (q, w) = advertised(algorithm);
        let emission_us = u128::from(GcraParams::new(rate, period, burst).emission_us);
        prop_assert!(w >= 1);
        prop_assert!(u128::from(q) * emission_us <= u128::from(w) * 1_000_000,
            "q={q} w={w} for {rate}/{period_ms}ms burst {burst}");
        prop_assert!(q >= burst, "q={q} hides the burst {burst}");
    }
}

#[test]
fn gcra_policy_examples() {
    let gcra = |rate, secs, burst| Algorithm::Gcra {
        rate,
        period: Duration::from_secs(secs),
        burst,
    };
    // 10/s with bursts of 20: 20 per 2 s, not 20 per second.
    assert_eq!(advertised(gcra(10, 1, 20)), (20, 2));
    assert_eq!(advertised(gcra(10, 1, 10)), (10, 1));
    // 100/min with bursts of 5: 5 per 3 s.
    assert_eq!(advertised(gcra(100, 60, 5)), (5, 3));
    assert_eq!(
        advertised(Algorithm::FixedWindow {
            limit: 1000,
            period: Duration::from_secs(3600)
        }),
        (1000, 3600)
    );
}
