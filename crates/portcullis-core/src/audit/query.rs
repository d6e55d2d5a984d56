//! Audit queries: filters, newest-first order and keyset (cursor) pagination.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{AuditEvent, Decision};

/// Largest page a query may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Page size when none is given.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Why a query is refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The page size is 0 or above [`MAX_PAGE_SIZE`].
    #[error("page size {0} is out of range; ask for 1 to 1000 events")]
    PageSize(usize),
    /// The cursor was not produced by a previous page.
    #[error("invalid cursor; pass the `next` value of a previous page unchanged")]
    Cursor,
    /// The time range is empty.
    #[error("`since` is after `until`; swap them")]
    TimeRange,
}

/// Where the previous page ended: the (timestamp, id) of its last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp (µs) of the last event returned.
    pub ts_us: i64,
    /// Id of the last event returned.
    pub id: String,
}

impl Cursor {
    /// The cursor after `event`.
    pub fn after(event: &AuditEvent) -> Self {
        Self {
            ts_us: event.ts_us,
            id: event.id.clone(),
        }
    }

    /// Opaque text form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.ts_us, self.id))
    }

    /// Parses [`Cursor::encode`] output.
    pub fn decode(text: &str) -> Result<Self, QueryError> {
        if text.len() > 128 {
            return Err(QueryError::Cursor);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| QueryError::Cursor)?;
        let raw = String::from_utf8(raw).map_err(|_| QueryError::Cursor)?;
        let (ts, id) = raw.split_once('.').ok_or(QueryError::Cursor)?;
        let ts_us = ts.parse().map_err(|_| QueryError::Cursor)?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(QueryError::Cursor);
        }
        Ok(Self {
            ts_us,
            id: id.to_owned(),
        })
    }
}

/// A question to the audit log. Every filter set must hold (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Exactly this subject.
    pub subject: Option<String>,
    /// Exactly this client IP.
    pub client_ip: Option<String>,
    /// Paths starting with this.
    pub path_prefix: Option<String>,
    /// At or after (µs since the epoch).
    pub since_us: Option<i64>,
    /// Before (µs since the epoch, exclusive).
    pub until_us: Option<i64>,
    /// Exactly this status.
    pub status: Option<u16>,
    /// Exactly this decision.
    pub decision: Option<Decision>,
    /// Exactly this reason code.
    pub code: Option<String>,
    /// Only events some anomaly detector flagged.
    pub anomalies_only: bool,
    /// Only events a rate limit rejected.
    pub rate_limited_only: bool,
    /// At most this many events (1..=[`MAX_PAGE_SIZE`]).
    pub limit: usize,
    /// Continue after a previous page.
    pub cursor: Option<Cursor>,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            subject: None,
            client_ip: None,
            path_prefix: None,
            since_us: None,
            until_us: None,
            status: None,
            decision: None,
            code: None,
            anomalies_only: false,
            rate_limited_only: false,
            limit: DEFAULT_PAGE_SIZE,
            cursor: None,
        }
    }
}

impl AuditQuery {
    /// Checks the page size and time range.
    pub fn validate(&self) -> Result<(), QueryError> {
        if self.limit == 0 || self.limit > MAX_PAGE_SIZE {
            return Err(QueryError::PageSize(self.limit));
        }
        if let (Some(s), Some(u)) = (self.since_us, self.until_us)
            && s > u
        {
            return Err(QueryError::TimeRange);
        }
        Ok(())
    }

    /// Whether `event` passes every filter (cursor included); the reference
    /// semantics every store implements.
    pub fn matches(&self, e: &AuditEvent) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        eq(&self.subject, &e.subject)
            && eq(&self.client_ip, &e.client_ip)
            && eq(&self.code, &e.code)
            && self.path_prefix.as_ref().is_none_or(|p| {
                e.path
                    .as_ref()
                    .is_some_and(|path| path.starts_with(p.as_str()))
            })
            && self.since_us.is_none_or(|s| e.ts_us >= s)
            && self.until_us.is_none_or(|u| e.ts_us < u)
            && self.status.is_none_or(|s| e.status == Some(s))
            && self.decision.is_none_or(|d| e.decision == d)
            && (!self.anomalies_only || !e.anomaly_flags.is_empty())
            && (!self.rate_limited_only || e.is_rate_limited())
            && self
                .cursor
                .as_ref()
                .is_none_or(|c| (e.ts_us, e.id.as_str()) < (c.ts_us, c.id.as_str()))
    }
}

/// One page of results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditPage {
    /// The events.
    pub events: Vec<AuditEvent>,
    /// Cursor of the next page, `None` on the last one.
    pub next: Option<String>,
}

impl AuditPage {
    /// Builds a page from up to `limit + 1` rows fetched newest first.
    pub fn from_rows(mut rows: Vec<AuditEvent>, limit: usize) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = if more {
            rows.last().map(|e| Cursor::after(e).encode())
        } else {
            None
        };
        Self { events: rows, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = Cursor {
            ts_us: 123,
            id: "00ff".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in [
            "",
            "!!",
            "MTIz",
            &URL_SAFE_NO_PAD.encode("x.1"),
            &URL_SAFE_NO_PAD.encode("1.a'b"),
        ] {
            assert_eq!(Cursor::decode(bad), Err(QueryError::Cursor), "{bad}");
        }
    }

    #[test]
    fn page_size_is_bounded() {
        let mut q = AuditQuery::default();
        assert!(q.validate().is_ok());
        q.limit = 0;
        assert_eq!(q.validate(), Err(QueryError::PageSize(0)));
        q.limit = 1001;
        assert_eq!(q.validate(), Err(QueryError::PageSize(1001)));
        q.limit = 1000;
        q.since_us = Some(2);
        q.until_us = Some(1);
        assert_eq!(q.validate(), Err(QueryError::TimeRange));
    }

    #[test]
    fn matches_applies_every_filter() {
        let mut e = AuditEvent::new(EventKind::Request, 10, Decision::Deny);
        e.path = Some("/api/x".into());
        e.code = Some("rate_limit.exceeded".into());
        let q = AuditQuery {
            path_prefix: Some("/api".into()),
            rate_limited_only: true,
            decision: Some(Decision::Deny),
            since_us: Some(10),
            until_us: Some(11),
            ..AuditQuery::default()
        };
        assert!(q.matches(&e));
        assert!(
            !AuditQuery {
                anomalies_only: true,
                ..q.clone()
            }
            .matches(&e)
        );
        assert!(
            !AuditQuery {
                until_us: Some(10),
                ..q.clone()
            }
            .matches(&e)
        );
        assert!(
            !AuditQuery {
                path_prefix: Some("/b".into()),
                ..q
            }
            .matches(&e)
        );
    }
}
