//! Dotted permissions (`billing.invoice.refund`) and wildcard grants
//! (`billing.*`, `org.*.read`, `*`), parsed once and compiled into a
//! [`PermissionSet`] that checks a required permission without allocating.
//!
//! Grant semantics:
//! - a literal grant matches exactly the same permission;
//! - `*` alone matches every permission;
//! - a trailing `.*` matches everything strictly below its prefix
//!   (`billing.*` grants `billing.invoice` and `billing.invoice.refund`,
//!   not `billing`);
//! - an inner `*` matches exactly one segment (`org.*.read` grants
//!   `org.acme.read`, not `org.acme.eu.read`).
//!
//! A required permission is literal: non-empty segments, at most
//! [`MAX_PERMISSION_BYTES`] bytes. A string that is not a valid required
//! permission (empty, `a..b`, `.a`, `a.`) is never granted.

use std::collections::HashSet;

use foldhash::fast::RandomState;

/// The longest permission accepted, in bytes.
pub const MAX_PERMISSION_BYTES: usize = 256;
/// The most segments a permission may have.
pub const MAX_PERMISSION_SEGMENTS: usize = 32;

/// Why a permission string was refused at configuration load.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    /// The permission is empty.
    #[error("permission is empty; use dotted names such as `billing.invoice.read`")]
    Empty,
    /// A segment is empty (`a..b`, `.a`, `a.`).
    #[error("permission `{0}` has an empty segment; remove the stray `.`")]
    EmptySegment(String),
    /// `*` is mixed with other characters in one segment (`bill*`).
    #[error("permission `{0}`: `*` must be a whole segment (`billing.*`, `org.*.read`)")]
    PartialWildcard(String),
    /// The permission is too long or has too many segments.
    #[error(
        "permission `{0}` is longer than {MAX_PERMISSION_BYTES} bytes or {MAX_PERMISSION_SEGMENTS} segments"
    )]
    TooLong(String),
    /// A required permission contains a wildcard.
    #[error("required permission `{0}` must be literal; wildcards are for grants only")]
    WildcardRequired(String),
}

/// One segment of a parsed grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A literal segment.
    Literal(Box<str>),
    /// `*`: exactly one segment (or, when last, one or more).
    Any,
}

/// A parsed grant: its segments and whether a trailing `*` opens everything below.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    text: Box<str>,
    segments: Box<[Segment]>,
    below: bool,
}

fn check_shape(text: &str) -> Result<(), PermissionError> {
    if text.is_empty() {
        return Err(PermissionError::Empty);
    }
    if text.len() > MAX_PERMISSION_BYTES || text.split('.').count() > MAX_PERMISSION_SEGMENTS {
        return Err(PermissionError::TooLong(text.to_owned()));
    }
    if text.split('.').any(str::is_empty) {
        return Err(PermissionError::EmptySegment(text.to_owned()));
    }
    Ok(())
}

/// Whether `text` is a valid required (literal) permission; cheap, no allocation.
pub fn is_valid_required(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_PERMISSION_BYTES
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
        && text.bytes().filter(|&b| b == b'.').count() < MAX_PERMISSION_SEGMENTS
}

/// Checks a required permission at configuration load: literal and well formed.
pub fn parse_required(text: &str) -> Result<Box<str>, PermissionError> {
    check_shape(text)?;
    if text.contains('*') {
        return Err(PermissionError::WildcardRequired(text.to_owned()));
    }
    Ok(text.into())
}

impl Permission {
    /// Parses a grant.
    pub fn parse(text: &str) -> Result<Self, PermissionError> {
        check_shape(text)?;
        let mut segments: Vec<Segment> = text
            .split('.')
            .map(|s| match s {
                "*" => Ok(Segment::Any),
                s if s.contains('*') => Err(PermissionError::PartialWildcard(text.to_owned())),
                s => Ok(Segment::Literal(s.into())),
            })
            .collect::<Result<_, _>>()?;
        let below = segments.last() == Some(&Segment::Any);
        if below {
            segments.pop();
        }
        Ok(Self {
            text: text.into(),
            segments: segments.into(),
            below,
        })
    }

    /// The grant as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments before a trailing `*` (none for `*` alone).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether a trailing `*` opens everything strictly below the segments.
    pub fn is_below(&self) -> bool {
        self.below
    }

    /// Whether this grant covers the literal permission `required`.
    pub fn grants(&self, required: &str) -> bool {
        if !is_valid_required(required) {
            return false;
        }
        self.grants_valid(required)
    }

    fn grants_valid(&self, required: &str) -> bool {
        let mut parts = required.split('.');
        for seg in self.segments.iter() {
            match (seg, parts.next()) {
                (_, None) => return false,
                (Segment::Any, Some(_)) => {}
                (Segment::Literal(l), Some(p)) => {
                    if **l != *p {
                        return false;
                    }
                }
            }
        }
        if self.below {
            parts.next().is_some()
        } else {
            parts.next().is_none()
        }
    }

    fn is_prefix_only(&self) -> bool {
        self.below
            && self
                .segments
                .iter()
                .all(|s| matches!(s, Segment::Literal(_)))
    }
}

