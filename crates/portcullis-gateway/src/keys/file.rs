//! Key files on disk: loading PEM and JWK keys with their kid and algorithm,
//! and creating key files that are never overwritten.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use portcullis_core::jose::json::parse_object;
use portcullis_core::jose::jwk::key_from_jwk;
use portcullis_core::{Algorithm, Key, KeyError};
use serde_json::Value;

use std::fs::File;
use std::io::Read;

use super::{FileError, Input};

/// Suffix of a public (or private asymmetric) JWK file.
pub const JWK_SUFFIX: &str = ".jwk.json";
/// Suffix of a symmetric secret written by `keys generate --alg HS*`.
pub const SECRET_SUFFIX: &str = ".secret.jwk.json";
/// Suffix of a PEM key file.
pub const PEM_SUFFIX: &str = ".pem";

/// Mode of private key files.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of public key files.
pub const PUBLIC_MODE: u32 = 0o644;

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The kid a key file names by default: its name without the key suffix.
pub fn stem_kid(path: &Path) -> String {
    let name = file_name(path);
    for suffix in [SECRET_SUFFIX, JWK_SUFFIX, ".json", PEM_SUFFIX] {
        if let Some(stem) = name.strip_suffix(suffix)
            && !stem.is_empty()
        {
            return stem.to_owned();
        }
    }
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(name)
}

/// Whether `kid` is safe as a file name stem.
pub fn check_kid(kid: &str) -> Result<(), FileError> {
    let ok = !kid.is_empty()
        && kid.len() <= 128
        && !kid.starts_with('.')
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FileError::Invalid(format!(
            "--kid `{kid}` cannot be used as a file name; use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

/// Loads any key file: a JWK when its first non-whitespace byte is `{`, PEM otherwise.
pub fn load(path: &Path, alg: Option<Algorithm>) -> Result<Key, FileError> {
    let bytes = read_file(path, Input::KeyFile)?;
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        load_jwk(path, &bytes, alg)
    } else {
        load_pem(path, &bytes, alg)
    }
}

/// A PEM key, with the file stem as kid. When `<stem>.jwk.json` sits next to
/// it, that file's `alg` pins the key and its public key must match.
pub fn load_pem(path: &Path, bytes: &[u8], alg: Option<Algorithm>) -> Result<Key, FileError> {
    let kid = stem_kid(path);
    let sidecar_path = path.with_file_name(format!("{kid}{JWK_SUFFIX}"));
    let sidecar = match read_file(&sidecar_path, Input::PublicJwk) {
        Ok(sidecar_bytes) => Some(load_jwk(&sidecar_path, &sidecar_bytes, None)?),
        Err(FileError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => None,
        Err(other) => return Err(other),
    };
    let sidecar_alg = sidecar.as_ref().and_then(Key::pinned_algorithm);
    let pinned = match (alg, sidecar_alg) {
        (Some(given), Some(published)) if given != published => {
            return Err(FileError::Invalid(format!(
                "--alg {given} conflicts with `alg: {published}` in `{}`; drop --alg or regenerate the key",
                sidecar_path.display()
            )));
        }
        (given, published) => given.or(published),
    };
    let key = Key::from_pem(bytes, pinned)
        .map_err(|e| FileError::key(format!("cannot load key `{}`", path.display()), e))?;
    if let Some(public) = &sidecar
        && public.thumbprint() != key.thumbprint()
    {
        return Err(FileError::Invalid(format!(
            "`{}` does not hold the public key of `{}`; remove or regenerate one of them",
            sidecar_path.display(),
            path.display()
        )));
    }
    Ok(key.with_kid(kid))
}

/// A JWK key; without a `kid` member the file stem is its kid. `alg`, when
/// given, must agree with the JWK's own `alg`.
pub fn load_jwk(path: &Path, bytes: &[u8], alg: Option<Algorithm>) -> Result<Key, FileError> {
    let context = || format!("cannot load key `{}`", path.display());
    let mut object = parse_object(bytes)
        .map_err(|e| FileError::key(context(), KeyError::Malformed(format!("JWK JSON: {e}"))))?;
    if !object.contains_key("kid") {
        object.insert("kid".into(), stem_kid(path).into());
    }
    if let Some(alg) = alg {
        match object.get("alg") {
            None => {
                object.insert("alg".into(), alg.name().into());
            }
            Some(Value::String(own)) if own == alg.name() => {}
            Some(own) => {
                return Err(FileError::Invalid(format!(
                    "--alg {alg} conflicts with `alg: {own}` in `{}`; drop --alg",
                    path.display()
                )));
            }
        }
    }
    key_from_jwk(object).map_err(|e| FileError::key(context(), e))
}

/// Creates `dir` (and its parents, mode 0700) if missing.
pub fn create_dir(dir: &Path) -> Result<(), FileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| FileError::Dir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Fails if any of `paths` exists, before anything is written.
pub fn refuse_existing(paths: &[&Path]) -> Result<(), FileError> {
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(existing) => Err(FileError::Exists(existing.to_path_buf())),
        None => Ok(()),
    }
}

/// Writes a new file with `mode`; an existing file is never replaced, and a
/// partly written file is removed.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let write_err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                FileError::Exists(path.to_path_buf())
            } else {
                write_err(e)
            }
        })?;
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(write_err(e));
    }
    Ok(())
}

/// `dir/<kid><suffix>`.
pub fn key_path(dir: &Path, kid: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{kid}{suffix}"))
}

/// No key file, JWKS or token the CLI reads is anywhere near this large.
pub const MAX_INPUT_BYTES: u64 = 1024 * 1024;

/// Reads a whole file of at most [`MAX_INPUT_BYTES`].
pub fn read_file(path: &Path, what: Input) -> Result<Vec<u8>, FileError> {
    let read_err = |source| FileError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > MAX_INPUT_BYTES {
        return Err(FileError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(buf)
}
