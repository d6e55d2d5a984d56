//! Keeping secrets out of the audit log: secret query and path (`;name=`)
//! parameters are removed from the raw path, path segments that carry a
//! secret (`/reset/<token>`) are replaced, the user agent is truncated, and
//! no other header is kept.

/// Query and path parameters removed by default (compared case-insensitively,
/// after percent-decoding the name).
pub const DEFAULT_SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "access-token",
    "refresh_token",
    "id_token",
    "api_key",
    "api-key",
    "apikey",
    "x-api-key",
    "key",
    "secret",
    "password",
    "client_secret",
    "client_assertion",
    "code",
    "code_verifier",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "session",
    "sessionid",
    "session_id",
    "jsessionid",
    "phpsessid",
    "jwt",
];

/// Path patterns whose `{secret}` segment is replaced by default. A pattern
/// is a run of segments matched anywhere in the path: a literal (compared
/// case-insensitively after percent-decoding), `*` (any segment, kept) or
/// `{secret}` (any non-empty segment, replaced by [`REDACTED`]).
pub const DEFAULT_SECRET_PATH_PATTERNS: &[&str] = &[
    "reset/{secret}",
    "password-reset/{secret}",
    "reset-password/{secret}",
    "verify/{secret}",
    "verify-email/{secret}",
    "confirm/{secret}",
    "confirm-email/{secret}",
    "activate/{secret}",
    "invite/{secret}",
    "invitation/{secret}",
    "magic-link/{secret}",
    "unsubscribe/{secret}",
];

/// What a secret path segment is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Longest user agent kept, in bytes.
pub const MAX_USER_AGENT: usize = 256;
/// Longest path kept, in bytes.
pub const MAX_PATH: usize = 2048;

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    /// This name (lowercase).
    Literal(String),
    /// Any segment, kept.
    Any,
    /// Any non-empty segment, replaced.
    Secret,
}

/// A run of path segments one of which carries a secret, e.g. `reset/{secret}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<PatternSegment>,
}

/// A path pattern that cannot be used; names the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid secret path pattern `{0}`: write segments separated by `/`, with at least one `{{secret}}` (e.g. `reset/{{secret}}`)"
)]
pub struct InvalidPathPattern(pub String);

impl PathPattern {
    /// Parses `reset/{secret}`-style text (leading and trailing `/` ignored).
    pub fn parse(text: &str) -> Result<Self, InvalidPathPattern> {
        let bad = || InvalidPathPattern(text.to_owned());
        let segments = text
            .trim_matches('/')
            .split('/')
            .map(|s| match s {
                "" => Err(bad()),
                "*" => Ok(PatternSegment::Any),
                "{secret}" => Ok(PatternSegment::Secret),
                lit => Ok(PatternSegment::Literal(percent_decode_lower(lit))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !segments.contains(&PatternSegment::Secret) {
            return Err(bad());
        }
        Ok(Self { segments })
    }

    /// Marks in `secret` the segments of `segs` this pattern matches at any position.
    /// Whether every literal segment of the pattern is a segment of `path`
    /// (a cheap test before splitting the path).
    fn may_match(&self, path: &str) -> bool {
        self.segments.iter().all(|p| match p {
            PatternSegment::Literal(lit) => {
                path.split('/').any(|seg| name_eq(segment_name(seg), lit))
            }
            PatternSegment::Any | PatternSegment::Secret => true,
        })
    }

    fn mark(&self, segs: &[&str], secret: &mut [bool]) {
        let n = self.segments.len();
        if segs.len() < n {
            return;
        }
        for start in 0..=segs.len() - n {
            let window = &segs[start..start + n];
            let hit = self.segments.iter().zip(window).all(|(p, seg)| {
                let name = segment_name(seg);
                match p {
                    PatternSegment::Literal(lit) => name_eq(name, lit),
                    PatternSegment::Any => true,
                    PatternSegment::Secret => !name.is_empty(),
                }
            });
            if hit {
                for (i, p) in self.segments.iter().enumerate() {
                    if *p == PatternSegment::Secret {
                        secret[start + i] = true;
                    }
                }
            }
        }
    }
}

/// Which query and path parameters, and which path segments, carry secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    secret_params: Vec<String>,
    path_patterns: Vec<PathPattern>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_SECRET_PARAMS.iter().copied())
    }
}

