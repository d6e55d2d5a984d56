//! Credentials taken out of free text: every URL's userinfo password and
//! every `password=` (or other secret-named) parameter, wherever they
//! appear in an error, a log line or an API answer (`/reload`, the
//! console's last reload, `config check`, start-up failures).

use std::borrow::Cow;

/// What a removed credential is shown as.
pub const REDACTED: &str = "[redacted]";

/// Whether a parameter name says its value is a secret.
fn secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token"]
        .iter()
        .any(|w| name.contains(w))
}

/// Bytes that end a URL (or a parameter's value) in running text.
fn ends_token(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'`' | b'"'
                | b'\''
                | b'<'
                | b'>'
                | b','
                | b';'
                | b']'
                | b'['
                | b'('
                | b')'
                | b'{'
                | b'}'
        )
}

fn scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

/// `text` with every credential redacted; borrowed when there is none.
pub fn redact(text: &str) -> Cow<'_, str> {
    let urls = redact_urls(text);
    if let Cow::Owned(s) = redact_params(&urls) {
        return Cow::Owned(s);
    }
    urls
}

/// Every `scheme://user:password@` in `text` as `scheme://user:[redacted]@`.
fn redact_urls(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let sep = search + found;
        let rest_start = sep + 3;
        let mut scheme_start = sep;
        while scheme_start > 0 && scheme_byte(bytes[scheme_start - 1]) {
            scheme_start -= 1;
        }
        let mut end = rest_start;
        while end < bytes.len() && !ends_token(bytes[end]) {
            end += 1;
        }
        search = end.max(rest_start);
        if scheme_start == sep {
            continue;
        }
        // The userinfo ends at the token's last `@` (a password may hold
        // `/`, `?` or `#`; cutting too much is the safe side).
        let token = &text[rest_start..end];
        let Some(at) = token.rfind('@') else {
            continue;
        };
        let userinfo = &token[..at];
        let Some(colon) = userinfo.find(':') else {
            continue;
        };
        out.push_str(&text[copied..rest_start]);
        out.push_str(&userinfo[..colon]);
        out.push(':');
        out.push_str(REDACTED);
        copied = rest_start + at;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Every `name=value` whose name says secret (`password=`, `sslpassword=`,
/// `token=`, …) with its value redacted.
fn redact_params(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while let Some(found) = text[i..].find('=') {
        let eq = i + found;
        let mut name_start = eq;
        while name_start > 0
            && (bytes[name_start - 1].is_ascii_alphanumeric()
                || matches!(bytes[name_start - 1], b'_' | b'-'))
        {
            name_start -= 1;
        }
        let mut end = eq + 1;
        while end < bytes.len() && !ends_token(bytes[end]) && bytes[end] != b'&' {
            end += 1;
        }
        i = eq + 1;
        let name = &text[name_start..eq];
        let value = &text[eq + 1..end];
        if name.is_empty() || value.is_empty() || value == REDACTED || !secret_param(name) {
            continue;
        }
        out.push_str(&text[copied..=eq]);
        out.push_str(REDACTED);
        copied = end;
        i = end;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_passwords_and_secret_parameters_are_removed() {
        let cases = [
            (
                "`redsi://:S3cretPw@10.0.0.1:6379` is not a Redis URL",
                "`redsi://:[redacted]@10.0.0.1:6379` is not a Redis URL",
            ),
            (
                "postgres://app:S3cret@db/x?sslmode=require&password=S3cret2",
                "postgres://app:[redacted]@db/x?sslmode=require&password=[redacted]",
            ),
            (
                "a p/w with slashes: https://u:pa/ss@h/p and more",
                "a p/w with slashes: https://u:[redacted]@h/p and more",
            ),
            (
                "no secret: https://user@host/x",
                "no secret: https://user@host/x",
            ),
            ("plain text, no url", "plain text, no url"),
            (
                "two: redis://:a@h1, redis://:b@h2",
                "two: redis://:[redacted]@h1, redis://:[redacted]@h2",
            ),
            (
                "host=db password=Hunter2 user=x",
                "host=db password=[redacted] user=x",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
    }
}
