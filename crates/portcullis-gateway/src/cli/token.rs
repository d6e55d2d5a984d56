//! `portcullis token`: issue an access token, inspect one unverified, verify one against a JWKS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use portcullis_core::jose::json::parse_object;
use portcullis_core::jose::jws::decode_unverified;
use portcullis_core::jwt::issue::RESERVED_CLAIMS;
use portcullis_core::opaque::fill_random;
use portcullis_core::{
    AccessRequest, Algorithm, Clock, IssuerConfig, KeySet, ManualClock, SecretHasher, SystemClock,
    TokenError, TokenIssuer, Validation, Verifier,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::duration::parse_duration;
use super::error::Input;
use super::{CliError, console};
use crate::keys as keyfile;

/// Arguments of `token issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Private signing key: PEM (PKCS#8, PKCS#1, SEC1) or a private JWK; PEM kid = file stem.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Subject (`sub`).
    #[arg(long, value_name = "SUBJECT")]
    pub sub: String,
    /// Issuer (`iss`).
    #[arg(long, value_name = "ISSUER", default_value = "portcullis")]
    pub iss: String,
    /// Audience (`aud`); repeat for several.
    #[arg(long, value_name = "AUDIENCE")]
    pub aud: Vec<String>,
    /// Lifetime, e.g. 30s, 15m, 2h, 7d, 2w.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Extra claim NAME=VALUE; VALUE is JSON if it parses, else a string. Repeatable.
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,
    /// Signing algorithm [default: the key's `alg` in its JWK or <stem>.jwk.json, else by key type].
    #[arg(long, value_name = "ALG")]
    pub alg: Option<Algorithm>,
}

/// Arguments of `token inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The compact token, or - to read it from stdin.
    #[arg(value_name = "TOKEN", allow_hyphen_values = true)]
    pub token: String,
}

/// Arguments of `token verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// JWKS file, e.g. the output of `portcullis keys jwks DIR`.
    #[arg(long, value_name = "FILE")]
    pub jwks: PathBuf,
    /// Trusted issuer; repeat to trust several.
    #[arg(long, value_name = "ISSUER", required = true)]
    pub iss: Vec<String>,
    /// Accepted audience; repeat to accept several.
    #[arg(long, value_name = "AUDIENCE", required = true)]
    pub aud: Vec<String>,
    /// Allowed algorithm; repeat for several [default: any the key accepts].
    #[arg(long = "alg", value_name = "ALG")]
    pub algs: Vec<Algorithm>,
    /// Verify as of this time, in seconds since the Unix epoch [default: now].
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub now: Option<u64>,
    /// Clock skew tolerated on exp, nbf and iat, in seconds [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub leeway: Option<u64>,
    /// The compact token, or - to read it from stdin.
    #[arg(value_name = "TOKEN", allow_hyphen_values = true)]
    pub token: String,
}

/// `token issue`: prints a signed access token (no refresh token).
pub fn issue(args: &IssueArgs) -> Result<(), CliError> {
    if args.sub.is_empty() {
        return Err(CliError::Usage(
            "--sub is empty; give the subject the token speaks for".into(),
        ));
    }
    let mut claims = Map::new();
    for (name, value) in &args.claims {
        if claims.insert(name.clone(), value.clone()).is_some() {
            return Err(CliError::Usage(format!(
                "--claim {name} is given twice; give each claim once (use a JSON array for several values)"
            )));
        }
    }
    let key = keyfile::load(&args.key, args.alg)?;
    if !key.can_sign() {
        return Err(CliError::Usage(format!(
            "`{}` holds a public key; pass the private key (the .pem written by `portcullis keys generate`)",
            args.key.display()
        )));
    }
    let mut keys = KeySet::new();
    keys.insert(key)
        .map_err(|e| CliError::key(format!("cannot use `{}`", args.key.display()), e))?;
    let config = IssuerConfig {
        audience: args.aud.clone(),
        access_ttl: args.ttl,
        ..IssuerConfig::new(args.iss.as_str())
    };
    let issuer = TokenIssuer::new(keys, config, new_hasher()?);
    let request = AccessRequest {
        subject: args.sub.clone(),
        claims,
        ..AccessRequest::default()
    };
    let issued = issuer.issue_access(&request)?;
    console::print(&issued.token)
}

/// A refresh-token hasher with a random pepper; only access tokens are
/// issued here, so it is never used, but the issuer needs one.
pub fn new_hasher() -> Result<SecretHasher, CliError> {
    let mut pepper = [0u8; 32];
    fill_random(&mut pepper).map_err(|e| CliError::key("cannot draw random bytes", e))?;
    SecretHasher::new(&pepper).map_err(|e| CliError::key("cannot create the hasher", e))
}

