//! Key files and the inputs read beside them (key directories, JWKS
//! documents, secret files): loaded for both the CLI's commands and the
//! gateway (`keys.dir`), with errors that say what to pass instead.

mod file;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use portcullis_core::{Key, KeyError, KeySet};

pub use file::{
    JWK_SUFFIX, MAX_INPUT_BYTES, PEM_SUFFIX, PRIVATE_MODE, PUBLIC_MODE, SECRET_SUFFIX, check_kid,
    create_dir, key_path, load, load_jwk, load_pem, read_file, refuse_existing, stem_kid,
    write_new,
};

/// The kind of file a command reads, for messages that say what to pass instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `token verify --jwks`.
    Jwks,
    /// `token issue --key`, or a key in a `keys jwks` directory.
    KeyFile,
    /// The `<stem>.jwk.json` next to a PEM key.
    PublicJwk,
    /// An admin key or password file (`--key-file`, `--password-file`).
    Secret,
}

impl Input {
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Self::Jwks => "JWKS file",
            Self::KeyFile => "key file",
            Self::PublicJwk => "public JWK",
            Self::Secret => "secret file",
        }
    }

    pub(crate) fn hint(self) -> &'static str {
        match self {
            Self::Jwks => {
                "pass --jwks the path of a JWKS document, e.g. saved from `portcullis keys jwks DIR > jwks.json`"
            }
            Self::KeyFile => {
                "pass the path of a PEM or JWK key file, e.g. one written by `portcullis keys generate`"
            }
            Self::PublicJwk => "fix its permissions or remove it; it is optional",
            Self::Secret => {
                "pass a readable file holding the secret alone (an admin key from `portcullis admin bootstrap`, or a password)"
            }
        }
    }
}

/// Why a key file or input file could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file's contents or the arguments naming it are not usable.
    #[error("{0}")]
    Invalid(String),
    /// An input file could not be read.
    #[error("cannot read {} `{path}`: {source}; {}", what.noun(), what.hint())]
    Read {
        /// What the file was meant to be.
        what: Input,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An input file is too large to be what it should be.
    #[error("{} `{path}` is larger than {limit} bytes; {}", what.noun(), what.hint())]
    TooLarge {
        /// What the file was meant to be.
        what: Input,
        /// The file.
        path: PathBuf,
        /// The size limit.
        limit: u64,
    },
    /// The directory for new keys could not be created or listed.
    #[error("cannot use directory `{path}`: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An output file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A key file already exists; it is never overwritten.
    #[error(
        "refusing to overwrite `{0}`; choose another --kid or --out directory, or move the existing file away"
    )]
    Exists(PathBuf),
    /// A key could not be generated, loaded or used.
    #[error("{context}: {source}")]
    Key {
        /// What was being done, naming the file.
        context: String,
        /// The key error.
        source: KeyError,
    },
}

impl FileError {
    /// A key error with its context.
    pub fn key(context: impl Into<String>, source: KeyError) -> Self {
        Self::Key {
            context: context.into(),
            source,
        }
    }
}

/// Adds `key`, read from `path`, to `set`; an error names the file.
pub fn insert(set: &mut KeySet, key: Key, path: &Path) -> Result<(), FileError> {
    set.insert(key)
        .map_err(|e| FileError::key(format!("cannot add `{}`", path.display()), e))
}

/// The *.pem and *.jwk.json files of `dir` (secrets and hidden files left
/// out), each sorted by name.
pub fn key_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), FileError> {
    let dir_err = |source| FileError::Dir {
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
pub fn load_key_dir(dir: &Path, active_kid: Option<&str>) -> Result<KeySet, FileError> {
    let (pems, jwks) = key_files(dir)?;
    let mut set = KeySet::new();
    for path in &pems {
        let bytes = read_file(path, Input::KeyFile)?;
        insert(&mut set, load_pem(path, &bytes, None)?, path)?;
    }
    let mut secrets = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| FileError::Dir {
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
        let bytes = read_file(path, Input::KeyFile)?;
        let key = load_jwk(path, &bytes, None)?;
        if set.get(key.kid()).is_none() {
            insert(&mut set, key, path)?;
        }
    }
    if let Some(kid) = active_kid {
        set.set_active(kid).map_err(|e| {
            FileError::key(format!("keys.active_kid `{kid}` in `{}`", dir.display()), e)
        })?;
    }
    if set.active().is_none() {
        return Err(FileError::Invalid(format!(
            "`{}` holds no private key to sign with; create one with `portcullis keys generate --alg ES256 --out {}`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(set)
}
