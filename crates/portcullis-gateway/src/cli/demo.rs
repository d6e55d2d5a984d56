//! `portcullis demo`: the whole round trip in memory (generate a key, issue a
//! token, verify it); nothing is written to disk.

use std::sync::Arc;

use portcullis_core::{
    AccessRequest, Algorithm, AlgorithmSet, IssuerConfig, Key, KeySet, TokenIssuer, Validation,
    Verifier,
};
use serde_json::{Map, json};

use super::{CliError, console, token};

const ISSUER: &str = "https://issuer.demo.portcullis.invalid";
const AUDIENCE: &str = "demo-api";
const SUBJECT: &str = "demo-user";

/// Runs the demo and prints the token and the verified principal.
pub fn run() -> Result<(), CliError> {
    let alg = Algorithm::ES256;
    let key = Key::generate(alg).map_err(|e| CliError::key("cannot generate the demo key", e))?;
    let kid = key.kid().to_owned();
    let mut keys = KeySet::new();
    keys.insert(key)
        .map_err(|e| CliError::key("cannot use the demo key", e))?;
    let keys = Arc::new(keys);

    let config = IssuerConfig {
        audience: vec![AUDIENCE.into()],
        ..IssuerConfig::new(ISSUER)
    };
    let issuer = TokenIssuer::new(Arc::clone(&keys), config, token::new_hasher()?);
    let mut claims = Map::new();
    claims.insert("roles".into(), json!(["reader"]));
    let issued = issuer.issue_access(&AccessRequest {
        subject: SUBJECT.into(),
        claims,
        ..AccessRequest::default()
    })?;

    let validation = Validation::new()
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_algorithms(AlgorithmSet::EMPTY.with(alg));
    let verifier = Verifier::new(Arc::clone(&keys), validation);
    let principal = verifier
        .verify(issued.token.as_bytes())
        .map_err(CliError::Rejected)?;
    let principal = serde_json::to_string_pretty(&principal)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    let jwks = serde_json::to_string_pretty(&keys.public_jwks())
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;

    console::print(&format!(
        "Portcullis demo: issue and verify an access token, in memory\n\
         \n\
         1. Signing key: {alg}, kid {kid} (generated now, discarded on exit)\n\
         \n\
         2. Public JWKS (what a verifier needs):\n{jwks}\n\
         \n\
         3. Access token for subject \"{SUBJECT}\" (iss {ISSUER}, aud {AUDIENCE}, expires at {}):\n{}\n\
         \n\
         4. Verified principal:\n{principal}",
        issued.expires_at, issued.token
    ))
}
