//! What a rule counts by: one or more facts of the request (client IP,
//! subject, API key id, app id, tenant, route, a header's value), rendered
//! into a compact key string (Redis) or hashed in place (memory, no
//! allocation).

use std::fmt::Write as _;
use std::hash::Hasher;
use std::net::IpAddr;

use super::rule::RuleError;

/// Longest value kept verbatim in a key; longer values are replaced by a
/// SHA-256 digest prefix.
pub const MAX_VALUE_LEN: usize = 128;

/// One fact of the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The (grouped) client IP.
    Ip,
    /// The authenticated subject.
    Subject,
    /// The API key id.
    ApiKeyId,
    /// The app (client) id.
    AppId,
    /// The tenant.
    Tenant,
    /// The matched route (a template such as `GET /orders/{id}`).
    Route,
    /// A request header's value (name in lower case).
    Header(String),
}

impl KeyPart {
    fn tag(&self) -> &str {
        match self {
            Self::Ip => "ip",
            Self::Subject => "sub",
            Self::ApiKeyId => "key",
            Self::AppId => "app",
            Self::Tenant => "ten",
            Self::Route => "rt",
            Self::Header(name) => name,
        }
    }

    fn code(&self) -> u8 {
        match self {
            Self::Ip => 1,
            Self::Subject => 2,
            Self::ApiKeyId => 3,
            Self::AppId => 4,
            Self::Tenant => 5,
            Self::Route => 6,
            Self::Header(_) => 7,
        }
    }
}

/// Looks a request header up by lower-case name.
pub trait HeaderLookup: Sync {
    /// The header's value, when present and valid UTF-8.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for &[(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// The facts of one request that keys are made of.
#[derive(Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// The grouped client IP (see `ClientIpConfig::client_key`).
    pub client_ip: Option<IpAddr>,
    /// The authenticated subject.
    pub subject: Option<&'a str>,
    /// The API key id.
    pub api_key_id: Option<&'a str>,
    /// The app id.
    pub app_id: Option<&'a str>,
    /// The tenant.
    pub tenant: Option<&'a str>,
    /// The matched route.
    pub route: Option<&'a str>,
    /// The request headers.
    pub headers: Option<&'a dyn HeaderLookup>,
}

impl std::fmt::Debug for RequestFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFacts")
            .field("client_ip", &self.client_ip)
            .field("subject", &self.subject)
            .field("api_key_id", &self.api_key_id)
            .field("app_id", &self.app_id)
            .field("tenant", &self.tenant)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

enum Value<'a> {
    Ip(IpAddr),
    Text(&'a str),
}

impl<'a> RequestFacts<'a> {
    fn value(&self, part: &KeyPart) -> Option<Value<'a>> {
        let text = match part {
            KeyPart::Ip => return self.client_ip.map(Value::Ip),
            KeyPart::Subject => self.subject,
            KeyPart::ApiKeyId => self.api_key_id,
            KeyPart::AppId => self.app_id,
            KeyPart::Tenant => self.tenant,
            KeyPart::Route => self.route,
            KeyPart::Header(name) => self.headers.and_then(|h| h.header(name)),
        };
        text.map(Value::Text)
    }
}

/// The facts a rule counts by; a request lacking any of them is not
/// counted by that rule (e.g. a per-subject limit skips anonymous calls).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    parts: Vec<KeyPart>,
}

impl KeySpec {
    /// A key of several parts (e.g. subject + route), at most four.
    pub fn new(parts: impl IntoIterator<Item = KeyPart>) -> Self {
        Self {
            parts: parts.into_iter().collect(),
        }
    }

    /// By client IP.
    pub fn ip() -> Self {
        Self::new([KeyPart::Ip])
    }

    /// By subject.
    pub fn subject() -> Self {
        Self::new([KeyPart::Subject])
    }

    /// The parts.
    pub fn parts(&self) -> &[KeyPart] {
        &self.parts
    }

