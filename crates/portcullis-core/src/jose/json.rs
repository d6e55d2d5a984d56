//! Strict JSON for JOSE: objects only, no duplicate member names at any depth,
//! bounded nesting. Strings are borrowed from the input when they hold no escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The deepest nesting of arrays and objects accepted in a header or claims set.
pub const MAX_JSON_DEPTH: u8 = 16;

/// A string borrowed from the input where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CowStr<'de>(pub Cow<'de, str>);

impl CowStr<'_> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Records member names of one object and rejects a repeated one.
#[derive(Default)]
pub(crate) struct MemberNames<'de> {
    seen: Vec<CowStr<'de>>,
}

impl<'de> MemberNames<'de> {
    /// Records `name`, refusing one already seen.
    pub(crate) fn insert(&mut self, name: CowStr<'de>) -> Result<(), super::scan::JsonError> {
        if self.seen.iter().any(|s| s.0 == name.0) {
            return Err(super::scan::JsonError("duplicate member name"));
        }
        self.seen.push(name);
        Ok(())
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.seen.iter().any(|s| s.as_str() == name)
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            seen: Vec::with_capacity(n),
        }
    }
}

pub(crate) fn deeper<E: de::Error>(depth: u8) -> Result<u8, E> {
    if depth >= MAX_JSON_DEPTH {
        Err(E::custom("nesting too deep"))
    } else {
        Ok(depth + 1)
    }
}

/// Builds a [`Value`]: no duplicate member names at any depth, bounded nesting.
#[derive(Clone, Copy)]
pub(crate) struct StrictValue {
    pub depth: u8,
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = deeper(self.depth)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue { depth })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = deeper(self.depth)?;
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.contains_key(&name) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let v = map.next_value_seed(StrictValue { depth })?;
            out.insert(name, v);
        }
        Ok(Value::Object(out))
    }
}

/// Runs `seed` over all of `bytes`, rejecting trailing data.
pub(crate) fn parse_with<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Parses a JSON object strictly (no duplicate names, bounded depth).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    match parse_with(bytes, StrictValue { depth: 0 })? {
        Value::Object(map) => Ok(map),
        _ => Err(de::Error::custom("expected a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_rejected_at_any_depth_even_when_escaped() {
        assert!(parse_object(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_object(br#"{"a":1,"\u0061":2}"#).is_err());
        assert!(parse_object(br#"{"x":{"b":[{"c":1,"c":1}]}}"#).is_err());
        assert!(parse_object(br#"{"a":1,"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}1{}", "[".repeat(15), "]".repeat(15));
        let ok = format!(r#"{{"a":{ok}}}"#);
        assert!(parse_object(ok.as_bytes()).is_ok());
        let bomb = format!(r#"{{"a":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000));
        assert!(parse_object(bomb.as_bytes()).is_err());
    }

    #[test]
    fn non_objects_and_trailing_data_are_rejected() {
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"\"s\"").is_err());
        assert!(parse_object(b"{} {}").is_err());
        assert!(parse_object(b"{\"a\":\"\xff\"}").is_err());
    }
}
