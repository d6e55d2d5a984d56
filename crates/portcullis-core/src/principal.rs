//! The authenticated caller, as every later decision sees it.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// How the caller authenticated.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A JWT access token.
    Jwt,
    /// An API key.
    ApiKey,
    /// App id and secret.
    App,
    /// A signed service request.
    SignedRequest,
    /// No credentials.
    Anonymous,
}

impl AuthMethod {
    /// The name it serializes to (`jwt`, `api_key`, `app`,
    /// `signed_request`, `anonymous`), without building a JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
            Self::App => "app",
            Self::SignedRequest => "signed_request",
            Self::Anonymous => "anonymous",
        }
    }
}

/// The verified claims of a token as JSON text, parsed only when asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawClaims(Vec<u8>);

impl RawClaims {
    /// Wraps claims JSON that has already been parsed as a strict object
    /// (and so is valid UTF-8; it is not checked again on the hot path).
    pub(crate) fn new(json: Vec<u8>) -> Self {
        Self(json)
    }

    /// The claims as JSON text.
    pub fn as_json(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The claims as a JSON object (parsed on each call).
    pub fn to_value(&self) -> Value {
        if self.0.is_empty() {
            return Value::Object(Default::default());
        }
        serde_json::from_slice(&self.0).unwrap_or(Value::Null)
    }

    /// One claim by name (parses the claims).
    pub fn get(&self, name: &str) -> Option<Value> {
        match self.to_value() {
            Value::Object(mut map) => map.remove(name),
            _ => None,
        }
    }
}

impl Serialize for RawClaims {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// Who is calling: identity, grants and the credential that proved it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Principal {
    /// Subject identifier (any string the issuer uses).
    pub subject: String,
    /// Issuer (`iss`).
    pub issuer: Option<String>,
    /// Tenant the subject belongs to.
    pub tenant: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Role names.
    pub roles: Vec<String>,
    /// Permissions granted directly.
    pub permissions: Vec<String>,
    /// OAuth scopes (`scope` string or `scp` array).
    pub scopes: Vec<String>,
    /// Session id (`sid`).
    pub session_id: Option<String>,
    /// Token id (`jti`).
    pub token_id: Option<String>,
    /// How the caller authenticated.
    pub auth_method: AuthMethod,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: Option<i64>,
    /// Every verified claim.
    pub claims: RawClaims,
}

impl Principal {
    /// A principal with only a subject and an auth method.
    pub fn new(subject: impl Into<String>, auth_method: AuthMethod) -> Self {
        Self {
            subject: subject.into(),
            issuer: None,
            tenant: None,
            email: None,
            name: None,
            roles: Vec::new(),
            permissions: Vec::new(),
            scopes: Vec::new(),
            session_id: None,
            token_id: None,
            auth_method,
            expires_at: None,
            claims: RawClaims::default(),
        }
    }

    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::AuthMethod;

    #[test]
    fn auth_method_names_are_their_serialized_names() {
        for method in [
            AuthMethod::Jwt,
            AuthMethod::ApiKey,
            AuthMethod::App,
            AuthMethod::SignedRequest,
            AuthMethod::Anonymous,
        ] {
            assert_eq!(
                serde_json::to_value(method).ok(),
                Some(serde_json::Value::from(method.as_str())),
                "{method:?}"
            );
        }
    }
}