impl Redactor {
    /// Removes exactly the parameters named (case-insensitively), and
    /// replaces the segments of [`DEFAULT_SECRET_PATH_PATTERNS`].
    pub fn new<I, S>(secret_params: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            secret_params: secret_params
                .into_iter()
                .map(|s| s.as_ref().to_ascii_lowercase())
                .collect(),
            path_patterns: DEFAULT_SECRET_PATH_PATTERNS
                .iter()
                .filter_map(|p| PathPattern::parse(p).ok())
                .collect(),
        }
    }

    /// The same parameters, with exactly these path patterns (see
    /// [`DEFAULT_SECRET_PATH_PATTERNS`] for the syntax; an empty list
    /// replaces no segment).
    pub fn with_path_patterns<I, S>(mut self, patterns: I) -> Result<Self, InvalidPathPattern>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.path_patterns = patterns
            .into_iter()
            .map(|p| PathPattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// The parameters removed.
    pub fn secret_params(&self) -> &[String] {
        &self.secret_params
    }

    /// The path patterns whose `{secret}` segments are replaced.
    pub fn path_patterns(&self) -> &[PathPattern] {
        &self.path_patterns
    }

    /// `raw` (path and query, as received) without secret query or path
    /// (`;name=value`) parameters, with secret segments replaced by
    /// [`REDACTED`], without fragment, truncated to [`MAX_PATH`] bytes.
    pub fn path(&self, raw: &str) -> String {
        let raw = raw.split('#').next().unwrap_or_default();
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        let mut out = String::with_capacity(raw.len().min(MAX_PATH));
        self.push_path(&mut out, path);
        if let Some(query) = query {
            let mut first = true;
            for pair in query.split(['&', ';']) {
                let name = pair.split('=').next().unwrap_or_default();
                if self.is_secret(name) {
                    continue;
                }
                out.push(if first { '?' } else { '&' });
                out.push_str(pair);
                first = false;
            }
        }
        truncate(out, MAX_PATH)
    }

    /// Appends `path` with secret segments replaced and secret `;name=value`
    /// parameters removed.
    fn push_path(&self, out: &mut String, path: &str) {
        if !path.contains(';') && !self.path_patterns.iter().any(|p| p.may_match(path)) {
            out.push_str(path);
            return;
        }
        let segs: Vec<&str> = path.split('/').collect();
        let mut secret = vec![false; segs.len()];
        for pattern in &self.path_patterns {
            pattern.mark(&segs, &mut secret);
        }
        for (i, seg) in segs.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            let mut parts = seg.split(';');
            let name = parts.next().unwrap_or_default();
            out.push_str(if secret[i] { REDACTED } else { name });
            for param in parts {
                if !self.is_secret(param.split('=').next().unwrap_or_default()) {
                    out.push(';');
                    out.push_str(param);
                }
            }
        }
    }

    fn is_secret(&self, raw_name: &str) -> bool {
        let name = percent_decode_lower(raw_name);
        let name = name.trim();
        // `token[]` and `token[x]` carry the same secret as `token`.
        let base = name.split('[').next().unwrap_or(name);
        self.secret_params.iter().any(|s| s == name || s == base)
    }
}

/// A path segment without its `;name=value` parameters.
fn segment_name(seg: &str) -> &str {
    seg.split(';').next().unwrap_or_default()
}

/// Whether a raw segment name equals `lit` (lowercase), case-insensitively
/// after percent-decoding.
fn name_eq(raw: &str, lit: &str) -> bool {
    if raw.contains(['%', '+']) {
        percent_decode_lower(raw) == lit
    } else {
        raw.eq_ignore_ascii_case(lit)
    }
}

/// The user agent truncated to [`MAX_USER_AGENT`] bytes (on a char boundary).
pub fn user_agent(ua: &str) -> String {
    truncate(ua.to_owned(), MAX_USER_AGENT)
}