/// What `token inspect` prints.
#[derive(Serialize)]
struct Inspection {
    verified: bool,
    warning: &'static str,
    header: Value,
    claims: Value,
}

const UNVERIFIED: &str = "UNVERIFIED: signature and claims were not checked";

/// `token inspect`: header and claims, decoded without any verification.
pub fn inspect(args: &InspectArgs) -> Result<(), CliError> {
    let token = console::read_token(&args.token)?;
    let (header, payload) = decode_unverified(&token).map_err(CliError::Rejected)?;
    let claims = parse_object(&payload)
        .map_err(|_| CliError::Rejected(TokenError::Malformed("claims are not a JSON object")))?;
    console::warn(UNVERIFIED);
    console::print_json(&Inspection {
        verified: false,
        warning: UNVERIFIED,
        header,
        claims: Value::Object(claims),
    })
}

/// `token verify`: prints the principal (exit 0) or the rejection (exit 1).
pub fn verify(args: &VerifyArgs) -> Result<(), CliError> {
    let keys = load_jwks(&args.jwks)?;
    let token = console::read_token(&args.token)?;
    let mut validation = Validation::new();
    for iss in &args.iss {
        validation = validation.with_issuer(iss.as_str());
    }
    for aud in &args.aud {
        validation = validation.with_audience(aud.as_str());
    }
    if !args.algs.is_empty() {
        validation = validation.with_algorithms(args.algs.iter().copied().collect());
    }
    if let Some(leeway) = args.leeway {
        validation = validation.with_leeway(Duration::from_secs(leeway));
    }
    let clock: Arc<dyn Clock> = match args.now {
        Some(now) => Arc::new(ManualClock::at_unix_seconds(now)),
        None => Arc::new(SystemClock),
    };
    let verifier = Verifier::new(keys, validation).with_clock(clock);
    let principal = verifier.verify(&token).map_err(CliError::Rejected)?;
    console::print_json(&principal)
}

/// Loads a JWKS file; unusable entries are warned about, an empty result is an error.
fn load_jwks(path: &std::path::Path) -> Result<KeySet, CliError> {
    let bytes = console::read_file(path, Input::Jwks)?;
    let (keys, warnings) = KeySet::from_jwks_json(&bytes).map_err(|source| CliError::Jwks {
        path: path.to_path_buf(),
        source,
    })?;
    for w in &warnings {
        let kid = match &w.kid {
            Some(kid) => format!("kid {kid}"),
            None => "no kid".to_owned(),
        };
        console::warn(format_args!(
            "skipping JWKS entry #{} ({kid}): {}",
            w.index, w.error
        ));
    }
    if keys.is_empty() {
        return Err(CliError::NoUsableKeys {
            path: path.to_path_buf(),
            skipped: warnings.len(),
        });
    }
    Ok(keys)
}

/// Parses `NAME=VALUE`: VALUE as JSON when it parses, else as a string;
/// claims the issuer sets itself are refused.
pub fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (name, raw) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE, e.g. roles='[\"admin\"]'"))?;
    if name.is_empty() {
        return Err(format!("`{text}` has an empty claim name"));
    }
    if RESERVED_CLAIMS.contains(&name) {
        return Err(format!(
            "claim `{name}` is reserved; the issuer sets {} itself (use --sub, --iss, --aud, --ttl)",
            RESERVED_CLAIMS.join(", ")
        ));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    Ok((name.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_values_are_json_when_they_parse() {
        assert_eq!(
            parse_claim(r#"roles=["admin"]"#),
            Ok(("roles".into(), serde_json::json!(["admin"])))
        );
        assert_eq!(parse_claim("n=3"), Ok(("n".into(), Value::from(3))));
        assert_eq!(parse_claim("ok=true"), Ok(("ok".into(), Value::Bool(true))));
        assert_eq!(
            parse_claim("tier=gold"),
            Ok(("tier".into(), Value::from("gold")))
        );
        assert_eq!(parse_claim("eq=a=b"), Ok(("eq".into(), Value::from("a=b"))));
        assert_eq!(parse_claim("empty="), Ok(("empty".into(), Value::from(""))));
        for bad in ["noequals", "=v", "sub=x", "type=refresh", "aud=x"] {
            assert!(parse_claim(bad).is_err(), "{bad:?}");
        }
    }
}
