//! One pass over the claims JSON: duplicates and depth checked, the claims a
//! principal needs extracted (borrowed where possible), the rest skipped.

use std::borrow::Cow;

use super::validation::ClaimNames;
use crate::jose::json::{CowStr, MemberNames};
use crate::jose::scan::{JsonError, Number, Result, Scanner};

/// `sub` as a string, or as an object `{uuid, email, name}` some issuers send.
#[derive(Default)]
pub(crate) struct Subject {
    pub id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// `aud`: one string (the usual case, kept without allocating) or an array.
pub(crate) enum Audience<'de> {
    One(CowStr<'de>),
    Many(Vec<CowStr<'de>>),
}

impl Audience<'_> {
    pub(crate) fn contains_any(&self, ours: &[String]) -> bool {
        let ok = |a: &CowStr<'_>| ours.iter().any(|o| o == a.as_str());
        match self {
            Self::One(a) => ok(a),
            Self::Many(all) => all.iter().any(ok),
        }
    }
}

#[derive(Default)]
pub(crate) struct ParsedClaims<'de> {
    pub sub: Option<Subject>,
    pub iss: Option<CowStr<'de>>,
    pub aud: Option<Audience<'de>>,
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

/// Parses a claims set in one strict pass (see [`crate::jose::scan`]).
pub(crate) fn parse_claims<'a>(bytes: &'a [u8], n: &ClaimNames) -> Result<ParsedClaims<'a>> {
    let mut s = Scanner::new(bytes)?;
    let mut c = ParsedClaims::default();
    s.object(0, |s, key, depth| {
        let Some(slot) = known_slot(key.as_str(), n) else {
            s.skip(depth)?;
            return c.names.insert(key);
        };
        if c.known & (1 << slot) != 0 {
            return Err(JsonError("duplicate member name"));
        }
        c.known |= 1 << slot;
        match slot {
            SUB => c.sub = Some(subject(s, depth)?),
            ISS => c.iss = Some(s.string()?),
            AUD => {
                c.aud = Some(if s.peek() == Some(b'[') {
                    Audience::Many(strings(s, depth, false)?)
                } else {
                    Audience::One(s.string()?)
                })
            }
            EXP => c.exp = Some(numeric_date(s)?),
            NBF => c.nbf = Some(numeric_date(s)?),
            IAT => c.iat = Some(numeric_date(s)?),
            JTI => c.jti = Some(s.string()?),
            SID => c.sid = Some(s.string()?),
            TYPE => c.token_type = Some(s.string()?),
            TENANT => c.tenant = Some(s.string()?),
            EMAIL => c.email = Some(s.string()?),
            NAME => c.name = Some(s.string()?),
            ROLES => c.roles = owned(strings(s, depth, false)?),
            PERMISSIONS => c.permissions = owned(strings(s, depth, false)?),
            _ => c.scopes.extend(owned(strings(s, depth, true)?)),
        }
        Ok(())
    })?;
    s.end()?;
    Ok(c)
}

fn owned(v: Vec<CowStr<'_>>) -> Vec<String> {
    v.into_iter().map(|s| s.0.into_owned()).collect()
}

/// A NumericDate: an integer or a finite number of seconds (fractions floored).
fn numeric_date(s: &mut Scanner<'_>) -> Result<i64> {
    match s.number()? {
        Number::Int(v) => Ok(v),
        // Beyond ±2^53 seconds the value is nonsense; reject instead of saturating.
        Number::Float(v) if v.abs() < 9.0e15 => Ok(v.floor() as i64),
        Number::Float(_) => Err(JsonError("NumericDate out of range")),
    }
}

/// A string or an array of strings; with `split`, a string is a
/// space-separated list (the OAuth `scope` form).
fn strings<'a>(s: &mut Scanner<'a>, depth: u8, split: bool) -> Result<Vec<CowStr<'a>>> {
    if s.peek() == Some(b'[') {
        let mut out = Vec::with_capacity(4);
        s.array(depth, |s, _| {
            out.push(s.string()?);
            Ok(())
        })?;
        return Ok(out);
    }
    Ok(match s.string()? {
        CowStr(v) if !split => vec![CowStr(v)],
        CowStr(Cow::Borrowed(v)) => v
            .split_ascii_whitespace()
            .map(|p| CowStr(p.into()))
            .collect(),
        CowStr(Cow::Owned(v)) => v
            .split_ascii_whitespace()
            .map(|p| CowStr(p.to_owned().into()))
            .collect(),
    })
}

/// `sub` as a string, or as an object `{uuid | id, email, name}`.
fn subject(s: &mut Scanner<'_>, depth: u8) -> Result<Subject> {
    if s.peek() != Some(b'{') {
        return Ok(Subject {
            id: Some(s.string()?.0.into_owned()),
            ..Subject::default()
        });
    }
    let mut names = MemberNames::with_capacity(4);
    let mut sub = Subject::default();
    s.object(depth, |s, key, inner| {
        match key.as_str() {
            // Both would leave the subject ambiguous: refuse, never pick one.
            "uuid" | "id" if sub.id.is_some() => {
                return Err(JsonError("`sub` has both `uuid` and `id`"));
            }
            "uuid" | "id" => sub.id = Some(s.string()?.0.into_owned()),
            "email" => sub.email = Some(s.string()?.0.into_owned()),
            "name" => sub.name = Some(s.string()?.0.into_owned()),
            _ => s.skip(inner)?,
        }
        names.insert(key)
    })?;
    Ok(sub)
}
