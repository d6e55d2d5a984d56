//! Errors located at a file's line, column and dotted key: `ConfigError`,
//! `ConfigErrors`, and the TOML-span bookkeeping that finds them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One thing wrong with a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The dotted key, when known (`guard.routes[2].path`).
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        // A value quoted back may be a URL with a password in it.
        write!(f, ": {}", crate::redact::redact(&self.message))
    }
}

/// Every error of a file that did not load.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(super) struct Locator<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) overrides: &'a [(String, String)],
}

impl Locator<'_> {
    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        if let Some((name, _)) = span
            .as_ref()
            .and_then(|s| s.start.checked_sub(self.text.len()))
            .and_then(|i| self.overrides.get(i))
        {
            return ConfigError {
                file: self.file.to_path_buf(),
                line: None,
                column: None,
                key,
                message: format!("{message} (set by the environment variable {name})"),
            };
        }
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    }
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// serde's "unknown field `x`, expected one of `a`, `b`" → (`x`, [a, b]).
pub(super) fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

pub(super) fn unknown_key_message(field: &str, expected: &[String]) -> String {
    let mut message = format!("unknown key `{field}`");
    match suggest(field, expected) {
        Some(s) => message.push_str(&format!("; did you mean `{s}`?")),
        None if expected.is_empty() => message.push_str("; this table takes no keys"),
        None => message.push_str(&format!("; known keys here: {}", expected.join(", "))),
    }
    message
}

/// The known key closest to `unknown`, when close enough to be a typo.
pub fn suggest<'a>(unknown: &str, known: &'a [String]) -> Option<&'a str> {
    let unknown_l = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&unknown_l, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len().max(unknown.len()) / 3).max(1) + 1 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, with adjacent transpositions counting one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// The dotted path of the deepest key whose key or value contains `offset`.
pub(super) fn key_path(table: &DeTable<'_>, offset: usize) -> Option<String> {
    fn walk_value(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
        match v.get_ref() {
            DeValue::Table(t) => {
                if let Some(p) = walk_table(t, offset) {
                    path.push('.');
                    path.push_str(&p);
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if item.span().contains(&offset) || table_contains(item, offset) {
                        path.push_str(&format!("[{i}]"));
                        walk_value(item, offset, path);
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    fn table_contains(v: &Spanned<DeValue<'_>>, offset: usize) -> bool {
        match v.get_ref() {
            DeValue::Table(t) => t.iter().any(|(k, v)| {
                k.span().contains(&offset)
                    || v.span().contains(&offset)
                    || table_contains(v, offset)
            }),
            DeValue::Array(items) => items
                .iter()
                .any(|i| i.span().contains(&offset) || table_contains(i, offset)),
            _ => false,
        }
    }
    fn walk_table(t: &DeTable<'_>, offset: usize) -> Option<String> {
        for (k, v) in t.iter() {
            if k.span().contains(&offset) {
                return Some(k.get_ref().to_string());
            }
            if v.span().contains(&offset) || table_contains(v, offset) {
                let mut path = k.get_ref().to_string();
                walk_value(v, offset, &mut path);
                return Some(path);
            }
        }
        None
    }
    walk_table(table, offset)
}

/// Removes the key whose name starts at `offset`; whether one was found.
pub(super) fn remove_key_at(table: &mut DeTable<'_>, offset: usize) -> bool {
    let found = table
        .iter()
        .find(|(k, _)| k.span().contains(&offset))
        .map(|(k, _)| k.clone());
    if let Some(k) = found {
        table.remove(&k);
        return true;
    }
    for (_, v) in table.iter_mut() {
        if remove_in_value(v.get_mut(), offset) {
            return true;
        }
    }
    false
}

fn remove_in_value(v: &mut DeValue<'_>, offset: usize) -> bool {
    match v {
        DeValue::Table(t) => remove_key_at(t, offset),
        DeValue::Array(items) => items
            .iter_mut()
            .any(|i| remove_in_value(i.get_mut(), offset)),
        _ => false,
    }
}

/// An error about the dotted `key` of `file` (whose contents are `text`),
/// located at the key when the file holds it: for checks made after
/// loading (`config check` reading the files a key names).
pub fn error_at_key(file: &Path, text: &str, key: String, message: String) -> ConfigError {
    let span = DeTable::parse(text)
        .ok()
        .and_then(|doc| key_span(doc.get_ref(), &key));
    let locate = Locator {
        file,
        text,
        overrides: &[],
    };
    locate.error(span, Some(key), message)
}

/// The span of the dotted `key` (`a.b[1].c`), or of its nearest existing parent.
pub(super) fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let mut best = None;
    let mut current: Option<&DeTable<'_>> = Some(table);
    let mut value: Option<&Spanned<DeValue<'_>>>;
    for part in key.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let Some(t) = current else { break };
        let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            break;
        };
        best = Some(k.span());
        value = Some(v);
        for idx in indexes
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<usize>().ok())
        {
            match value.map(Spanned::get_ref) {
                Some(DeValue::Array(items)) => {
                    value = items.get(idx);
                    if let Some(item) = value {
                        best = Some(item.span());
                    }
                }
                _ => value = None,
            }
        }
        current = match value.map(Spanned::get_ref) {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_not_strangers() {
        let known: Vec<String> = ["listen", "ops_listen", "max_body_bytes"]
            .map(String::from)
            .to_vec();
        assert_eq!(suggest("lisen", &known), Some("listen"));
        assert_eq!(suggest("ops_lsiten", &known), Some("ops_listen"));
        assert_eq!(suggest("max_bdoy_bytes", &known), Some("max_body_bytes"));
        assert_eq!(suggest("completely_else", &known), None);
    }

    #[test]
    fn unknown_field_messages_parse() {
        let (f, e) =
            parse_unknown_field("unknown field `lisen`, expected one of `listen`, `ops_listen`")
                .unwrap();
        assert_eq!(f, "lisen");
        assert_eq!(e, ["listen", "ops_listen"]);
        let (_, e) = parse_unknown_field("unknown field `x`, expected `a` or `b`").unwrap();
        assert_eq!(e, ["a", "b"]);
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
