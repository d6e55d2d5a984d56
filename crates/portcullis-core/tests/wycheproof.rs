//! Project Wycheproof signature vectors run through our key loaders and
//! `Key::verify`: every "valid" vector verifies, every "invalid" one is
//! rejected, "acceptable" ones are counted. A key refused at load is allowed
//! only for a documented policy reason, and its vectors are counted as skipped.

use portcullis_core::{Algorithm, ErrorCode, Key, KeyError, KeyFamily};
use wycheproof::TestResult;

/// Outcome counts of one test set.
#[derive(Debug, Default)]
struct Tally {
    valid_verified: usize,
    invalid_rejected: usize,
    acceptable_verified: usize,
    acceptable_rejected: usize,
    /// Vectors whose group key our policy refuses (e.g. RSA < 2048 bits).
    skipped_by_policy: usize,
    failures: Vec<String>,
}

impl Tally {
    fn ran(&self) -> usize {
        self.valid_verified
            + self.invalid_rejected
            + self.acceptable_verified
            + self.acceptable_rejected
    }

    fn record(&mut self, tc_id: usize, comment: &str, expected: TestResult, verified: bool) {
        match (expected, verified) {
            (TestResult::Valid, true) => self.valid_verified += 1,
            (TestResult::Invalid, false) => self.invalid_rejected += 1,
            (TestResult::Acceptable, true) => self.acceptable_verified += 1,
            (TestResult::Acceptable, false) => self.acceptable_rejected += 1,
            (TestResult::Valid, false) => self
                .failures
                .push(format!("tc {tc_id} ({comment}): valid signature rejected")),
            (TestResult::Invalid, true) => self.failures.push(format!(
                "tc {tc_id} ({comment}): invalid signature accepted"
            )),
        }
    }

    /// Asserts no vector went the wrong way and at least `min` ran.
    fn check(&self, name: &str, min: usize) {
        assert!(
            self.failures.is_empty(),
            "{name}: {} failures:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        assert!(
            self.ran() >= min,
            "{name}: only {} vectors ran ({self:?})",
            self.ran()
        );
        eprintln!("{name}: {self:?}");
    }
}

/// Whether a load error is one our documented key policy produces.
fn is_policy_refusal(e: &KeyError) -> bool {
    matches!(e, KeyError::WeakRsaKey(_) | KeyError::Unsupported(_))
}

/// Runs one group's vectors against `key`, or counts them as skipped when the
/// key was refused by policy (any other load error fails the test).
fn run_group<'a>(
    tally: &mut Tally,
    key: Result<Key, KeyError>,
    alg: Algorithm,
    tests: impl Iterator<Item = (usize, &'a str, TestResult, &'a [u8], &'a [u8])>,
) {
    let key = match key {
        Ok(key) => key,
        Err(e) => {
            assert!(
                is_policy_refusal(&e),
                "key refused for a non-policy reason: {e:?}"
            );
            tally.skipped_by_policy += tests.count();
            return;
        }
    };
    for (tc_id, comment, result, msg, sig) in tests {
        let outcome = key.verify(alg, msg, sig);
        if let Err(e) = &outcome {
            // A bad signature is only ever reported as such.
            assert_eq!(e.code(), ErrorCode::InvalidSignature, "tc {tc_id}: {e:?}");
        }
        tally.record(tc_id, comment, result, outcome.is_ok());
    }
}

// ---------------------------------------------------------------- ECDSA

fn ecdsa_set(name: wycheproof::ecdsa::TestName, family: KeyFamily, alg: Algorithm) -> Tally {
    let set = wycheproof::ecdsa::TestSet::load(name).expect("wycheproof set loads");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        // The SPKI and the raw point must give the same key.
        let from_spki = Key::from_spki(&group.der, Some(alg));
        let from_point = Key::ec_public(family, &group.key.key, Some(alg));
        if let (Ok(a), Ok(b)) = (&from_spki, &from_point) {
            assert_eq!(a.thumbprint(), b.thumbprint());
            assert_eq!(a.family(), family);
        }
        assert_eq!(from_spki.is_ok(), from_point.is_ok());
        let tests = group.tests.iter().map(|t| {
            (
                t.tc_id,
                t.comment.as_str(),
                t.result,
                t.msg.as_slice(),
                t.sig.as_slice(),
            )
        });
        run_group(&mut tally, from_spki, alg, tests);
    }
    tally
}

