//! The running configuration as the console shows it: the file's TOML with
//! every secret replaced by [`REDACTED`] — the keys of
//! [`crate::config::SECRET_KEYS`], any key named like a secret, and the
//! password or secret query parameters of any URL.

/// What a secret is shown as.
pub(crate) const REDACTED: &str = "[redacted]";

/// Whether a key's name says its value is a secret (`*_file`, `*_dir` and
/// `*_header` name a place, not the secret itself).
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name.ends_with("_file") || name.ends_with("_dir") || name.ends_with("_header") {
        return false;
    }
    ["password", "secret", "pepper", "private"]
        .iter()
        .any(|w| name.contains(w))
        || name == "token"
        || name.ends_with("_token")
        || name == "key"
}

/// `url` without its password and without any query parameter that may
/// carry a secret.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if secret_name(k) || k.to_ascii_lowercase().contains("pass") => {
                    format!("{k}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

fn redact_value(path: &str, name: &str, value: &mut toml::Value) {
    if crate::config::SECRET_KEYS.contains(&path) || secret_name(name) {
        match value {
            toml::Value::String(s) if s.contains("://") && !secret_name(name) => {
                *s = redact_url(s);
            }
            toml::Value::Table(_) | toml::Value::Array(_) => {}
            _ => *value = toml::Value::String(REDACTED.to_owned()),
        }
    }
    match value {
        toml::Value::String(s) if s.contains("://") => *s = redact_url(s),
        toml::Value::Table(t) => redact_table(path, t),
        toml::Value::Array(items) => {
            for item in items {
                redact_value(path, name, item);
            }
        }
        _ => {}
    }
}

fn redact_table(prefix: &str, table: &mut toml::Table) {
    for (name, value) in table.iter_mut() {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        redact_value(&path, name, value);
    }
}

/// The configuration `text` as JSON with its secrets redacted; `None`
/// when it does not parse as TOML (then nothing of it is shown).
pub(crate) fn redacted_config(text: &str) -> Option<serde_json::Value> {
    let mut table: toml::Table = toml::from_str(text).ok()?;
    redact_table("", &mut table);
    serde_json::to_value(table).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_is_kept() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
[storage]
url = "postgres://portcullis:hunter2@db:5432/p?sslmode=require&password=x"
redis = "redis://:s3cret@cache:6379"
pepper_file = "/etc/portcullis/pepper"
[guard.headers]
app_secret = "x-app-secret"
api_key = "x-api-key"
[[guard.routes]]
name = "api"
credentials = ["jwt", "api_key"]
[[signed_requests.apps]]
id = "billing"
secret = "inline-secret"
secret_file = "/run/secrets/billing"
"#;
        let v = redacted_config(text).unwrap();
        let s = v.to_string();
        assert!(!s.contains("hunter2"), "{s}");
        assert!(!s.contains("s3cret"), "{s}");
        assert!(!s.contains("inline-secret"), "{s}");
        assert!(!s.contains("password=x"), "{s}");
        assert_eq!(
            v["storage"]["url"],
            "postgres://portcullis:[redacted]@db:5432/p?sslmode=require&password=[redacted]"
        );
        assert_eq!(v["storage"]["redis"], "redis://:[redacted]@cache:6379");
        assert_eq!(v["storage"]["pepper_file"], "/etc/portcullis/pepper");
        assert_eq!(v["server"]["listen"], "127.0.0.1:8080");
        assert_eq!(
            v["signed_requests"]["apps"][0]["secret_file"],
            "/run/secrets/billing"
        );
        assert_eq!(v["signed_requests"]["apps"][0]["id"], "billing");
        assert_eq!(v["guard"]["routes"][0]["credentials"][1], "api_key");
        assert_eq!(v["guard"]["headers"]["api_key"], "x-api-key");
        assert!(redacted_config("not [toml").is_none());
    }
}
