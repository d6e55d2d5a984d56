//! `portcullis keys`: generate signing keys, and publish the public JWKS of a key directory.

use std::fs;
use std::path::PathBuf;

use clap::Args;
use portcullis_core::jose::jwk::{self, public_jwk};
use portcullis_core::{Algorithm, Key, KeyFamily, KeySet};
use serde_json::Value;

use super::error::Input;
use super::{CliError, console};
use crate::keys::{
    self as keyfile, JWK_SUFFIX, PEM_SUFFIX, PRIVATE_MODE, PUBLIC_MODE, SECRET_SUFFIX,
};

/// Arguments of `keys generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Algorithm: HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA.
    #[arg(long, value_name = "ALG")]
    pub alg: Algorithm,
    /// Key id, also the file name stem [default: the key's RFC 7638 thumbprint].
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
    /// Directory for the key files (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `keys jwks`.
#[derive(Debug, Args)]
pub struct JwksArgs {
    /// Directory of *.pem and *.jwk.json key files.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `keys generate`: writes the private key (mode 0600, never overwriting) and
/// the public JWK; prints the kid and both paths, never key material.
pub fn generate(args: &GenerateArgs) -> Result<(), CliError> {
    if let Some(kid) = &args.kid {
        keyfile::check_kid(kid)?;
    }
    if args.alg.family() == KeyFamily::Hmac {
        return generate_secret(args);
    }
    let key = Key::generate(args.alg)
        .map_err(|e| CliError::key(format!("cannot generate a {} key", args.alg), e))?;
    let key = match &args.kid {
        Some(kid) => key.with_kid(kid.as_str()),
        None => key,
    };
    let kid = key.kid().to_owned();
    let missing = |what: &str| {
        CliError::key(
            format!("cannot export the new {} key", args.alg),
            portcullis_core::KeyError::Unsupported(format!("no {what}")),
        )
    };
    let private_pem = key
        .private_pkcs8_pem()
        .ok_or_else(|| missing("PKCS#8 form"))?;
    let public = public_jwk(&key).ok_or_else(|| missing("public JWK"))?;

    keyfile::create_dir(&args.out)?;
    let private_path = keyfile::key_path(&args.out, &kid, PEM_SUFFIX);
    let public_path = keyfile::key_path(&args.out, &kid, JWK_SUFFIX);
    keyfile::refuse_existing(&[&private_path, &public_path])?;
    keyfile::write_new(&private_path, private_pem.as_bytes(), PRIVATE_MODE)?;
    if let Err(e) = keyfile::write_new(&public_path, &pretty(&public)?, PUBLIC_MODE) {
        let _ = fs::remove_file(&private_path);
        return Err(e.into());
    }
    console::print(&format!(
        "kid: {kid}\nalgorithm: {}\nprivate key: {} (mode 0600)\npublic key: {}",
        args.alg,
        private_path.display(),
        public_path.display()
    ))
}

/// HS*: a random secret as long as the hash, written as an `oct` JWK (mode 0600).
fn generate_secret(args: &GenerateArgs) -> Result<(), CliError> {
    let mut key = Key::generate(args.alg)
        .map_err(|e| CliError::key(format!("cannot generate a {} secret", args.alg), e))?;
    if let Some(kid) = &args.kid {
        key = key.with_kid(kid.clone());
    }
    let kid = key.kid().to_owned();
    let jwk = jwk::secret_jwk(&key).ok_or_else(|| {
        CliError::Output(std::io::Error::other(
            "generated key has no secret to write",
        ))
    })?;
    keyfile::create_dir(&args.out)?;
    let secret_path = keyfile::key_path(&args.out, &kid, SECRET_SUFFIX);
    keyfile::write_new(&secret_path, &pretty(&jwk)?, PRIVATE_MODE)?;
    console::print(&format!(
        "kid: {kid}\nalgorithm: {}\nsecret key: {} (mode 0600)\npublic key: none ({} is symmetric: share the secret only with verifiers you trust)",
        args.alg,
        secret_path.display(),
        args.alg
    ))
}

fn pretty(value: &Value) -> Result<Vec<u8>, CliError> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    text.push(b'\n');
    Ok(text)
}

/// `keys jwks`: the public JWKS of every *.pem and *.jwk.json in the directory
/// (a JWK whose kid is already present is skipped; symmetric keys are never
/// published). A key file that cannot be loaded is an error, not a silent gap.
pub fn jwks(args: &JwksArgs) -> Result<(), CliError> {
    let (pems, jwks) = keyfile::key_files(&args.dir)?;
    let mut set = KeySet::new();
    for path in &pems {
        let bytes = console::read_file(path, Input::KeyFile)?;
        let key = keyfile::load_pem(path, &bytes, None)?;
        keyfile::insert(&mut set, key, path)?;
    }
    for path in &jwks {
        let bytes = console::read_file(path, Input::KeyFile)?;
        let key = keyfile::load_jwk(path, &bytes, None)?;
        if key.is_symmetric() || set.get(key.kid()).is_some() {
            continue;
        }
        keyfile::insert(&mut set, key, path)?;
    }
    let doc = set.public_jwks();
    if doc["keys"].as_array().is_none_or(Vec::is_empty) {
        return Err(CliError::NoPublicKeys(args.dir.clone()));
    }
    console::print_json(&doc)
}
