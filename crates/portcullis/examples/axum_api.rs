//! A protected axum API: JWTs and API keys, permissions, a rate limit, the
//! audit log in SQLite, and the token service (login, refresh, logout,
//! sessions, API keys, JWKS) mounted beside it.
//!
//! ```sh
//! cargo run -p portcullis --example axum_api --features axum,service
//! ```
//! It prints `curl` lines to try; state lives in a temporary directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use portcullis::Guard;
use portcullis::audit::sqlite::SqliteAudit;
use portcullis::audit::{AuditWriter, AuditWriterConfig};
use portcullis::guard::{CredentialSource, GuardConfig, RouteConfig};
use portcullis::http::{Forbidden, GuardLayer, Principal};
use portcullis::service::TokenService;
use portcullis::stores::sqlite::SqliteStores;
use portcullis::stores::{Backends, NewUser, Stores, StoresConfig};
use portcullis_core::ratelimit::RuleConfig;
use portcullis_core::{
    Algorithm, IssuerConfig, Key, KeySet, SecretHasher, SystemClock, TokenIssuer, Validation,
    Verifier,
};

async fn list_docs(p: Principal) -> String {
    format!("docs visible to {}\n", p.subject)
}

async fn publish(p: Principal) -> Result<String, Forbidden> {
    p.require("docs.publish")?; // a check inside the handler: 403 naming the permission
    Ok("published\n".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("portcullis-axum-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut secret = [0u8; 32];
    portcullis_core::opaque::fill_random(&mut secret)?;
    let pepper = SecretHasher::new(&secret)?;
    let db = Arc::new(SqliteStores::open(&dir.join("stores.db")).await?);
    let stores = Arc::new(Stores::new(
        Backends::all(db),
        StoresConfig::new(pepper.clone()),
    )?);

    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256)?.with_kid("demo-1"))?;
    let issuer_config = IssuerConfig::new("http://127.0.0.1:3000");
    let issuer = TokenIssuer::new(keys.clone(), issuer_config.clone(), pepper);
    let verifier = Verifier::new(keys.clone(), Validation::for_local_issuer(&issuer_config));

    let audit_db = SqliteAudit::open(&dir.join("audit.db"), Duration::from_secs(5)).await?;
    let audit = Arc::new(AuditWriter::start(
        Arc::new(audit_db),
        AuditWriterConfig::new(dir.join("audit.spool")),
        Arc::new(SystemClock),
    )?);

    let config = GuardConfig::default()
        .rate_limit(serde_json::from_value::<RuleConfig>(serde_json::json!({
            "name": "per_caller", "algorithm": "gcra", "rate": 5, "period": 10, "key": ["subject"]
        }))?)
        .route(RouteConfig::new("health", "/health").credentials([CredentialSource::Anonymous]))
        .route(
            RouteConfig::new("docs", "/docs")
                .permissions(["docs.read"])
                .rate_limits(["per_caller"]),
        )
        .route(RouteConfig::new("publish", "/docs/publish").methods(["POST"]));
    let guard = Guard::builder(config)
        .local_keys(verifier)
        .stores(Arc::clone(&stores))
        .audit(Arc::clone(&audit))
        .build()?;

    let service = TokenService::builder(Arc::clone(&stores), issuer, Arc::new(keys))
        .public_url("http://127.0.0.1:3000/auth")
        .audit(Arc::clone(&audit))
        .build()?;
    stores
        .create_user(&NewUser {
            username: "alice".into(),
            password: Some("correct horse battery staple".into()),
            permissions: vec!["docs.read".into()],
            ..NewUser::default()
        })
        .await?;

    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/docs", get(list_docs))
        .route("/docs/publish", axum::routing::post(publish))
        .layer(GuardLayer::new(guard))
        .nest("/auth", service.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "listening on http://127.0.0.1:3000 (state in {})\n\n\
         TOKEN=$(curl -s localhost:3000/auth/login -H 'content-type: application/json' \\\n  \
         -d '{{\"username\":\"alice\",\"password\":\"correct horse battery staple\"}}' | jq -r .access_token)\n\
         curl -i localhost:3000/docs -H \"authorization: Bearer $TOKEN\"           # 200, RateLimit headers\n\
         curl -i localhost:3000/docs                                             # 401 problem+json\n\
         curl -i -X POST localhost:3000/docs/publish -H \"authorization: Bearer $TOKEN\"  # 403 missing docs.publish\n\
         curl -s localhost:3000/auth/.well-known/jwks.json                         # public keys",
        dir.display()
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
