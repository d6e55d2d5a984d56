//! `PORTCULLIS_SECTION__KEY` environment overrides and `*_file` secrets,
//! applied to the TOML document before it is typed.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "PORTCULLIS_";

/// The keys whose value may instead be read from a file named by the same
/// key with `_file` appended (`storage.url_file`): a secret then stays out
/// of the configuration file and the environment. (`storage.pepper_file`
/// is a file only: the pepper is binary.)
pub const SECRET_KEYS: &[&str] = &["storage.url", "storage.redis"];

/// The largest secret file read (64 KiB): a secret is a line, not a dump.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The `PORTCULLIS_SECTION__KEY[__KEY…]=VALUE` variables of `vars`, sorted:
/// `__` separates the path's segments; a variable without `__` (such as
/// `PORTCULLIS_REDIS_URL`) is not a configuration override.
pub fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .filter(|(k, _)| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect();
    out.sort();
    out
}

/// Replaces `SECTION.NAME_file = "PATH"` with `SECTION.NAME = <the file's
/// contents>` (one trailing newline trimmed, at most
/// [`MAX_SECRET_FILE_BYTES`]); setting both is an error.
pub(super) fn read_secret_file(
    doc: &mut DeTable<'_>,
    key: &str,
) -> Result<(), (Option<Range<usize>>, String, String)> {
    let Some((section, name)) = key.split_once('.') else {
        return Ok(());
    };
    let Some(DeValue::Table(table)) = doc.get_mut(section).map(Spanned::get_mut) else {
        return Ok(());
    };
    let file_key = format!("{name}_file");
    let Some(file_value) = table.get(file_key.as_str()) else {
        return Ok(());
    };
    let span = file_value.span();
    let dotted = format!("{section}.{file_key}");
    if table.get(name).is_some() {
        return Err((
            Some(span),
            dotted,
            format!("set either `{key}` or `{key}_file`, not both"),
        ));
    }
    let DeValue::String(path) = file_value.get_ref() else {
        return Err((Some(span), dotted, "must be a file path (a string)".into()));
    };
    let path = PathBuf::from(path.as_ref());
    let secret = read_secret(&path).map_err(|m| (Some(span.clone()), dotted.clone(), m))?;
    table.remove(file_key.as_str());
    table.insert(
        Spanned::new(span.clone(), std::borrow::Cow::Owned(name.to_owned())),
        Spanned::new(span, DeValue::String(std::borrow::Cow::Owned(secret))),
    );
    Ok(())
}

/// The contents of a secret file: UTF-8, bounded, one trailing newline trimmed.
pub(super) fn read_secret(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "`{}` is larger than {MAX_SECRET_FILE_BYTES} bytes; a secret file holds one value",
            path.display()
        ));
    }
    let mut text =
        String::from_utf8(bytes).map_err(|_| format!("`{}` is not UTF-8 text", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("`{}` is empty", path.display()));
    }
    Ok(text)
}

/// Sets the key `name` (`PORTCULLIS_A__B__C`) names to `value`: a TOML
/// value when it parses as one (`8080`, `true`, `["a", "b"]`), else a string.
pub(super) fn apply_override<'i>(
    doc: &mut DeTable<'i>,
    name: &'i str,
    value: &'i str,
    span: Range<usize>,
) -> Result<(), String> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("`{name}` has an empty segment"));
    }
    let parsed = match DeValue::parse(value) {
        Ok(v) => respan(v.into_inner(), &span),
        Err(_) => DeValue::String(std::borrow::Cow::Borrowed(value)),
    };
    let (last, parents) = path.split_last().ok_or("empty")?;
    if last.parse::<usize>().is_ok() {
        return Err(format!(
            "`{name}` ends with an index; set one key of the entry, e.g. {name}__MODE"
        ));
    }
    let mut table = doc;
    let mut depth = 0;
    while depth < parents.len() {
        let segment = &parents[depth];
        if table.get(segment.as_str()).is_none() {
            let key = Spanned::new(span.clone(), std::borrow::Cow::Owned(segment.clone()));
            table.insert(
                key,
                Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
            );
        }
        let mut value = table.get_mut(segment.as_str()).map(Spanned::get_mut);
        // An array of tables (`[[guard.routes]]`) is entered by index:
        // PORTCULLIS_GUARD__ROUTES__0__MODE.
        while let Some(DeValue::Array(items)) = value {
            let here = path[..=depth].join(".");
            let Some(index) = parents.get(depth + 1).and_then(|s| s.parse::<usize>().ok()) else {
                return Err(format!(
                    "`{here}` is an array of tables, so {name} must name an entry by its index, as in PORTCULLIS_GUARD__ROUTES__0__MODE"
                ));
            };
            let len = items.len();
            value = items.get_mut(index).map(Spanned::get_mut);
            if value.is_none() {
                return Err(format!(
                    "`{here}` has {len} entries, so {name} cannot set entry {index}; overrides change entries of the file, they do not add any"
                ));
            }
            depth += 1;
        }
        match value {
            Some(DeValue::Table(t)) => table = t,
            _ => {
                return Err(format!(
                    "`{}` is not a table, so {name} cannot set a key under it",
                    path[..=depth].join(".")
                ));
            }
        }
        depth += 1;
    }
    table.remove(last.as_str());
    table.insert(
        Spanned::new(span.clone(), std::borrow::Cow::Owned(last.clone())),
        Spanned::new(span.clone(), parsed),
    );
    Ok(())
}

