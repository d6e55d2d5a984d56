//! Keeping secrets out of the audit log: secret query parameters are removed
//! from the raw path, the user agent is truncated, and no other header is kept.

/// Query parameters removed by default (compared case-insensitively, after
/// percent-decoding the name).
pub const DEFAULT_SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "password",
    "client_secret",
    "code",
];

/// Longest user agent kept, in bytes.
pub const MAX_USER_AGENT: usize = 256;
/// Longest path kept, in bytes.
pub const MAX_PATH: usize = 2048;

/// Which query parameters carry secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    secret_params: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(DEFAULT_SECRET_PARAMS.iter().copied())
    }
}

impl Redactor {
    /// Removes exactly the parameters named (case-insensitively).
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
        }
    }

    /// The parameters removed.
    pub fn secret_params(&self) -> &[String] {
        &self.secret_params
    }

    /// `raw` (path and query, as received) without secret query parameters
    /// or fragment, truncated to [`MAX_PATH`] bytes.
    pub fn path(&self, raw: &str) -> String {
        let raw = raw.split('#').next().unwrap_or_default();
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        let mut out = String::with_capacity(raw.len().min(MAX_PATH));
        out.push_str(path);
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

    fn is_secret(&self, raw_name: &str) -> bool {
        let name = percent_decode_lower(raw_name);
        let name = name.trim();
        // `token[]` and `token[x]` carry the same secret as `token`.
        let base = name.split('[').next().unwrap_or(name);
        self.secret_params.iter().any(|s| s == name || s == base)
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
