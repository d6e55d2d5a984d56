//! Audit test support shared by `audit_sqlite.rs` and `audit_postgres.rs`:
//! a varied data set, the reference query semantics, and the secret check.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;

use portcullis::audit::{AuditEvent, AuditQuery, AuditStore, Cursor, Decision, EventKind};
use portcullis_core::audit::Grants;
use portcullis_core::audit::redact::Redactor;

/// A secret that must never appear in any sink.
pub const BEARER_SECRET: &str = "eyJhbGciOiJFUzI1NiJ9.c2VjcmV0LWJlYXJlcg.sig";
/// A secret query value that must never appear in any sink.
pub const QUERY_SECRET: &str = "qs-secret-9f8e7d";

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(crate::support::unique_name(label));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `i`th event of a bulk load: an allowed request from one of 100 subjects.
pub fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(
        EventKind::Request,
        1_795_000_000_000_000 + i as i64,
        Decision::Allow,
    );
    e.subject = Some(format!("user-{}", i % 100));
    e.path = Some("/api/load".into());
    e.status = Some(200);
    e
}

/// 240 events across subjects, IPs, paths, statuses, codes, flags and times,
/// with several events sharing a timestamp (to exercise the id tiebreak).
pub fn dataset() -> Vec<AuditEvent> {
    let subjects = ["alice", "bob", "carol"];
    let ips = ["10.0.0.1", "10.0.0.2", "2001:db8::1"];
    let paths = ["/api/orders/1", "/api/users/2", "/health", "/admin/keys"];
    let base = 1_795_000_000_000_000i64;
    (0..240)
        .map(|i: i64| {
            let deny = i % 5 == 0;
            let mut e = AuditEvent::new(
                if i % 17 == 0 {
                    EventKind::LoginFailed
                } else {
                    EventKind::Request
                },
                base + (i / 3) * 1_000_000, // three events per timestamp
                if deny {
                    Decision::Deny
                } else {
                    Decision::Allow
                },
            );
            let n = i as usize;
            e.subject = (i % 7 != 0).then(|| subjects[n % 3].to_owned());
            e.client_ip = Some(ips[n % 3].to_owned());
            e.path = Some(paths[n % 4].to_owned());
            e.method = Some("GET".into());
            e.route = Some("/api/{x}".into());
            e.request_id = Some(format!("req-{i}"));
            e.status = Some(if i % 10 == 0 {
                429
            } else if deny {
                401
            } else {
                200
            });
            e.code = if i % 10 == 0 {
                Some("rate_limit.exceeded".into())
            } else if deny {
                Some("auth.token_expired".into())
            } else {
                None
            };
            e.latency_us = Some(1000 + i);
            e.upstream_latency_us = (!deny).then_some(500 + i);
            e.tenant = Some("t1".into());
            e.auth_method = Some("jwt".into());
            e.credential_id = Some(format!("jti-{i}"));
            e.rate_limit_remaining = Some(100 - i % 100);
            if i % 11 == 0 {
                e.anomaly_flags = vec!["burst".into(), "scan".into()];
            }
            e.user_agent = Some("test-agent/1".into());
            // Schema v3: host, the caller's grants, the guard.
            e.host = Some(if i % 5 == 0 {
                String::new()
            } else {
                "api.example.com".into()
            });
            e.grants = e.subject.is_some().then(|| Grants {
                roles: vec!["viewer".into()],
                permissions: (0..n % 3).map(|k| format!("docs.p{k}")).collect(),
                scopes: Vec::new(),
                truncated: i % 13 == 0,
            });
            e.guard = (i % 17 == 0).then(|| "admin".into());
            e
        })
        .collect()
}