#[test]
fn ecdsa_p256_sha256_p1363() {
    let t = ecdsa_set(
        wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363,
        KeyFamily::P256,
        Algorithm::ES256,
    );
    assert_eq!(t.skipped_by_policy, 0, "every P-256 key is accepted");
    assert!(t.valid_verified > 100);
    t.check("ecdsa_secp256r1_sha256_p1363", 200);
}

#[test]
fn ecdsa_p384_sha384_p1363() {
    let t = ecdsa_set(
        wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363,
        KeyFamily::P384,
        Algorithm::ES384,
    );
    assert_eq!(t.skipped_by_policy, 0, "every P-384 key is accepted");
    assert!(t.valid_verified > 100);
    t.check("ecdsa_secp384r1_sha384_p1363", 200);
}

/// JWS ECDSA signatures are r||s only: every DER signature from the ASN.1
/// sets, valid or not, must be rejected.
#[test]
fn ecdsa_der_signatures_are_never_accepted() {
    for (name, family, alg) in [
        (
            wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256,
            KeyFamily::P256,
            Algorithm::ES256,
        ),
        (
            wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384,
            KeyFamily::P384,
            Algorithm::ES384,
        ),
    ] {
        let set = wycheproof::ecdsa::TestSet::load(name).expect("wycheproof set loads");
        let mut rejected = 0;
        let mut valid_der = 0;
        for group in &set.test_groups {
            let key = Key::ec_public(family, &group.key.key, None).expect("curve point loads");
            for t in &group.tests {
                let err = key
                    .verify(alg, &t.msg, &t.sig)
                    .expect_err("a DER ECDSA signature is not a JWS signature");
                assert_eq!(err.code(), ErrorCode::InvalidSignature);
                rejected += 1;
                if t.result == TestResult::Valid {
                    valid_der += 1;
                }
            }
        }
        assert!(rejected > 200, "{name:?}: {rejected}");
        assert!(valid_der > 50, "{name:?}: {valid_der}");
    }
}

/// A P1363 set for another hash must not verify under our fixed hash.
#[test]
fn ecdsa_p256_sha512_vectors_do_not_verify_as_es256() {
    let set =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha512P1363)
            .expect("wycheproof set loads");
    let mut checked = 0;
    for group in &set.test_groups {
        let key = Key::from_spki(&group.der, None).expect("P-256 key loads");
        for t in group.tests.iter().filter(|t| t.result == TestResult::Valid) {
            assert!(key.verify(Algorithm::ES256, &t.msg, &t.sig).is_err());
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}

// ---------------------------------------------------------------- RSA PKCS#1 v1.5

fn rsa_pkcs1_set(name: wycheproof::rsa_pkcs1_verify::TestName, alg: Algorithm) -> Tally {
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(name).expect("wycheproof set loads");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let from_spki = Key::from_spki(&group.der, Some(alg));
        let from_parts = Key::rsa_public(&group.key.n, &group.key.e, Some(alg));
        if let (Ok(a), Ok(b)) = (&from_spki, &from_parts) {
            assert_eq!(a.thumbprint(), b.thumbprint());
        }
        assert_eq!(from_spki.is_ok(), from_parts.is_ok());
        if group.key_size < 2048 {
            assert!(
                matches!(from_spki, Err(KeyError::WeakRsaKey(bits)) if bits == group.key_size),
                "a {}-bit key must be refused as weak",
                group.key_size
            );
        }
        let tests = group.tests.iter().map(|t| {
            (
                t.tc_id,
                t.comment.as_str(),
                t.result,
                t.msg.as_slice(),
                t.sig.as_slice(),
            )
        });
        run_group(&mut tally, from_spki, alg, tests);
    }
    tally
}

#[test]
fn rsa_pkcs1_2048_sha256() {
    let t = rsa_pkcs1_set(
        wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256,
        Algorithm::RS256,
    );
    assert_eq!(t.skipped_by_policy, 0);
    assert!(t.valid_verified >= 9, "{t:?}");
    t.check("rsa_signature_2048_sha256", 250);
}