/// `value` with every nested span replaced by `span`.
fn respan<'i>(mut value: DeValue<'i>, span: &Range<usize>) -> DeValue<'i> {
    match &mut value {
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                let inner = std::mem::replace(item.get_mut(), DeValue::Boolean(false));
                *item = Spanned::new(span.clone(), respan(inner, span));
            }
        }
        DeValue::Table(t) => {
            for (_, v) in t.iter_mut() {
                let inner = std::mem::replace(v.get_mut(), DeValue::Boolean(false));
                *v = Spanned::new(span.clone(), respan(inner, span));
            }
        }
        _ => {}
    }
    value
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::{parse, parse_with};

    #[test]
    fn environment_overrides_replace_keys_and_errors_name_the_variable() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = portcullis_core::Key::generate(portcullis_core::Algorithm::ES256).unwrap();
        std::fs::write(dir.join("k1.pem"), key.private_pkcs8_pem().unwrap()).unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n",
            dir.display()
        );
        let text = text.as_str();
        let vars = [
            ("PORTCULLIS_SERVER__LISTEN", "127.0.0.1:7777"),
            ("PORTCULLIS_SERVER__MAX_BODY_BYTES", "2048"),
            (
                "PORTCULLIS_GUARD__CLIENT_IP__TRUSTED_PROXIES",
                "[\"10.0.0.0/8\"]",
            ),
            ("PORTCULLIS_REDIS_URL", "redis://not-a-config-key"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let overrides = env_overrides(vars.into_iter());
        assert_eq!(overrides.len(), 3);
        let config = parse_with(Path::new("p.toml"), text, &overrides).unwrap();
        assert_eq!(config.server.listen.port(), 7777);
        assert_eq!(config.server.max_body_bytes, 2048);
        assert!(
            config
                .guard
                .client_ip
                .is_trusted("10.1.2.3".parse().unwrap())
        );

        let bad =
            env_overrides([("PORTCULLIS_SERVER__LISEN".to_owned(), "x".to_owned())].into_iter());
        let errs = parse_with(Path::new("p.toml"), text, &bad).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, None);
        assert!(
            errs[0].message.contains("did you mean `listen`"),
            "{}",
            errs[0].message
        );
        assert!(
            errs[0].message.contains("PORTCULLIS_SERVER__LISEN"),
            "{}",
            errs[0].message
        );
    }

    fn key_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = portcullis_core::Key::generate(portcullis_core::Algorithm::ES256).unwrap();
        std::fs::write(dir.join("k1.pem"), key.private_pkcs8_pem().unwrap()).unwrap();
        dir
    }

    #[test]
    fn secrets_come_from_files_bounded_and_never_twice() {
        let dir = key_dir("secrets");
        let url = dir.join("url");
        std::fs::write(&url, "sqlite:///tmp/portcullis-secret-test.db\r\n").unwrap();
        let redis = dir.join("redis");
        std::fs::write(&redis, "redis://:s3cret@127.0.0.1:6379\n").unwrap();
        let pepper = dir.join("pepper");
        std::fs::write(&pepper, [7u8; 32]).unwrap();
        let head = format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n\n[storage]\npepper_file = \"{}\"\n",
            dir.display(),
            pepper.display()
        );
        let text = format!(
            "{head}url_file = \"{}\"\nredis_file = \"{}\"\n",
            url.display(),
            redis.display()
        );
        let config = parse(Path::new("p.toml"), &text).unwrap();
        // One trailing newline trimmed; the value checked like the key's own.
        assert_eq!(
            config.storage.url,
            "sqlite:///tmp/portcullis-secret-test.db"
        );
        assert_eq!(
            config.storage.redis.as_deref(),
            Some("redis://:s3cret@127.0.0.1:6379")
        );

        // Both the key and its file: an error at the `_file` line.
        let both = format!("{head}url = \"memory\"\nurl_file = \"{}\"\n", url.display());
        let errs = parse(Path::new("p.toml"), &both).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key.as_deref(), Some("storage.url_file"));
        assert_eq!(errs[0].line, Some(8));
        assert!(errs[0].message.contains("not both"), "{}", errs[0].message);

        // A missing file names the key and the path.
        let missing = dir.join("nope");
        let text = format!("{head}redis_file = \"{}\"\n", missing.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert_eq!(errs[0].key.as_deref(), Some("storage.redis_file"));
        assert!(
            errs[0].message.contains(&missing.display().to_string()),
            "{}",
            errs[0].message
        );

        // Too large, or empty: refused.
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let text = format!("{head}url_file = \"{}\"\n", big.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert!(
            errs[0].message.contains("larger than"),
            "{}",
            errs[0].message
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let text = format!("{head}url_file = \"{}\"\n", empty.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert!(errs[0].message.contains("is empty"), "{}", errs[0].message);

        // A file holding a bad value is refused like the value itself.
        std::fs::write(&url, "mysql://x\n").unwrap();
        let text = format!("{head}url_file = \"{}\"\n", url.display());
        let errs = parse(Path::new("p.toml"), &text).unwrap_err().0;
        assert_eq!(errs[0].key.as_deref(), Some("storage.url"), "{errs:?}");

        // The `_file` key can come from the environment too.
        std::fs::write(&url, "memory\n").unwrap();
        let vars = [(
            "PORTCULLIS_STORAGE__URL_FILE".to_owned(),
            url.display().to_string(),
        )];
        let config =
            parse_with(Path::new("p.toml"), &head, &env_overrides(vars.into_iter())).unwrap();
        assert_eq!(config.storage.url, "memory");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn environment_overrides_reach_entries_of_arrays_of_tables() {
        let dir = key_dir("env-array");
        let text = format!(
            "[keys]\ndir = \"{}\"\nissuer = \"https://i.test\"\n\n[[guard.routes]]\nname = \"a\"\npath = \"/a\"\n\n[[guard.routes]]\nname = \"b\"\npath = \"/b\"\n\n[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:1\"\ndefault = true\n",
            dir.display()
        );
        let vars = |pairs: &[(&str, &str)]| {
            env_overrides(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        };
        let config = parse_with(
            Path::new("p.toml"),
            &text,
            &vars(&[
                ("PORTCULLIS_GUARD__ROUTES__1__MODE", "dry_run"),
                ("PORTCULLIS_GUARD__ROUTES__0__PATH", "/z"),
                ("PORTCULLIS_UPSTREAMS__0__URL", "http://127.0.0.1:2"),
            ]),
        )
        .unwrap();
        assert_eq!(config.guard.routes[0].path, "/z");
        assert_eq!(
            config.guard.routes[0].mode,
            portcullis::guard::Mode::Enforce
        );
        assert_eq!(config.guard.routes[1].mode, portcullis::guard::Mode::DryRun);
        assert_eq!(config.upstreams[0].url, "http://127.0.0.1:2");

        for (var, says) in [
            ("PORTCULLIS_GUARD__ROUTES__2__MODE", "has 2 entries"),
            ("PORTCULLIS_GUARD__ROUTES__MODE", "by its index"),
            ("PORTCULLIS_GUARD__ROUTES__0", "ends with an index"),
        ] {
            let errs = parse_with(Path::new("p.toml"), &text, &vars(&[(var, "x")]))
                .unwrap_err()
                .0;
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].message.contains(says), "{var}: {}", errs[0].message);
            assert!(errs[0].message.contains(var), "{}", errs[0].message);
        }
        // A bad value in an entry is located at the variable.
        let errs = parse_with(
            Path::new("p.toml"),
            &text,
            &vars(&[("PORTCULLIS_GUARD__ROUTES__0__MODE", "sometimes")]),
        )
        .unwrap_err()
        .0;
        assert!(
            errs[0]
                .message
                .contains("PORTCULLIS_GUARD__ROUTES__0__MODE"),
            "{}",
            errs[0].message
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
