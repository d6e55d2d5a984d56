//! App credentials for service-to-service calls (`x-app-id` +
//! `x-app-secret`, or HTTP Basic). Secrets are `pcs_` opaque secrets stored
//! as keyed hashes (HMAC-SHA256 with the server pepper) with a version;
//! rotating keeps the previous secret valid for a grace period.

use std::time::Duration;

use base64::Engine as _;
use portcullis_core::opaque::{self, ct_eq};

use super::input;
use super::{AppRecord, StoreError, StoreResult, Stores, random_id};

/// Prefix of every app secret.
pub const APP_SECRET_PREFIX: &str = "pcs_";
/// Longest grace period of a rotated-out app secret.
pub const MAX_APP_SECRET_GRACE: Duration = Duration::from_secs(7 * 86_400);
/// Longest accepted `Authorization: Basic` header value, in bytes.
pub const MAX_BASIC_HEADER: usize = 512;

/// What is needed to register an app.
#[derive(Debug, Clone, Default)]
pub struct NewApp {
    /// Human name.
    pub name: String,
    /// Services the app may call.
    pub services: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Tenant.
    pub tenant: Option<String>,
}

/// A registered app with its secret, shown once.
#[derive(Clone)]
pub struct CreatedApp {
    /// The raw secret; give it to the app once.
    pub secret: String,
    /// What was stored.
    pub record: AppRecord,
}

impl std::fmt::Debug for CreatedApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApp")
            .field("secret", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// Why an `Authorization: Basic` header could not be read.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicAuthError {
    /// Longer than [`MAX_BASIC_HEADER`] bytes.
    #[error("Authorization header too long")]
    TooLong,
    /// Not the `Basic` scheme.
    #[error("Authorization scheme is not Basic")]
    NotBasic,
    /// Not valid base64.
    #[error("Basic credentials are not valid base64")]
    BadBase64,
    /// Not UTF-8 or no `:` separator.
    #[error("Basic credentials must be UTF-8 `id:secret`")]
    Malformed,
}

/// Reads `(app id, secret)` from an `Authorization: Basic ...` header value.
pub fn parse_basic_auth(header: &[u8]) -> Result<(String, String), BasicAuthError> {
    if header.len() > MAX_BASIC_HEADER {
        return Err(BasicAuthError::TooLong);
    }
    let scheme = header.get(..6).ok_or(BasicAuthError::NotBasic)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return Err(BasicAuthError::NotBasic);
    }
    let encoded = header[6..].trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| BasicAuthError::BadBase64)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicAuthError::Malformed)?;
    let (id, secret) = text.split_once(':').ok_or(BasicAuthError::Malformed)?;
    Ok((id.to_owned(), secret.to_owned()))
}

fn new_secret() -> StoreResult<String> {
    opaque::generate(APP_SECRET_PREFIX)
        .map_err(|_| StoreError::Unavailable("system random source".into()))
}

