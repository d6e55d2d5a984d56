//! One pass over the claims JSON: duplicates and depth checked, the claims a
//! principal needs extracted (borrowed where possible), the rest skipped.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::validation::ClaimNames;
use crate::jose::json::{CowStr, MemberNames, Skip, deeper};

/// `sub` as a string, or as an object `{uuid, email, name}` some issuers send.
#[derive(Default)]
pub(crate) struct Subject {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Default)]
pub(crate) struct ParsedClaims<'de> {
    pub sub: Option<Subject>,
    pub iss: Option<CowStr<'de>>,
    pub aud: Option<Vec<CowStr<'de>>>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub jti: Option<CowStr<'de>>,
    pub sid: Option<CowStr<'de>>,
    pub token_type: Option<CowStr<'de>>,
    pub tenant: Option<CowStr<'de>>,
    pub email: Option<CowStr<'de>>,
    pub name: Option<CowStr<'de>>,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub scopes: Vec<String>,
    /// Claims outside the known slots, for duplicate detection and presence.
    pub names: MemberNames<'de>,
    /// Bit per known slot seen.
    pub known: u16,
}

const SUB: u8 = 0;
const ISS: u8 = 1;
const AUD: u8 = 2;
const EXP: u8 = 3;
const NBF: u8 = 4;
const IAT: u8 = 5;
const JTI: u8 = 6;
const SID: u8 = 7;
const TYPE: u8 = 8;
const TENANT: u8 = 9;
const EMAIL: u8 = 10;
const NAME: u8 = 11;
const ROLES: u8 = 12;
const PERMISSIONS: u8 = 13;
const SCOPE: u8 = 14;
const SCP: u8 = 15;

/// The slot of a claim the principal is built from; `None` for any other claim.
fn known_slot(k: &str, n: &ClaimNames) -> Option<u8> {
    Some(match k {
        "sub" => SUB,
        "iss" => ISS,
        "aud" => AUD,
        "exp" => EXP,
        "nbf" => NBF,
        "iat" => IAT,
        "jti" => JTI,
        "sid" => SID,
        _ if k == n.token_type => TYPE,
        _ if k == n.tenant => TENANT,
        _ if k == n.email => EMAIL,
        _ if k == n.name => NAME,
        _ if k == n.roles => ROLES,
        _ if k == n.permissions => PERMISSIONS,
        _ if k == n.scope => SCOPE,
        _ if k == n.scp => SCP,
        _ => return None,
    })
}

impl ParsedClaims<'_> {
    /// Whether the claims hold a member called `name`.
    pub(crate) fn has(&self, name: &str, n: &ClaimNames) -> bool {
        match known_slot(name, n) {
            Some(slot) => self.known & (1 << slot) != 0,
            None => self.names.contains(name),
        }
    }
}

pub(crate) struct ClaimsSeed<'a> {
    pub names: &'a ClaimNames,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = ParsedClaims<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = ParsedClaims<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let depth = deeper(0)?;
        let n = self.names;
        let mut c = ParsedClaims {
            // Unknown claims only: the usual token allocates nothing here.
            names: MemberNames::default(),
            ..ParsedClaims::default()
        };
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let Some(slot) = known_slot(key.as_str(), n) else {
                map.next_value_seed(Skip { depth })?;
                c.names.insert(key)?;
                continue;
            };
            if c.known & (1 << slot) != 0 {
                return Err(de::Error::custom("duplicate member name"));
            }
            c.known |= 1 << slot;
            match slot {
                SUB => c.sub = Some(map.next_value_seed(SubjectSeed { depth })?),
                ISS => c.iss = Some(map.next_value()?),
                AUD => {
                    c.aud = Some(map.next_value_seed(Strings {
                        split: false,
                        depth,
                    })?)
                }
                EXP => c.exp = Some(map.next_value_seed(NumericDate)?),
                NBF => c.nbf = Some(map.next_value_seed(NumericDate)?),
                IAT => c.iat = Some(map.next_value_seed(NumericDate)?),
                JTI => c.jti = Some(map.next_value()?),
                SID => c.sid = Some(map.next_value()?),
                TYPE => c.token_type = Some(map.next_value()?),
                TENANT => c.tenant = Some(map.next_value()?),
                EMAIL => c.email = Some(map.next_value()?),
                NAME => c.name = Some(map.next_value()?),
                ROLES => {
                    c.roles = owned(map.next_value_seed(Strings {
                        split: false,
                        depth,
                    })?)
                }
                PERMISSIONS => {
                    c.permissions = owned(map.next_value_seed(Strings {
                        split: false,
                        depth,
                    })?);
                }
                _ => {
                    let scopes = owned(map.next_value_seed(Strings { split: true, depth })?);
                    c.scopes.extend(scopes);
                }
            }
        }
        Ok(c)
    }
}

fn owned(v: Vec<CowStr<'_>>) -> Vec<String> {
    v.into_iter().map(|s| s.0.into_owned()).collect()
}

/// A NumericDate: an integer or a finite number of seconds (fractions floored).
struct NumericDate;

impl<'de> DeserializeSeed<'de> for NumericDate {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NumericDate {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a NumericDate")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("NumericDate out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // Beyond ±2^53 seconds the value is nonsense; reject instead of saturating.
        if v.is_finite() && v.abs() < 9.0e15 {
            Ok(v.floor() as i64)
        } else {
            Err(E::custom("NumericDate out of range"))
        }
    }
}

/// A string or an array of strings; with `split`, a string is a
/// space-separated list (the OAuth `scope` form).
struct Strings {
    split: bool,
    depth: u8,
}

impl<'de> DeserializeSeed<'de> for Strings {
    type Value = Vec<CowStr<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strings {
    type Value = Vec<CowStr<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        if self.split {
            Ok(v.split_ascii_whitespace()
                .map(|s| CowStr(s.into()))
                .collect())
        } else {
            Ok(vec![CowStr(v.into())])
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.split {
            Ok(v.split_ascii_whitespace()
                .map(|s| CowStr(s.to_owned().into()))
                .collect())
        } else {
            Ok(vec![CowStr(v.to_owned().into())])
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        deeper::<A::Error>(self.depth)?;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while let Some(s) = seq.next_element::<CowStr<'de>>()? {
            out.push(s);
        }
        Ok(out)
    }
}

struct SubjectSeed {
    depth: u8,
}

impl<'de> DeserializeSeed<'de> for SubjectSeed {
    type Value = Subject;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Subject, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SubjectSeed {
    type Value = Subject;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a subject string or object")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Subject, E> {
        Ok(Subject {
            id: Some(v.to_owned()),
            ..Subject::default()
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Subject, A::Error> {
        let depth = deeper(self.depth)?;
        let mut names = MemberNames::with_capacity(4);
        let mut s = Subject::default();
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            match key.as_str() {
                "uuid" | "id" => s.id = Some(map.next_value::<CowStr<'de>>()?.0.into_owned()),
                "email" => s.email = Some(map.next_value::<CowStr<'de>>()?.0.into_owned()),
                "name" => s.name = Some(map.next_value::<CowStr<'de>>()?.0.into_owned()),
                _ => map.next_value_seed(Skip { depth })?,
            }
            names.insert(key)?;
        }
        Ok(s)
    }
}
