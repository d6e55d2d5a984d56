//! Guard overhead per request on the memory backends: a verified-token
//! cache hit, one rate rule, 200 route rules and an audit enqueue; then the
//! same with an RS256 signature checked on every request against the bare
//! signature check; then a tower stack (GuardLayer over a no-op service)
//! against the same stack without the layer.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use portcullis::audit::{
    AuditError, AuditEvent, AuditSink, AuditWriter, AuditWriterConfig, BoxFuture,
};
use portcullis::guard::{GuardConfig, RouteConfig};
use portcullis::http::{GuardLayer, PeerAddr};
use portcullis::stores::{Backends, NewSession, NewUser, Stores, StoresConfig};
use portcullis::{Guard, TokenCacheConfig};
use portcullis_core::ratelimit::RuleConfig;
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, SecretHasher, SystemClock, TokenIssuer,
    Validation, Verifier,
};
use tower_layer::Layer;
use tower_service::Service;

/// Accepts and forgets batches: the bench measures the enqueue.
struct NullSink;

impl AuditSink for NullSink {
    fn write_batch<'a>(&'a self, _: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Clone)]
struct Noop;

impl Service<http::Request<Full<Bytes>>> for Noop {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<Full<Bytes>>) -> Self::Future {
        ready(Ok(http::Response::new(Full::new(Bytes::new()))))
    }
}

fn config() -> GuardConfig {
    let mut c = GuardConfig::default().rate_limit(RuleConfig {
        name: "per-subject".into(),
        algorithm: "gcra".into(),
        rate: Some(1_000_000),
        burst: Some(1_000_000_000),
        limit: None,
        period: 1.0,
        key: vec!["subject".into()],
        on_backend_error: None,
        lease: None,
    });
    for i in 0..200 {
        c = c.route(
            RouteConfig::new(format!("svc{i}"), format!("/svc{i}/items/{{id}}"))
                .methods(["GET"])
                .permissions([format!("svc{i}.read")])
                .rate_limits(["per-subject"]),
        );
    }
    c
}

struct Setup {
    guard: Guard,
    token: String,
    bare: Verifier,
}

fn setup(
    rt: &tokio::runtime::Runtime,
    alg: Algorithm,
    cache: TokenCacheConfig,
    with_audit: bool,
) -> Setup {
    rt.block_on(async {
        let hasher = SecretHasher::new(&[3; 32]).expect("pepper");
        let backend = Arc::new(portcullis::stores::memory::MemoryStores::new());
        let mut sc = StoresConfig::new(hasher.clone());
        sc.revocation_cache_ttl = Duration::ZERO;
        let stores = Arc::new(Stores::new(Backends::all(backend), sc).expect("stores"));
        let mut keys = KeySet::new();
        keys.insert(Key::generate(alg).expect("key").with_kid("k1"))
            .expect("insert");
        let ic = IssuerConfig::new("https://issuer.bench");
        let issuer = TokenIssuer::new(keys.clone(), ic.clone(), hasher);
        let user = stores
            .create_user(&NewUser {
                username: "bench".into(),
                password: Some("correct horse battery".into()),
                ..NewUser::default()
            })
            .await
            .expect("user");
        let session = stores
            .create_session(&NewSession {
                user_id: user.id.clone(),
                ttl: Duration::from_secs(86_400),
                ..NewSession::default()
            })
            .await
            .expect("session");
        let mut claims = serde_json::Map::new();
        claims.insert("permissions".into(), serde_json::json!(["svc150.read"]));
        let token = issuer
            .issue_access(&AccessRequest {
                subject: user.id,
                session_id: Some(session.id),
                ttl: Some(Duration::from_secs(86_400)),
                claims,
                ..AccessRequest::default()
            })
            .expect("token")
            .token;
        let dir =
            std::env::temp_dir().join(format!("portcullis-bench-guard-{}", std::process::id()));
        let mut wc = AuditWriterConfig::new(dir.join("spool"));
        wc.queue_capacity = 1 << 20;
        let audit = Arc::new(
            AuditWriter::start(Arc::new(NullSink), wc, Arc::new(SystemClock)).expect("audit"),
        );
        let validation = Validation::for_local_issuer(&ic);
        let mut builder = Guard::builder(config())
            .local_keys_cached(Verifier::new(keys.clone(), validation.clone()), cache)
            .stores(stores);
        if with_audit {
            builder = builder.audit(audit);
        }
        let guard = builder.build().expect("guard");
        Setup {
            guard,
            token,
            bare: Verifier::new(keys, validation),
        }
    })
}

fn request(token: &str) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::get("/svc150/items/42")
        .header("authorization", format!("Bearer {token}"))
        .header("user-agent", "bench/1")
        .body(Full::new(Bytes::new()))
        .expect("request");
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([10, 1, 2, 3], 5000))));
    req
}

fn bench_guard(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let peer = Some("10.1.2.3".parse().expect("ip"));

    let cached = setup(&rt, Algorithm::ES256, TokenCacheConfig::default(), true);
    let (parts, ()) = request(&cached.token).map(|_| ()).into_parts();
    let decision = rt.block_on(cached.guard.check(&parts, peer));
    assert!(decision.allowed(), "{:?}", decision.refusal);
    let mut g = c.benchmark_group("guard");
    g.bench_function("block_on_noop", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    g.bench_function("check_cache_hit_200_routes_1_rule_audit", |b| {
        b.iter(|| {
            let mut d = rt.block_on(cached.guard.check(black_box(&parts), peer));
            d.finish(http::StatusCode::OK);
            d
        })
    });

    let quiet = setup(&rt, Algorithm::ES256, TokenCacheConfig::default(), false);
    let (qparts, ()) = request(&quiet.token).map(|_| ()).into_parts();
    assert!(rt.block_on(quiet.guard.check(&qparts, peer)).allowed());
    g.bench_function("check_cache_hit_200_routes_1_rule_no_audit", |b| {
        b.iter(|| rt.block_on(quiet.guard.check(black_box(&qparts), peer)))
    });

    let uncached = setup(
        &rt,
        Algorithm::RS256,
        TokenCacheConfig {
            max_entries: 0,
            ..TokenCacheConfig::default()
        },
        true,
    );
    let (parts, ()) = request(&uncached.token).map(|_| ()).into_parts();
    assert!(rt.block_on(uncached.guard.check(&parts, peer)).allowed());
    g.bench_function("check_rs256_every_request", |b| {
        b.iter(|| {
            let mut d = rt.block_on(uncached.guard.check(black_box(&parts), peer));
            d.finish(http::StatusCode::OK);
            d
        })
    });
    let token = uncached.token.clone();
    g.bench_function("bare_rs256_verify", |b| {
        b.iter(|| {
            uncached
                .bare
                .verify(black_box(token.as_bytes()))
                .expect("verify")
        })
    });

    let mut plain = Noop;
    let mut layered = GuardLayer::new(cached.guard.clone()).layer(Noop);
    g.bench_function("tower_stack_without_layer", |b| {
        b.iter(|| {
            rt.block_on(plain.call(request(&cached.token)))
                .expect("noop")
        })
    });
    g.bench_function("tower_stack_with_guard_layer", |b| {
        b.iter(|| {
            rt.block_on(layered.call(request(&cached.token)))
                .expect("layer")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_guard);
criterion_main!(benches);