#[test]
fn rsa_pkcs1_larger_keys_and_hashes() {
    use wycheproof::rsa_pkcs1_verify::TestName as N;
    for (name, alg) in [
        (N::Rsa3072Sha256, Algorithm::RS256),
        (N::Rsa4096Sha256, Algorithm::RS256),
        (N::Rsa8192Sha256, Algorithm::RS256),
        (N::Rsa2048Sha384, Algorithm::RS384),
        (N::Rsa3072Sha384, Algorithm::RS384),
        (N::Rsa4096Sha384, Algorithm::RS384),
        (N::Rsa2048Sha512, Algorithm::RS512),
        (N::Rsa3072Sha512, Algorithm::RS512),
        (N::Rsa4096Sha512, Algorithm::RS512),
        (N::Rsa8192Sha512, Algorithm::RS512),
    ] {
        let t = rsa_pkcs1_set(name, alg);
        assert_eq!(t.skipped_by_policy, 0, "{name:?}");
        assert!(t.valid_verified >= 7, "{name:?}: {t:?}");
        t.check(&format!("{name:?}"), 250);
    }
}

/// PKCS#1 v1.5 signatures must not verify as PSS under the same key.
#[test]
fn rsa_pkcs1_signatures_do_not_verify_as_pss() {
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(
        wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256,
    )
    .expect("wycheproof set loads");
    let mut checked = 0;
    for group in &set.test_groups {
        let key = Key::from_spki(&group.der, None).expect("2048-bit key");
        for t in group.tests.iter().filter(|t| t.result == TestResult::Valid) {
            assert!(key.verify(Algorithm::RS256, &t.msg, &t.sig).is_ok());
            let err = key
                .verify(Algorithm::PS256, &t.msg, &t.sig)
                .expect_err("PKCS#1 v1.5 is not PSS");
            assert_eq!(err.code(), ErrorCode::InvalidSignature);
            checked += 1;
        }
    }
    assert!(checked >= 9);
}

// ---------------------------------------------------------------- RSA-PSS

fn rsa_pss_set(name: wycheproof::rsa_pss_verify::TestName, alg: Algorithm) -> Tally {
    let set = wycheproof::rsa_pss_verify::TestSet::load(name).expect("wycheproof set loads");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let from_spki = Key::from_spki(&group.der, Some(alg));
        let from_parts = Key::rsa_public(&group.key.n, &group.key.e, Some(alg));
        if let (Ok(a), Ok(b)) = (&from_spki, &from_parts) {
            assert_eq!(a.thumbprint(), b.thumbprint());
        }
        let tests = group.tests.iter().map(|t| {
            (
                t.tc_id,
                t.comment.as_str(),
                t.result,
                t.msg.as_slice(),
                t.sig.as_slice(),
            )
        });
        run_group(&mut tally, from_spki, alg, tests);
    }
    tally
}

/// The set matching JWS PS256: SHA-256, MGF1-SHA-256, 32-byte salt.
#[test]
fn rsa_pss_2048_sha256_mgf1_32() {
    let t = rsa_pss_set(
        wycheproof::rsa_pss_verify::TestName::RsaPss2048Sha256Mgf1SaltLen32,
        Algorithm::PS256,
    );
    assert_eq!(t.skipped_by_policy, 0);
    assert!(t.valid_verified > 50, "{t:?}");
    t.check("rsa_pss_2048_sha256_mgf1_32", 100);
}

#[test]
fn rsa_pss_other_jws_profiles() {
    use wycheproof::rsa_pss_verify::TestName as N;
    for (name, alg) in [
        (N::RsaPss3072Sha256Mgf1SaltLen32, Algorithm::PS256),
        (N::RsaPss4096Sha256Mgf1SaltLen32, Algorithm::PS256),
        (N::RsaPss2048Sha384Mgf1SaltLen48, Algorithm::PS384),
        (N::RsaPss4096Sha384Mgf1SaltLen48, Algorithm::PS384),
        (N::RsaPss4096Sha512Mgf1SaltLen64, Algorithm::PS512),
    ] {
        let t = rsa_pss_set(name, alg);
        assert_eq!(t.skipped_by_policy, 0, "{name:?}");
        assert!(t.valid_verified > 50, "{name:?}: {t:?}");
        t.check(&format!("{name:?}"), 100);
    }
}

