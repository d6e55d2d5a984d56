//! A GraphQL API behind a `GuardLayer`: the route needs a JWT, and each
//! field checks the caller's permissions (`docs` needs `docs.read`,
//! `updateDoc` needs `docs.write`).
//!
//! `cargo run -p portcullis --example graphql --features graphql,axum`

use std::sync::{Arc, Mutex};

use async_graphql::{Context, EmptySubscription, ID, Object, Schema, SimpleObject};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use portcullis::Guard;
use portcullis::graphql::{RequirePermission, permitted, principal, with_principal};
use portcullis::guard::{GuardConfig, RouteConfig};
use portcullis::http::{GuardLayer, Principal};
use portcullis::stores::{Backends, Stores, StoresConfig, memory::MemoryStores};
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, SecretHasher, TokenIssuer, Validation,
    Verifier,
};

#[derive(Clone, SimpleObject)]
struct Doc {
    id: ID,
    title: String,
}

type Docs = Arc<Mutex<Vec<Doc>>>;

struct Query(Docs);

#[Object]
impl Query {
    /// Who is calling.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(principal(ctx)?.subject.clone())
    }

    #[graphql(guard = "RequirePermission::new(\"docs.read\")")]
    async fn docs(&self) -> Vec<Doc> {
        self.0.lock().unwrap().clone()
    }
}

struct Mutation(Docs);

#[Object]
impl Mutation {
    /// Refused callers get `null` here and an `authz.denied` error.
    async fn update_doc(&self, ctx: &Context<'_>, id: ID, title: String) -> Option<Doc> {
        permitted(ctx, &RequirePermission::new("docs.write")).await?;
        let mut docs = self.0.lock().unwrap();
        let doc = docs.iter_mut().find(|d| d.id == id)?;
        doc.title = title;
        Some(doc.clone())
    }
}

type DocsSchema = Schema<Query, Mutation, EmptySubscription>;

async fn graphql(
    State(schema): State<DocsSchema>,
    caller: Option<Principal>,
    Json(request): Json<async_graphql::Request>,
) -> Json<async_graphql::Response> {
    Json(schema.execute(with_principal(request, caller)).await)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The local issuer: in production the token service issues these.
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256)?.with_kid("demo"))?;
    let config = IssuerConfig::new("https://issuer.example");
    let hasher = SecretHasher::new(&[7; 32])?;
    let issuer = TokenIssuer::new(keys.clone(), config.clone(), hasher.clone());
    let verifier = Verifier::new(keys, Validation::for_local_issuer(&config));
    let stores = Stores::new(
        Backends::all(Arc::new(MemoryStores::new())),
        StoresConfig::new(hasher),
    )?;

    // `/graphql` needs a JWT; the fields decide the rest.
    let config = GuardConfig::default().route(RouteConfig::new("graphql", "/graphql"));
    let guard = Guard::builder(config)
        .local_keys(verifier)
        .stores(Arc::new(stores))
        .build()?;

    let hello = Doc {
        id: ID::from("1"),
        title: "Hello".into(),
    };
    let docs: Docs = Arc::new(Mutex::new(vec![hello]));
    let schema = Schema::build(Query(docs.clone()), Mutation(docs), EmptySubscription).finish();
    let app = Router::new()
        .route("/graphql", post(graphql))
        .with_state(schema)
        .layer(GuardLayer::new(guard));

    let token = |who: &str, permissions: &[&str]| {
        let claims = serde_json::json!({ "permissions": permissions });
        issuer.issue_access(&AccessRequest {
            subject: who.into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
            ..AccessRequest::default()
        })
    };
    let reader = token("reader", &["docs.read"])?.token;
    let writer = token("writer", &["docs.*"])?.token;

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}/graphql", listener.local_addr()?);
    let update = r#"mutation { updateDoc(id: \"1\", title: \"Bye\") { id title } }"#;
    println!("GraphQL on {url}\n");
    for (what, token, query) in [
        ("a reader reads", &reader, "{ me docs { id title } }"),
        ("but may not edit them: authz.denied", &reader, update),
        ("a writer (docs.*) may", &writer, update),
    ] {
        println!("# {what}:\ncurl -s {url} -H 'authorization: Bearer {token}' \\");
        println!("  -H 'content-type: application/json' -d '{{\"query\": \"{query}\"}}'\n");
    }
    println!("# without a token the GuardLayer answers 401:\ncurl -si {url} -d '{{}}'");
    axum::serve(listener, app).await?;
    Ok(())
}