impl Stores {
    /// Registers an app; the secret is in the answer and nowhere else.
    pub async fn create_app(&self, new: &NewApp) -> StoreResult<CreatedApp> {
        let name = input::bounded("name", &new.name, input::MAX_NAME)?;
        let services = input::name_list("services", &new.services)?;
        let permissions = input::name_list("permissions", &new.permissions)?;
        let tenant = input::optional("tenant", new.tenant.as_deref())?;
        let secret = new_secret()?;
        let now = self.now();
        let record = AppRecord {
            app_id: format!("app_{}", random_id(16)?),
            name,
            secret_hash: self.config.hasher.hash(&secret),
            secret_version: 1,
            previous_hash: None,
            previous_valid_until: None,
            services,
            permissions,
            tenant,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.backends.apps.insert_app(&record).await?;
        Ok(CreatedApp { secret, record })
    }

    /// Issues a new secret; the previous one stays valid for `grace` (at
    /// most [`MAX_APP_SECRET_GRACE`]). The version is incremented in the
    /// store, so concurrent rotations get distinct versions. Returns the
    /// new secret (shown once).
    pub async fn rotate_app_secret(&self, app_id: &str, grace: Duration) -> StoreResult<String> {
        let app_id = input::bounded("app_id", app_id, input::MAX_ID)?;
        if grace > MAX_APP_SECRET_GRACE {
            return Err(StoreError::invalid(
                "grace",
                "must be at most 7 days (the old secret's remaining life)",
            ));
        }
        let secret = new_secret()?;
        let now = self.now();
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let version = self
            .backends
            .apps
            .rotate_app_secret(
                &app_id,
                &self.config.hasher.hash(&secret),
                now.saturating_add(grace),
                now,
            )
            .await?;
        self.caches.apps.invalidate(&app_id);
        match version {
            Some(version) => {
                tracing::info!(app = %app_id, version, "app secret rotated");
                Ok(secret)
            }
            None => Err(StoreError::NotFound("app")),
        }
    }

    /// The app with this id (its secrets only as keyed hashes).
    pub async fn app(&self, app_id: &str) -> StoreResult<Option<AppRecord>> {
        let app_id = input::bounded("app_id", app_id, input::MAX_ID)?;
        self.backends.apps.app(&app_id).await
    }

    /// Enables or disables an app: on this replica before the call
    /// returns, on the others when their revocation set reads the entry the
    /// backend appended (one poll), or within the 1 s cache TTL for a
    /// backend without a log.
    pub async fn set_app_disabled(&self, app_id: &str, disabled: bool) -> StoreResult<()> {
        let app_id = input::bounded("app_id", app_id, input::MAX_ID)?;
        let now = self.now();
        let found = self
            .backends
            .apps
            .set_app_disabled(&app_id, disabled, now)
            .await?;
        if found {
            let kind = super::RevokedKind::app_status(disabled);
            self.revocations.insert(
                kind,
                &app_id,
                super::revocation_set::session_entry_expiry(now),
            );
        }
        self.caches.apps.invalidate(&app_id);
        if found {
            Ok(())
        } else {
            Err(StoreError::NotFound("app"))
        }
    }

    /// Verifies `x-app-id` / `x-app-secret` (or the pair from
    /// [`parse_basic_auth`]): the current secret, or the previous one within
    /// its grace period; disabled apps are refused.
    pub async fn verify_app(&self, app_id: &str, secret: &str) -> StoreResult<AppRecord> {
        if app_id.is_empty()
            || app_id.len() > input::MAX_ID
            || !opaque::is_well_formed(APP_SECRET_PREFIX, secret)
        {
            return Err(StoreError::InvalidAppCredentials);
        }
        // Disabled on any replica: in the set within one poll.
        if self
            .revocations
            .contains(super::RevokedKind::AppDisabled, app_id)
        {
            return Err(StoreError::InvalidAppCredentials);
        }
        let record = match self.caches.apps.get(app_id) {
            Some(hit) => hit,
            None => {
                let fetched_at = std::time::Instant::now();
                let found = self.backends.apps.app(app_id).await?;
                self.caches
                    .apps
                    .insert_fetched(app_id, found.clone(), fetched_at);
                found
            }
        };
        let record = record.ok_or(StoreError::InvalidAppCredentials)?;
        let presented = self.config.hasher.hash(secret);
        let current = ct_eq(&record.secret_hash, &presented);
        let previous = record.previous_hash.is_some_and(|h| ct_eq(&h, &presented))
            && record
                .previous_valid_until
                .is_some_and(|until| self.now() < until);
        if record.disabled || !(current || previous) {
            return Err(StoreError::InvalidAppCredentials);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_parsed_and_bounded() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("app_x:pcs_secret")
        );
        assert_eq!(
            parse_basic_auth(h.as_bytes()),
            Ok(("app_x".into(), "pcs_secret".into()))
        );
        assert_eq!(
            parse_basic_auth(b"Bearer abc"),
            Err(BasicAuthError::NotBasic)
        );
        assert_eq!(
            parse_basic_auth(b"Basic !!!"),
            Err(BasicAuthError::BadBase64)
        );
        assert_eq!(
            parse_basic_auth(b"Basic bm9jb2xvbg=="),
            Err(BasicAuthError::Malformed)
        );
        assert_eq!(
            parse_basic_auth(&vec![b'a'; MAX_BASIC_HEADER + 1]),
            Err(BasicAuthError::TooLong)
        );
        assert_eq!(parse_basic_auth(b""), Err(BasicAuthError::NotBasic));
    }
}