/// JWS fixes PSS parameters (RFC 7518 §3.5: MGF1 with the same hash, salt as
/// long as the hash). Signatures valid under other parameters must not verify
/// under any PS* algorithm; those with exactly the JWS parameters must.
#[test]
fn rsa_pss_only_the_jws_parameters_verify() {
    let set =
        wycheproof::rsa_pss_verify::TestSet::load(wycheproof::rsa_pss_verify::TestName::RsaPssmisc)
            .expect("wycheproof set loads");
    use wycheproof::HashFunction as H;
    let jws_alg = |hash: H, mgf: Option<H>, salt: usize| match (hash, mgf, salt) {
        (H::Sha2_256, Some(H::Sha2_256), 32) => Some(Algorithm::PS256),
        (H::Sha2_384, Some(H::Sha2_384), 48) => Some(Algorithm::PS384),
        (H::Sha2_512, Some(H::Sha2_512), 64) => Some(Algorithm::PS512),
        _ => None,
    };
    let (mut accepted, mut refused) = (0, 0);
    for group in &set.test_groups {
        let key = Key::from_spki(&group.der, None).expect("2048-bit key");
        let expected = jws_alg(group.hash, group.mgf_hash, group.salt_size);
        for t in &group.tests {
            assert_eq!(
                t.result,
                TestResult::Valid,
                "rsa_pss_misc holds valid vectors"
            );
            for alg in [Algorithm::PS256, Algorithm::PS384, Algorithm::PS512] {
                let ok = key.verify(alg, &t.msg, &t.sig).is_ok();
                assert_eq!(
                    ok,
                    expected == Some(alg),
                    "tc {} ({:?}, mgf {:?}, salt {}) under {alg}",
                    t.tc_id,
                    group.hash,
                    group.mgf_hash,
                    group.salt_size
                );
                if ok {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
    }
    assert!(accepted >= 3, "{accepted}");
    assert!(refused > 300, "{refused}");
}

// ---------------------------------------------------------------- Ed25519

#[test]
fn ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519)
        .expect("wycheproof set loads");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let from_spki = Key::from_spki(&group.der, None);
        let from_raw = Key::ed25519_public(&group.key.pk, None);
        if let (Ok(a), Ok(b)) = (&from_spki, &from_raw) {
            assert_eq!(a.thumbprint(), b.thumbprint());
            assert_eq!(a.family(), KeyFamily::Ed25519);
        }
        assert_eq!(from_spki.is_ok(), from_raw.is_ok());
        let tests = group.tests.iter().map(|t| {
            (
                t.tc_id,
                t.comment.as_str(),
                t.result,
                t.msg.as_slice(),
                t.sig.as_slice(),
            )
        });
        run_group(&mut tally, from_raw, Algorithm::EdDSA, tests);
    }
    assert_eq!(tally.skipped_by_policy, 0);
    assert!(tally.valid_verified > 80, "{tally:?}");
    tally.check("ed25519", 140);
}

/// Keys of one family never verify another family's algorithm.
#[test]
fn wycheproof_keys_refuse_foreign_algorithms() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519)
        .expect("wycheproof set loads");
    let group = &set.test_groups[0];
    let key = Key::ed25519_public(&group.key.pk, None).expect("Ed25519 key");
    let t = group
        .tests
        .iter()
        .find(|t| t.result == TestResult::Valid)
        .expect("a valid vector");
    for alg in Algorithm::ALL {
        let r = key.verify(alg, &t.msg, &t.sig);
        if alg == Algorithm::EdDSA {
            assert!(r.is_ok());
        } else {
            assert_eq!(
                r.expect_err("foreign algorithm").code(),
                ErrorCode::UnsupportedAlgorithm,
                "{alg}"
            );
        }
    }
}

/// The skip path itself: a group whose key our policy refuses (a 1024-bit RSA
/// key) counts its vectors as skipped instead of running them.
#[test]
fn weak_group_keys_are_skipped_by_policy_only() {
    let weak = Key::from_pem(include_bytes!("data/rsa1024_spki.pem"), None);
    assert_eq!(weak.as_ref().err(), Some(&KeyError::WeakRsaKey(1024)));
    let mut tally = Tally::default();
    let vectors = [(1, "a", TestResult::Valid, &b"m"[..], &[0u8; 128][..]); 3];
    run_group(&mut tally, weak, Algorithm::RS256, vectors.into_iter());
    assert_eq!(tally.skipped_by_policy, 3);
    assert_eq!(tally.ran(), 0);
    assert!(is_policy_refusal(&KeyError::WeakRsaKey(1024)));
    assert!(!is_policy_refusal(&KeyError::Malformed("x".into())));
}