/// Whether the grant string `grant` covers `required`, without parsing into
/// a [`Permission`] (an invalid grant grants nothing). For a principal's few
/// own permissions; many grants belong in a [`PermissionSet`].
pub fn grant_str_matches(grant: &str, required: &str) -> bool {
    if !is_valid_required(required) || grant.is_empty() {
        return false;
    }
    if grant == "*" {
        return true;
    }
    let below = grant.ends_with(".*");
    let body = if below {
        &grant[..grant.len() - 2]
    } else {
        grant
    };
    let mut parts = required.split('.');
    for seg in body.split('.') {
        let Some(p) = parts.next() else {
            return false;
        };
        if seg == "*" {
            continue;
        }
        if seg.is_empty() || seg.contains('*') || seg != p {
            return false;
        }
    }
    if below {
        parts.next().is_some()
    } else {
        parts.next().is_none()
    }
}

/// Grants compiled for fast checks: exact grants and `prefix.*` grants in
/// hash sets, grants with an inner `*` in a short list.
#[derive(Debug, Clone, Default)]
pub struct PermissionSet {
    all: bool,
    exact: HashSet<Box<str>, RandomState>,
    prefixes: HashSet<Box<str>, RandomState>,
    patterns: Vec<Permission>,
    grants: Vec<Box<str>>,
}

impl PermissionSet {
    /// An empty set: grants nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles grants, refusing the first malformed one.
    pub fn from_grants<I, S>(grants: I) -> Result<Self, PermissionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = Self::new();
        for g in grants {
            set.insert(Permission::parse(g.as_ref())?);
        }
        Ok(set)
    }

    /// Adds a parsed grant.
    pub fn insert(&mut self, p: Permission) {
        if self.grants.iter().any(|g| **g == *p.text) {
            return;
        }
        self.grants.push(p.text.clone());
        if p.below && p.segments.is_empty() {
            self.all = true;
        } else if p.is_prefix_only() {
            let prefix = &p.text[..p.text.len() - 2];
            self.prefixes.insert(prefix.into());
        } else if !p.below && p.segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
            self.exact.insert(p.text.clone());
        } else {
            self.patterns.push(p);
        }
    }

    /// Adds every grant of `other`.
    pub fn extend(&mut self, other: &Self) {
        self.all |= other.all;
        for g in &other.grants {
            if !self.grants.iter().any(|x| x == g) {
                self.grants.push(g.clone());
            }
        }
        self.exact.extend(other.exact.iter().cloned());
        self.prefixes.extend(other.prefixes.iter().cloned());
        for p in &other.patterns {
            if !self.patterns.contains(p) {
                self.patterns.push(p.clone());
            }
        }
    }

    /// Whether some grant covers the literal permission `required`.
    pub fn allows(&self, required: &str) -> bool {
        if !is_valid_required(required) {
            return false;
        }
        if self.all {
            return true;
        }
        if self.exact.contains(required) {
            return true;
        }
        if !self.prefixes.is_empty() {
            for (i, b) in required.bytes().enumerate() {
                if b == b'.' && self.prefixes.contains(&required[..i]) {
                    return true;
                }
            }
        }
        if self.patterns.is_empty() {
            return false;
        }
        let n = required.bytes().filter(|&b| b == b'.').count() + 1;
        self.patterns.iter().any(|p| {
            let len = p.segments.len();
            let fits = if p.below { n > len } else { n == len };
            fits && p.grants_valid(required)
        })
    }

    /// The grants as written, in insertion order.
    pub fn grants(&self) -> impl Iterator<Item = &str> {
        self.grants.iter().map(|g| &**g)
    }

    /// The number of distinct grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether the set grants nothing.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(g: &[&str]) -> PermissionSet {
        PermissionSet::from_grants(g).unwrap()
    }

    #[test]
    fn literal_trailing_inner_and_all() {
        let s = set(&["billing.*", "org.*.read", "docs.view"]);
        assert!(s.allows("billing.invoice.refund"));
        assert!(s.allows("billing.invoice"));
        assert!(!s.allows("billing"));
        assert!(s.allows("org.acme.read"));
        assert!(!s.allows("org.acme.eu.read"));
        assert!(!s.allows("org.read"));
        assert!(s.allows("docs.view"));
        assert!(!s.allows("docs.view.extra"));
        assert!(!s.allows("docs"));
        assert!(set(&["*"]).allows("anything.at.all"));
        assert!(!set(&["*"]).allows(""));
    }

    #[test]
    fn malformed_grants_and_requirements() {
        assert_eq!(Permission::parse(""), Err(PermissionError::Empty));
        assert!(matches!(
            Permission::parse("a..b"),
            Err(PermissionError::EmptySegment(_))
        ));
        assert!(matches!(
            Permission::parse(".a"),
            Err(PermissionError::EmptySegment(_))
        ));
        assert!(matches!(
            Permission::parse("bill*"),
            Err(PermissionError::PartialWildcard(_))
        ));
        assert!(matches!(
            parse_required("a.*"),
            Err(PermissionError::WildcardRequired(_))
        ));
        let s = set(&["a.*"]);
        assert!(!s.allows("a."));
        assert!(!s.allows("a..b"));
        assert!(!grant_str_matches("a.*", "a."));
    }

    #[test]
    fn longer_grant_does_not_cover_shorter_requirement() {
        let s = set(&["billing.invoice.refund"]);
        assert!(!s.allows("billing.invoice"));
        assert!(!set(&["org.*.read.*"]).allows("org.acme.read"));
        assert!(set(&["org.*.read.*"]).allows("org.acme.read.x"));
    }
}
