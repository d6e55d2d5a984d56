//! JSON Web Keys (RFC 7517, 7518 §6, RFC 8037): strict parsing into [`Key`]s
//! and export of public keys. Private members are never exported.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::algorithm::{Algorithm, KeyFamily};
use super::key::{Key, PublicParams};
use super::{b64_decode, b64_encode, der, json as strict};
use crate::error::KeyError;

/// The largest JWK or JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The most keys one JWKS may hold.
pub const MAX_JWKS_KEYS: usize = 100;

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<String>,
    n: Option<String>,
    e: Option<String>,
    p: Option<String>,
    q: Option<String>,
    dp: Option<String>,
    dq: Option<String>,
    qi: Option<String>,
    k: Option<String>,
    oth: Option<Value>,
}

fn member(value: &Option<String>, name: &str) -> Result<Vec<u8>, KeyError> {
    let text = value
        .as_deref()
        .ok_or_else(|| KeyError::Malformed(format!("JWK member `{name}` is missing")))?;
    b64_decode(text.as_bytes()).ok_or_else(|| {
        KeyError::Malformed(format!(
            "JWK member `{name}` is not base64url without padding"
        ))
    })
}

/// Parses one JWK from JSON.
pub fn key_from_jwk_json(bytes: &[u8]) -> Result<Key, KeyError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(KeyError::Malformed("JWK document is too large".into()));
    }
    let object =
        strict::parse_object(bytes).map_err(|e| KeyError::Malformed(format!("JWK JSON: {e}")))?;
    key_from_jwk(object)
}

/// Builds a key from one parsed JWK object.
pub fn key_from_jwk(object: Map<String, Value>) -> Result<Key, KeyError> {
    let raw: RawJwk = serde_json::from_value(Value::Object(object))
        .map_err(|e| KeyError::Malformed(format!("JWK: {e}")))?;
    if let Some(u) = raw.use_.as_deref()
        && u != "sig"
    {
        return Err(KeyError::Unsupported(format!(
            "JWK with `use: {u}` is not a signature key"
        )));
    }
    if let Some(ops) = &raw.key_ops
        && !ops.iter().any(|o| o == "verify" || o == "sign")
    {
        return Err(KeyError::Unsupported(
            "JWK `key_ops` allows neither sign nor verify".into(),
        ));
    }
    let pinned = match raw.alg.as_deref() {
        None => None,
        Some(name) => Some(
            Algorithm::from_name(name)
                .ok_or_else(|| KeyError::Unsupported(format!("JWK `alg` {name}")))?,
        ),
    };
    let key = match raw.kty.as_str() {
        "oct" => Key::hmac(&member(&raw.k, "k")?, pinned)?,
        "RSA" => {
            if raw.oth.is_some() {
                return Err(KeyError::Unsupported("multi-prime RSA keys".into()));
            }
            let n = member(&raw.n, "n")?;
            let e = member(&raw.e, "e")?;
            if raw.d.is_some() {
                let parts = [
                    member(&raw.d, "d")?,
                    member(&raw.p, "p")?,
                    member(&raw.q, "q")?,
                    member(&raw.dp, "dp")?,
                    member(&raw.dq, "dq")?,
                    member(&raw.qi, "qi")?,
                ];
                let der = der::sequence_of_unsigned(&[
                    &[0],
                    &n,
                    &e,
                    &parts[0],
                    &parts[1],
                    &parts[2],
                    &parts[3],
                    &parts[4],
                    &parts[5],
                ]);
                Key::rsa_from_pkcs1(&der, pinned)?
            } else {
                Key::rsa_public(&n, &e, pinned)?
            }
        }
        "EC" => {
            let family = match raw.crv.as_deref() {
                Some("P-256") => KeyFamily::P256,
                Some("P-384") => KeyFamily::P384,
                other => {
                    return Err(KeyError::Unsupported(format!(
                        "EC curve {}",
                        other.unwrap_or("(none)")
                    )));
                }
            };
            let len = if family == KeyFamily::P384 { 48 } else { 32 };
            let x = member(&raw.x, "x")?;
            let y = member(&raw.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(KeyError::Malformed(
                    "EC coordinates have the wrong length".into(),
                ));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if raw.d.is_some() {
                Key::ec_from_components(family, &member(&raw.d, "d")?, &point, pinned)?
            } else {
                Key::ec_public(family, &point, pinned)?
            }
        }
        "OKP" => {
            if raw.crv.as_deref() != Some("Ed25519") {
                return Err(KeyError::Unsupported(format!(
                    "OKP curve {} (Ed25519 is supported)",
                    raw.crv.as_deref().unwrap_or("(none)")
                )));
            }
            let x = member(&raw.x, "x")?;
            if raw.d.is_some() {
                Key::ed25519_from_components(&member(&raw.d, "d")?, &x, pinned)?
            } else {
                Key::ed25519_public(&x, pinned)?
            }
        }
        other => return Err(KeyError::Unsupported(format!("JWK `kty` {other}"))),
    };
    Ok(match raw.kid {
        Some(kid) => key.with_kid(kid),
        None => key,
    })
}

/// The `oct` JWK of a symmetric key, secret included, or `None` for an
/// asymmetric key. For writing a generated secret to a protected file only.
pub fn secret_jwk(key: &Key) -> Option<Value> {
    let secret = key.secret()?;
    Some(json!({
        "kty": "oct",
        "kid": key.kid(),
        "use": "sig",
        "alg": key.signing_algorithm().name(),
        "k": b64_encode(secret),
    }))
}

/// The public JWK of `key`, or `None` for a symmetric key (never exported).
pub fn public_jwk(key: &Key) -> Option<Value> {
    let mut jwk = match key.public_params() {
        PublicParams::Secret => return None,
        PublicParams::Rsa { n, e } => json!({"kty": "RSA", "n": b64_encode(n), "e": b64_encode(e)}),
        PublicParams::Ec { crv, x, y } => {
            json!({"kty": "EC", "crv": crv, "x": b64_encode(x), "y": b64_encode(y)})
        }
        PublicParams::Ed25519 { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": b64_encode(x)}),
    };
    if let Value::Object(map) = &mut jwk {
        map.insert("kid".into(), key.kid().into());
        map.insert("use".into(), "sig".into());
        map.insert("alg".into(), key.signing_algorithm().name().into());
    }
    Some(jwk)
}
