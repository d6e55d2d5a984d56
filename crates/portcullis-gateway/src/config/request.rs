//! `[request]`: the canonical form of requests and what is refused for
//! having no single meaning.

use serde::Deserialize;

use super::yes;

/// `[request]`: the canonical form every request is brought to before the
/// guard sees it, and what is refused for having no single meaning
/// (docs/config.md "Canonical requests").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// Methods with lower-case letters (`delete`): `refuse` (default, 400
    /// `request.non_canonical_method`) or `uppercase` (decided and
    /// forwarded upper-cased).
    #[serde(default)]
    pub lowercase_methods: LowercaseMethods,
    /// Drop every inbound header whose name contains `_` (default true),
    /// as nginx's `underscores_in_headers off`: WSGI servers, Traefik and
    /// Envoy read `X_Foo` as `X-Foo`. Headers that fold to an identity,
    /// credential or internal-token header are removed whatever this says.
    #[serde(default = "yes")]
    pub drop_underscore_headers: bool,
    /// `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`:
    /// `strip` (default: removed, counted) or `refuse` (400 when one names
    /// another method than the request's).
    #[serde(default)]
    pub method_override: MethodOverride,
}

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            lowercase_methods: LowercaseMethods::default(),
            drop_underscore_headers: true,
            method_override: MethodOverride::default(),
        }
    }
}

/// What a lower-case method gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowercaseMethods {
    /// 400 `request.non_canonical_method`.
    #[default]
    Refuse,
    /// Upper-cased, then decided and forwarded so.
    Uppercase,
}

/// What a method-override header gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Removed before the guard and the upstream see the request.
    #[default]
    Strip,
    /// 400 `request.method_override` when it names another method.
    Refuse,
}