    /// Checks the parts; the error names the field.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.parts.is_empty() || self.parts.len() > 4 {
            return Err(RuleError::Field {
                field: "key",
                reason: "must have 1 to 4 parts",
            });
        }
        for p in &self.parts {
            if let KeyPart::Header(name) = p {
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(RuleError::Field {
                        field: "key.header",
                        reason: "header names must be 1-64 characters of [a-z0-9-] (lower case)",
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether the request has every fact this key needs.
    pub fn applies(&self, facts: &RequestFacts<'_>) -> bool {
        self.parts.iter().all(|p| facts.value(p).is_some())
    }

    /// Feeds the key's values to `h`, without allocating; `false` when a fact
    /// is missing.
    pub fn hash_into<H: Hasher>(&self, facts: &RequestFacts<'_>, h: &mut H) -> bool {
        for p in &self.parts {
            h.write_u8(p.code());
            if let KeyPart::Header(name) = p {
                h.write(name.as_bytes());
                h.write_u8(0xff);
            }
            match facts.value(p) {
                Some(Value::Ip(IpAddr::V4(v4))) => h.write(&v4.octets()),
                Some(Value::Ip(IpAddr::V6(v6))) => h.write(&v6.octets()),
                Some(Value::Text(t)) => {
                    h.write(t.as_bytes());
                    h.write_u8(0xff);
                }
                None => return false,
            }
        }
        true
    }

    /// Appends the key (`ip=203.0.113.9|sub=alice`) to `out`; `false` (with
    /// `out` unspecified) when a fact is missing. Characters other than
    /// `[A-Za-z0-9._:@/-]` are percent-encoded, so braces never reach Redis
    /// hash tags; values longer than [`MAX_VALUE_LEN`] become `#` and a
    /// digest.
    pub fn render_into(&self, facts: &RequestFacts<'_>, out: &mut String) -> bool {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            out.push_str(p.tag());
            out.push('=');
            match facts.value(p) {
                Some(Value::Ip(ip)) => {
                    let _ = write!(out, "{ip}");
                }
                Some(Value::Text(t)) => push_escaped(out, t),
                None => return false,
            }
        }
        true
    }

    /// [`Self::render_into`] into a new string.
    pub fn render(&self, facts: &RequestFacts<'_>) -> Option<String> {
        let mut s = String::new();
        self.render_into(facts, &mut s).then_some(s)
    }
}

fn push_escaped(out: &mut String, value: &str) {
    if value.len() > MAX_VALUE_LEN {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
        out.push('#');
        for b in &digest.as_ref()[..16] {
            let _ = write!(out, "{b:02x}");
        }
        return;
    }
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'/' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_combined_keys_and_escapes() {
        let headers: &[(&str, &str)] = &[("X-Team", "a{b}|c")];
        let facts = RequestFacts {
            client_ip: Some("2001:db8::".parse().unwrap()),
            subject: Some("alice"),
            route: Some("GET /orders/{id}"),
            headers: Some(&headers),
            ..Default::default()
        };
        let k = KeySpec::new([KeyPart::Subject, KeyPart::Route]);
        assert_eq!(
            k.render(&facts).unwrap(),
            "sub=alice|rt=GET%20/orders/%7Bid%7D"
        );
        let k = KeySpec::new([KeyPart::Ip, KeyPart::Header("x-team".into())]);
        assert_eq!(
            k.render(&facts).unwrap(),
            "ip=2001:db8::|x-team=a%7Bb%7D%7Cc"
        );
        assert!(KeySpec::new([KeyPart::Tenant]).render(&facts).is_none());
        let long = "x".repeat(500);
        let facts = RequestFacts {
            subject: Some(&long),
            ..Default::default()
        };
        assert_eq!(KeySpec::subject().render(&facts).unwrap().len(), 4 + 1 + 32);
    }

    #[test]
    fn header_names_must_be_lower_case() {
        assert!(
            KeySpec::new([KeyPart::Header("X-Team".into())])
                .validate()
                .is_err()
        );
        assert!(KeySpec::new([]).validate().is_err());
    }
}
