//! Input validation shared by every backend: run once in the facade,
//! before any backend is touched, so bad input changes nothing anywhere.

use super::{StoreError, StoreResult};

/// Longest username, in characters (after trimming).
pub const MAX_USERNAME: usize = 64;
/// Longest name (API key name, app name, role, permission, tenant), in characters.
pub const MAX_NAME: usize = 128;
/// Longest id (user, session, jti, app, owner), in bytes.
pub const MAX_ID: usize = 128;
/// Most entries in a roles / permissions / scopes / services list.
pub const MAX_LIST: usize = 64;
/// Longest password, in bytes (bounds the hashing cost).
pub const MAX_PASSWORD: usize = 1024;
/// Longest stored user agent, in bytes (longer ones are truncated).
pub const MAX_USER_AGENT: usize = 512;

/// A validated username: trimmed, 1..=64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    display: String,
    key: String,
}

impl Username {
    /// Validates a username.
    pub fn parse(raw: &str) -> StoreResult<Self> {
        let display = raw.trim();
        if display.is_empty() {
            return Err(StoreError::invalid("username", "must not be empty"));
        }
        if display.chars().count() > MAX_USERNAME {
            return Err(StoreError::invalid(
                "username",
                "must be at most 64 characters",
            ));
        }
        if display.chars().any(char::is_control) {
            return Err(StoreError::invalid(
                "username",
                "must not contain control characters",
            ));
        }
        Ok(Self {
            display: display.to_owned(),
            key: display.to_lowercase(),
        })
    }

    /// Validates a username given as raw bytes (e.g. straight from a request body).
    pub fn from_bytes(raw: &[u8]) -> StoreResult<Self> {
        if raw.len() > MAX_USERNAME * 4 + 64 {
            return Err(StoreError::invalid(
                "username",
                "must be at most 64 characters",
            ));
        }
        let s = std::str::from_utf8(raw)
            .map_err(|_| StoreError::invalid("username", "must be valid UTF-8"))?;
        Self::parse(s)
    }

    /// The form shown to people.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The case-folded form uniqueness is decided on.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A non-empty (after trimming), bounded string without control characters.
pub fn bounded(field: &'static str, raw: &str, max_chars: usize) -> StoreResult<String> {
    bounded_str(field, raw, max_chars).map(str::to_owned)
}

/// [`bounded`] without the copy: the trimmed text (lookups on the request path).
pub fn bounded_str<'a>(
    field: &'static str,
    raw: &'a str,
    max_chars: usize,
) -> StoreResult<&'a str> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if s.len() > max_chars * 4 || s.chars().count() > max_chars {
        return Err(StoreError::invalid(field, "is too long"));
    }
    if s.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s)
}

/// An access token's `jti`, the same rule for revoking and checking: taken
/// exactly as given (not trimmed), 1..=128 bytes, no control characters.
pub fn jti(raw: &str) -> StoreResult<&str> {
    if raw.is_empty() || raw.len() > MAX_ID {
        return Err(StoreError::invalid("jti", "must be 1..=128 bytes"));
    }
    if raw.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "jti",
            "must not contain control characters",
        ));
    }
    Ok(raw)
}

/// A signing key's `kid`: 1..=128 bytes of `A-Z a-z 0-9 - _ .` (it names
/// the key in JWKS documents, logs and the admin API's paths).
pub fn kid(raw: &str) -> StoreResult<&str> {
    if raw.is_empty() || raw.len() > MAX_ID {
        return Err(StoreError::invalid("kid", "must be 1..=128 bytes"));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(StoreError::invalid(
            "kid",
            "must be letters, digits, `-`, `_` or `.`",
        ));
    }
    Ok(raw)
}

/// A bounded list of bounded names, de-duplicated, order kept.
pub fn name_list(field: &'static str, raw: &[String]) -> StoreResult<Vec<String>> {
    if raw.len() > MAX_LIST {
        return Err(StoreError::invalid(
            field,
            "has too many entries (at most 64)",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for item in raw {
        let item = bounded(field, item, MAX_NAME)?;
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

/// An optional bounded name (`None` stays `None`).
pub fn optional(field: &'static str, raw: Option<&str>) -> StoreResult<Option<String>> {
    raw.map(|s| bounded(field, s, MAX_NAME)).transpose()
}

/// A password: 1..=1024 bytes of UTF-8.
pub fn password(raw: &[u8]) -> StoreResult<&str> {
    if raw.is_empty() {
        return Err(StoreError::invalid("password", "must not be empty"));
    }
    if raw.len() > MAX_PASSWORD {
        return Err(StoreError::invalid(
            "password",
            "must be at most 1024 bytes",
        ));
    }
    std::str::from_utf8(raw).map_err(|_| StoreError::invalid("password", "must be valid UTF-8"))
}

/// A user agent cut to at most 512 bytes (on a character boundary), control
/// characters dropped; empty becomes `None`.
pub fn user_agent(raw: Option<&str>) -> Option<String> {
    let raw = raw?;
    let mut out = String::with_capacity(raw.len().min(MAX_USER_AGENT));
    for c in raw.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_USER_AGENT {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// An IP address in canonical text form.
pub fn client_ip(raw: Option<&str>) -> StoreResult<Option<String>> {
    raw.map(|s| {
        s.trim()
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| StoreError::invalid("client_ip", "must be an IPv4 or IPv6 address"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_trimmed_bounded_and_case_folded() {
        let u = Username::parse("  Alice ").expect("valid");
        assert_eq!(u.as_str(), "Alice");
        assert_eq!(u.key(), "alice");
        assert!(Username::parse(&"a".repeat(64)).is_ok());
        assert_eq!(
            Username::parse(&"a".repeat(65))
                .map(|_| ())
                .unwrap_err()
                .code(),
            "store.invalid_input"
        );
        assert!(Username::parse("   ").is_err());
        assert!(Username::parse("a\u{0}b").is_err());
        assert!(Username::from_bytes(&[0x61, 0xff, 0x62]).is_err());
    }

    #[test]
    fn user_agents_are_cut_on_char_boundaries() {
        let ua = "é".repeat(400);
        let cut = user_agent(Some(&ua)).expect("non-empty");
        assert!(cut.len() <= MAX_USER_AGENT);
        assert_eq!(user_agent(Some("\u{1}\u{2}")), None);
    }
}
