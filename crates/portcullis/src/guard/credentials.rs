//! Finding the credential a request presents, by the route's sources in
//! order. Only the presence and kind are decided here; verification is the
//! guard's.

use http::{HeaderMap, HeaderName};
use portcullis_core::authz::signed_request::{HEADER_APP, HEADER_SIGNATURE};

use super::GuardConfigError;
use super::config::{CredentialHeaders, CredentialSource};
use crate::stores::API_KEY_PREFIX;

/// Parsed credential header names.
#[derive(Debug, Clone)]
pub(crate) struct HeaderNames {
    api_key: HeaderName,
    app_id: HeaderName,
    app_secret: HeaderName,
}

impl HeaderNames {
    pub(crate) fn new(c: &CredentialHeaders) -> Result<Self, GuardConfigError> {
        let parse =
            |field: &'static str, v: &str| {
                let name = HeaderName::from_bytes(v.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| GuardConfigError::Field {
                        field,
                        message: format!("`{v}` is not a valid header name"),
                    })?;
                if name == http::header::AUTHORIZATION || name == http::header::COOKIE {
                    return Err(GuardConfigError::Field {
                        field,
                        message: "must not be Authorization or Cookie".into(),
                    });
                }
                Ok(name)
            };
        Ok(Self {
            api_key: parse("headers.api_key", &c.api_key)?,
            app_id: parse("headers.app_id", &c.app_id)?,
            app_secret: parse("headers.app_secret", &c.app_secret)?,
        })
    }
}

/// The credential a request presents.
#[derive(Debug)]
pub(crate) enum Presented<'a> {
    /// None of any kind the guard knows.
    None,
    /// A credential of a kind the route does not accept (and the route is
    /// not anonymous-capable): named for the error message.
    Unaccepted(&'static str),
    Jwt(&'a str),
    ApiKey(&'a str),
    App {
        id: &'a str,
        secret: &'a str,
    },
    Signed,
}

/// `Authorization: Bearer <token>` (scheme case-insensitive), if any.
/// `Err` when an Authorization header is present but unreadable.
fn bearer(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some(Err(()));
    };
    let text = text.trim();
    match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(Ok(rest.trim())),
        _ => Some(Err(())),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"))
}

/// What `source` finds in `headers`: `Some(credential)` when one of its
/// kind is present (possibly malformed: then it is refused, not skipped).
fn of_source<'a>(
    headers: &'a HeaderMap,
    names: &HeaderNames,
    source: CredentialSource,
) -> Option<Presented<'a>> {
    match source {
        CredentialSource::Jwt => match bearer(headers) {
            Some(Ok(t)) if !t.starts_with(API_KEY_PREFIX) => Some(Presented::Jwt(t)),
            // An Authorization header that is not `Bearer <token>` is a
            // malformed credential, never ignored.
            Some(Err(())) => Some(Presented::Jwt("")),
            _ => None,
        },
        CredentialSource::ApiKey => match bearer(headers) {
            Some(Ok(t)) if t.starts_with(API_KEY_PREFIX) => Some(Presented::ApiKey(t)),
            _ => header(headers, &names.api_key).map(Presented::ApiKey),
        },
        CredentialSource::App => {
            let id = header(headers, &names.app_id);
            let secret = header(headers, &names.app_secret);
            match (id, secret) {
                (None, None) => None,
                (id, secret) => Some(Presented::App {
                    id: id.unwrap_or(""),
                    secret: secret.unwrap_or(""),
                }),
            }
        }
        CredentialSource::Signed => (headers.contains_key(HEADER_SIGNATURE)
            || headers.contains_key(HEADER_APP))
        .then_some(Presented::Signed),
        CredentialSource::Anonymous => None,
    }
}

const ALL: [CredentialSource; 4] = [
    CredentialSource::Jwt,
    CredentialSource::ApiKey,
    CredentialSource::App,
    CredentialSource::Signed,
];

/// The first credential present among `sources`, in order. A credential of
/// another kind on a route that takes no anonymous callers is reported as
/// [`Presented::Unaccepted`].
pub(crate) fn find<'a>(
    headers: &'a HeaderMap,
    names: &HeaderNames,
    sources: &[CredentialSource],
) -> Presented<'a> {
    for source in sources {
        if let Some(found) = of_source(headers, names, *source) {
            return found;
        }
    }
    if sources.contains(&CredentialSource::Anonymous) || sources.is_empty() {
        return Presented::None;
    }
    for source in ALL {
        if !sources.contains(&source) && of_source(headers, names, source).is_some() {
            return Presented::Unaccepted(describe_one(source));
        }
    }
    Presented::None
}

/// Whether `headers` carry a credential of `source`'s kind (for explain).
pub(crate) fn presents(headers: &HeaderMap, names: &HeaderNames, source: CredentialSource) -> bool {
    of_source(headers, names, source).is_some()
}

/// The kind of what [`find`] found, as the refusals name it; `None` for nothing.
pub(crate) fn kind(presented: &Presented<'_>) -> Option<&'static str> {
    match presented {
        Presented::None => None,
        Presented::Unaccepted(kind) => Some(kind),
        Presented::Jwt(_) => Some(describe_one(CredentialSource::Jwt)),
        Presented::ApiKey(_) => Some(describe_one(CredentialSource::ApiKey)),
        Presented::App { .. } => Some(describe_one(CredentialSource::App)),
        Presented::Signed => Some(describe_one(CredentialSource::Signed)),
    }
}

fn describe_one(source: CredentialSource) -> &'static str {
    match source {
        CredentialSource::Jwt => "a bearer JWT",
        CredentialSource::ApiKey => "an API key",
        CredentialSource::App => "app credentials",
        CredentialSource::Signed => "a signed request",
        CredentialSource::Anonymous => "anonymous calls",
    }
}

/// `a bearer JWT or an API key`.
pub(crate) fn describe(sources: &[CredentialSource]) -> String {
    let parts: Vec<&str> = sources.iter().map(|s| describe_one(*s)).collect();
    parts.join(" or ")
}