/// `text` cut to at most `max` bytes, on a char boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// Percent-decodes (and maps `+` to space) a query parameter name, lowercased.
/// Invalid escapes are kept as they are.
fn percent_decode_lower(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_params_are_removed_and_others_kept() {
        let r = Redactor::default();
        assert_eq!(
            r.path("/a/b?x=1&token=s3cret&access_token=t&y=2&api_key=k&password=p"),
            "/a/b?x=1&y=2"
        );
        assert_eq!(r.path("/a?token=s"), "/a");
        assert_eq!(r.path("/a"), "/a");
        assert_eq!(r.path("/a?x"), "/a?x");
    }

    #[test]
    fn encoded_and_cased_names_are_caught() {
        let r = Redactor::default();
        assert_eq!(
            r.path("/a?%74oken=s&TOKEN=s&Api_Key=k&token[]=s&ok=1"),
            "/a?ok=1"
        );
        assert_eq!(r.path("/a?x=1;password=p"), "/a?x=1");
        assert_eq!(r.path("/a?x=1#token=s"), "/a?x=1");
    }

    #[test]
    fn the_list_is_configurable() {
        let r = Redactor::new(["sig"]);
        assert_eq!(r.path("/a?sig=1&token=2"), "/a?token=2");
    }

    #[test]
    fn common_secret_names_are_removed_by_default() {
        let r = Redactor::default();
        for name in [
            "key",
            "KEY",
            "secret",
            "sig",
            "signature",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "x-amz-security-token",
            "session",
            "jwt",
            "client_assertion",
            "code_verifier",
            "api-key",
            "Api-Key",
            "jsessionid",
        ] {
            assert_eq!(
                r.path(&format!("/a?x=1&{name}=s3cret&y=2")),
                "/a?x=1&y=2",
                "{name}"
            );
        }
        // A presigned S3 URL keeps only its harmless parameters.
        assert_eq!(
            r.path(
                "/bucket/obj?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101&\
                 X-Amz-Date=20260101T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&\
                 X-Amz-Security-Token=tok&X-Amz-Signature=abcdef"
            ),
            "/bucket/obj?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20260101T000000Z&\
             X-Amz-Expires=300&X-Amz-SignedHeaders=host"
        );
    }

    #[test]
    fn secrets_in_path_segments_are_redacted() {
        let r = Redactor::default();
        assert_eq!(r.path("/app;jsessionid=ABC123/page?x=1"), "/app/page?x=1");
        assert_eq!(r.path("/app/page;JSESSIONID=ABC123"), "/app/page");
        assert_eq!(r.path("/app;v=2;jsessionid=A/p"), "/app;v=2/p");
        assert_eq!(
            r.path("/api/v1/Reset/s3cr3t-token?lang=en"),
            "/api/v1/Reset/[redacted]?lang=en"
        );
        assert_eq!(
            r.path("/verify-email/abc/done"),
            "/verify-email/[redacted]/done"
        );
        assert_eq!(r.path("/%72eset/abc"), "/%72eset/[redacted]");
        // Nothing to redact: unchanged, including a bare `/reset`.
        assert_eq!(r.path("/reset"), "/reset");
        assert_eq!(r.path("/reset/"), "/reset/");
        assert_eq!(r.path("/presets/abc"), "/presets/abc");
    }

    #[test]
    fn path_patterns_are_configurable() {
        let r = Redactor::default()
            .with_path_patterns(["share/*/{secret}", "/dl/{secret}/"])
            .unwrap();
        assert_eq!(
            r.path("/share/doc/t0k3n/view"),
            "/share/doc/[redacted]/view"
        );
        assert_eq!(r.path("/x/dl/t0k3n"), "/x/dl/[redacted]");
        assert_eq!(r.path("/reset/kept"), "/reset/kept", "defaults replaced");
        assert!(Redactor::default().with_path_patterns(["reset/*"]).is_err());
        assert!(
            Redactor::default()
                .with_path_patterns(["a//{secret}"])
                .is_err()
        );
        let none = Redactor::default()
            .with_path_patterns(std::iter::empty::<&str>())
            .unwrap();
        assert_eq!(none.path("/reset/kept"), "/reset/kept");
    }

    #[test]
    fn long_values_are_truncated_on_char_boundaries() {
        let ua = "é".repeat(MAX_USER_AGENT);
        let t = user_agent(&ua);
        assert!(t.len() <= MAX_USER_AGENT);
        assert!(t.chars().all(|c| c == 'é'));
        let long = format!("/{}", "a".repeat(MAX_PATH * 2));
        assert_eq!(Redactor::default().path(&long).len(), MAX_PATH);
    }

    #[test]
    fn bad_escapes_do_not_panic() {
        let r = Redactor::default();
        assert_eq!(r.path("/a?%=1&%4=2&%zz=3"), "/a?%=1&%4=2&%zz=3");
    }
}
