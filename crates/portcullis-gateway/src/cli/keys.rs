//! `portcullis keys`: generate signing keys, and publish the public JWKS of a key directory.

use std::fs;
use std::path::{Path, PathBuf};

use clap::Args;
use portcullis_core::jose::jwk::{self, public_jwk};
use portcullis_core::{Algorithm, Key, KeyFamily, KeySet};
use serde_json::Value;

use super::error::Input;
use super::keyfile::{self, JWK_SUFFIX, PEM_SUFFIX, PRIVATE_MODE, PUBLIC_MODE, SECRET_SUFFIX};
use super::{CliError, console};

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
        return Err(e);
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
    let (pems, jwks) = key_files(&args.dir)?;
    let mut set = KeySet::new();
    for path in &pems {
        let bytes = console::read_file(path, Input::KeyFile)?;
        let key = keyfile::load_pem(path, &bytes, None)?;
        insert(&mut set, key, path)?;
    }
    for path in &jwks {
        let bytes = console::read_file(path, Input::KeyFile)?;
        let key = keyfile::load_jwk(path, &bytes, None)?;
        if key.is_symmetric() || set.get(key.kid()).is_some() {
            continue;
        }
        insert(&mut set, key, path)?;
    }
    let doc = set.public_jwks();
    if doc["keys"].as_array().is_none_or(Vec::is_empty) {
        return Err(CliError::NoPublicKeys(args.dir.clone()));
    }
    console::print_json(&doc)
}

fn insert(set: &mut KeySet, key: Key, path: &Path) -> Result<(), CliError> {
    set.insert(key)
        .map_err(|e| CliError::key(format!("cannot add `{}`", path.display()), e))
}

/// The *.pem and *.jwk.json files of `dir` (secrets and hidden files left
/// out), each sorted by name.
fn key_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), CliError> {
    let dir_err = |source| CliError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut pems = Vec::new();
    let mut jwks = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || name.ends_with(SECRET_SUFFIX) || !path.is_file() {
            continue;
        }
        if name.ends_with(PEM_SUFFIX) {
            pems.push(path);
        } else if name.ends_with(JWK_SUFFIX) {
            jwks.push(path);
        }
    }
    pems.sort();
    jwks.sort();
    Ok((pems, jwks))
}

/// The key set of a key directory as `keys generate` writes it, for the
/// gateway: every private PEM key, every symmetric secret, and public JWKs
/// (verify-only, e.g. retired keys) whose kid is not already loaded. The
/// active signing key is `active_kid`, or the first private key by file name.
pub fn load_key_dir(dir: &Path, active_kid: Option<&str>) -> Result<KeySet, CliError> {
    let (pems, jwks) = key_files(dir)?;
    let mut set = KeySet::new();
    for path in &pems {
        let bytes = console::read_file(path, Input::KeyFile)?;
        insert(&mut set, keyfile::load_pem(path, &bytes, None)?, path)?;
    }
    let mut secrets = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| CliError::Dir {
        path: dir.to_path_buf(),
        source,
    })? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        if path.file_name().is_some_and(|n| {
            n.to_string_lossy().ends_with(SECRET_SUFFIX) && !n.to_string_lossy().starts_with('.')
        }) {
            secrets.push(path);
        }
    }
    secrets.sort();
    for path in secrets.iter().chain(&jwks) {
        let bytes = console::read_file(path, Input::KeyFile)?;
        let key = keyfile::load_jwk(path, &bytes, None)?;
        if set.get(key.kid()).is_none() {
            insert(&mut set, key, path)?;
        }
    }
    if let Some(kid) = active_kid {
        set.set_active(kid).map_err(|e| {
            CliError::key(format!("keys.active_kid `{kid}` in `{}`", dir.display()), e)
        })?;
    }
    if set.active().is_none() {
        return Err(CliError::Usage(format!(
            "`{}` holds no private key to sign with; create one with `portcullis keys generate --alg ES256 --out {}`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(set)
}