/// Every filter, alone and combined.
pub fn queries(data: &[AuditEvent]) -> Vec<AuditQuery> {
    let base = data.iter().map(|e| e.ts_us).min().unwrap();
    let q = AuditQuery::default;
    vec![
        q(),
        AuditQuery {
            subject: Some("alice".into()),
            ..q()
        },
        AuditQuery {
            client_ip: Some("2001:db8::1".into()),
            ..q()
        },
        AuditQuery {
            path_prefix: Some("/api/".into()),
            ..q()
        },
        AuditQuery {
            path_prefix: Some("/adm".into()),
            ..q()
        },
        AuditQuery {
            since_us: Some(base + 20_000_000),
            until_us: Some(base + 40_000_000),
            ..q()
        },
        AuditQuery {
            status: Some(429),
            ..q()
        },
        AuditQuery {
            decision: Some(Decision::Deny),
            ..q()
        },
        AuditQuery {
            code: Some("auth.token_expired".into()),
            ..q()
        },
        AuditQuery {
            anomalies_only: true,
            ..q()
        },
        AuditQuery {
            rate_limited_only: true,
            ..q()
        },
        AuditQuery {
            subject: Some("bob".into()),
            decision: Some(Decision::Allow),
            path_prefix: Some("/api".into()),
            since_us: Some(base + 5_000_000),
            ..q()
        },
        AuditQuery {
            subject: Some("nobody".into()),
            ..q()
        },
    ]
}

/// Reads every page of `query` (page size `limit`), checking each page's size.
pub async fn all_pages(
    store: &dyn AuditStore,
    mut query: AuditQuery,
    limit: usize,
) -> Vec<AuditEvent> {
    query.limit = limit;
    let mut out = Vec::new();
    loop {
        let page = store.query(&query).await.unwrap();
        assert!(page.events.len() <= limit);
        out.extend(page.events);
        match page.next {
            Some(next) => query.cursor = Some(Cursor::decode(&next).unwrap()),
            None => return out,
        }
    }
}

/// The reference answer: matching events, newest first.
pub fn expected(data: &[AuditEvent], query: &AuditQuery) -> Vec<AuditEvent> {
    let mut want: Vec<AuditEvent> = data.iter().filter(|e| query.matches(e)).cloned().collect();
    want.sort_by(|a, b| (b.ts_us, &b.id).cmp(&(a.ts_us, &a.id)));
    want
}

/// Writes the data set, then checks every query at two page sizes, plus the
/// page-size bound and idempotent re-writes.
pub async fn check_store(store: &dyn AuditStore, sink: &dyn portcullis::audit::AuditSink) {
    let data = dataset();
    sink.write_batch(&data[..100]).await.unwrap();
    sink.write_batch(&data[100..]).await.unwrap();
    // A replayed batch is a no-op.
    sink.write_batch(&data[50..150]).await.unwrap();
    for query in queries(&data) {
        let want = expected(&data, &query);
        for limit in [7, 1000] {
            let got = all_pages(store, query.clone(), limit).await;
            assert_eq!(got, want, "query {query:?} limit {limit}");
        }
    }
    let all = all_pages(store, AuditQuery::default(), 1000).await;
    assert_eq!(all.len(), data.len());
    let ids: HashSet<_> = all.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), data.len());
    let too_big = AuditQuery {
        limit: 1001,
        ..AuditQuery::default()
    };
    assert!(store.query(&too_big).await.is_err());
}

/// A request event built from an HTTP request that carries secrets in its
/// `Authorization` header and its query string.
pub fn secret_bearing_event(i: usize) -> AuditEvent {
    let req = http::Request::builder()
        .uri(format!(
            "/api/items/{i}?page=2&token={QUERY_SECRET}&access_token={QUERY_SECRET}&API_KEY={QUERY_SECRET}&password={QUERY_SECRET}&keep=yes"
        ))
        .header("authorization", format!("Bearer {BEARER_SECRET}"))
        .header("user-agent", "secret-test/1")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let mut e = portcullis::audit::request::request_event(
        &parts,
        Some("192.0.2.1".parse().unwrap()),
        &Redactor::default(),
        1_795_000_000_000_000 + i as i64,
    );
    e.status = Some(200);
    e
}

/// Asserts no secret occurs in `bytes`.
pub fn assert_no_secret(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        !text.contains(BEARER_SECRET),
        "{what} holds the bearer token"
    );
    assert!(
        !text.contains(QUERY_SECRET),
        "{what} holds a secret query value"
    );
}

/// Checks the stored secret-bearing events kept their harmless parts.
pub fn assert_redacted(events: &[AuditEvent]) {
    assert!(!events.is_empty());
    for e in events {
        let path = e.path.as_deref().unwrap();
        assert!(
            path.starts_with("/api/items/") && path.ends_with("?page=2&keep=yes"),
            "{path}"
        );
        assert_no_secret(
            "a stored event",
            serde_json::to_string(e).unwrap().as_bytes(),
        );
    }
}
