//! A set of keys by `kid`: one active signing key, older keys kept for
//! verification during rotation, and selection of the key for a token.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::algorithm::Algorithm;
use super::json as strict;
use super::jwk::{self, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
use super::key::Key;
use crate::error::{KeyError, TokenError};

/// The longest `kid` looked up; a longer one cannot name any key we hold.
pub const MAX_KID_LEN: usize = 256;

/// A JWKS entry that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwkWarning {
    /// Position of the entry in `keys`.
    pub index: usize,
    /// The entry's `kid`, when it had one.
    pub kid: Option<String>,
    /// Why it was skipped.
    pub error: KeyError,
}

/// Keys by id, with the active signing key.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    // foldhash: the map only ever holds our own kids, so lookups of hostile
    // kids cannot degrade it; SipHash cost showed in the verify profile.
    by_kid: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    active: Option<usize>,
}

impl KeySet {
    /// An empty key set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; its `kid` must be new to the set. The first signing key
    /// added becomes active.
    pub fn insert(&mut self, key: Key) -> Result<(), KeyError> {
        self.insert_shared(Arc::new(key))
    }

    /// Adds a shared key (the same `Arc` another set holds, so caches keyed
    /// on the key's identity stay valid across sets); its `kid` must be new.
    pub fn insert_shared(&mut self, key: Arc<Key>) -> Result<(), KeyError> {
        if self.by_kid.contains_key(key.kid()) {
            return Err(KeyError::DuplicateKid(key.kid().to_owned()));
        }
        let index = self.keys.len();
        if self.active.is_none() && key.can_sign() {
            self.active = Some(index);
        }
        self.by_kid.insert(key.kid().into(), index);
        self.keys.push(key);
        Ok(())
    }

    /// Makes `kid` the signing key; older keys keep verifying.
    pub fn set_active(&mut self, kid: &str) -> Result<(), KeyError> {
        let index = *self
            .by_kid
            .get(kid)
            .ok_or_else(|| KeyError::NoSuchKey(kid.to_owned()))?;
        if !self.keys[index].can_sign() {
            return Err(KeyError::NotASigningKey(kid.to_owned()));
        }
        self.active = Some(index);
        Ok(())
    }

    /// Leaves the set without a signing key (every key only verifies).
    pub fn clear_active(&mut self) {
        self.active = None;
    }

    /// Removes `kid`; tokens signed by it stop verifying.
    pub fn remove(&mut self, kid: &str) -> Option<Arc<Key>> {
        let index = self.by_kid.remove(kid)?;
        let removed = self.keys.remove(index);
        self.active = match self.active {
            Some(a) if a == index => None,
            Some(a) if a > index => Some(a - 1),
            other => other,
        };
        for slot in self.by_kid.values_mut() {
            if *slot > index {
                *slot -= 1;
            }
        }
        Some(removed)
    }

    /// The active signing key.
    pub fn active(&self) -> Option<&Arc<Key>> {
        self.active.map(|i| &self.keys[i])
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    /// Every key, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.iter()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Chooses the key for a token: by `kid` when present; without one, only
    /// when exactly one key of the algorithm's type exists. The key must accept
    /// `alg` (its type and any pinned `alg` decide, never the header alone).
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Arc<Key>, TokenError> {
        let key = match kid {
            Some(kid) => {
                if kid.len() > MAX_KID_LEN {
                    return Err(TokenError::UnknownKey("no key has this kid"));
                }
                self.get(kid)
                    .ok_or(TokenError::UnknownKey("no key has this kid"))?
            }
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.family() == alg.family());
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => only,
                    (None, _) => return Err(TokenError::UnknownKey("no key of this type")),
                    (Some(_), Some(_)) => {
                        return Err(TokenError::UnknownKey(
                            "token has no kid and several keys match",
                        ));
                    }
                }
            }
        };
        if !key.supports(alg) {
            return Err(TokenError::UnsupportedAlgorithm(
                "algorithm does not match the key",
            ));
        }
        Ok(key)
    }

    /// Loads a JWKS document (`{"keys": [...]}`). Entries that cannot be used
    /// (weak, unsupported, `use: enc`) are skipped and reported, not fatal.
    pub fn from_jwks_json(bytes: &[u8]) -> Result<(Self, Vec<JwkWarning>), KeyError> {
        Self::load_jwks(bytes, false)
    }

    /// Loads a JWKS published by someone else: secret (`oct`) and private
    /// entries are skipped and reported *before* keys are indexed, so one
    /// listed first cannot take the `kid` of the real public key.
    pub fn from_public_jwks_json(bytes: &[u8]) -> Result<(Self, Vec<JwkWarning>), KeyError> {
        Self::load_jwks(bytes, true)
    }

    fn load_jwks(bytes: &[u8], public_only: bool) -> Result<(Self, Vec<JwkWarning>), KeyError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(KeyError::Malformed(format!(
                "JWKS is larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let mut doc = strict::parse_object(bytes)
            .map_err(|e| KeyError::Malformed(format!("JWKS JSON: {e}")))?;
        let Some(Value::Array(entries)) = doc.remove("keys") else {
            return Err(KeyError::Malformed("JWKS has no `keys` array".into()));
        };
        if entries.len() > MAX_JWKS_KEYS {
            return Err(KeyError::Malformed(format!(
                "JWKS has more than {MAX_JWKS_KEYS} keys"
            )));
        }
        let mut set = Self::new();
        let mut warnings = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let Value::Object(object) = entry else {
                warnings.push(JwkWarning {
                    index,
                    kid: None,
                    error: KeyError::Malformed("JWKS entry is not an object".into()),
                });
                continue;
            };
            let kid = object.get("kid").and_then(Value::as_str).map(str::to_owned);
            let loaded = jwk::key_from_jwk(object).and_then(|key| {
                if public_only && (key.is_symmetric() || key.can_sign()) {
                    return Err(KeyError::Unsupported(
                        "a secret or private key has no place in a public JWKS".into(),
                    ));
                }
                set.insert(key)
            });
            match loaded {
                Ok(()) => {}
                Err(error) => warnings.push(JwkWarning { index, kid, error }),
            }
        }
        Ok((set, warnings))
    }

    /// The public JWKS: asymmetric keys only, never a private member.
    pub fn public_jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .filter_map(|k| jwk::public_jwk(k))
            .collect();
        json!({ "keys": keys })
    }
}
