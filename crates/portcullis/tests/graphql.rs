//! The GraphQL field guards over real HTTP: an axum app with a
//! `GuardLayer` and a GraphQL endpoint, served on a loopback port and
//! called with a hyper client. Field-level refusals carry the stable code
//! in `extensions.code`; the route-level refusal is the layer's 401.

#![cfg(all(feature = "graphql", feature = "sqlite", feature = "memory"))]

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::{Context, EmptySubscription, ID, Object, Schema, SimpleObject};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis::Guard;
use portcullis::graphql::{RequirePermission, RequireRole, permitted, principal, with_principal};
use portcullis::guard::{CredentialSource, GuardConfig, RouteConfig};
use portcullis::http::{GuardLayer, Principal};
use portcullis::stores::{Backends, Stores, StoresConfig, memory::MemoryStores};
use portcullis_core::authz::roles::RoleDef;
use portcullis_core::{
    AccessRequest, Algorithm, IssuerConfig, Key, KeySet, SecretHasher, TokenIssuer, Validation,
    Verifier,
};
use serde_json::{Value, json};

#[derive(Clone, SimpleObject)]
struct Doc {
    id: ID,
    title: String,
}

struct Query;

#[Object]
impl Query {
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(principal(ctx)?.subject.clone())
    }

    #[graphql(guard = "RequirePermission::new(\"docs.read\")")]
    async fn docs(&self) -> Vec<Doc> {
        vec![Doc {
            id: ID::from("1"),
            title: "Hello".into(),
        }]
    }

    #[graphql(guard = "RequireRole::new(\"editor\")")]
    async fn drafts(&self) -> i32 {
        3
    }
}

struct Mutation;

#[Object]
impl Mutation {
    #[graphql(guard = "RequirePermission::new(\"docs.read\")")]
    async fn add_comment(&self, doc_id: ID, text: String) -> String {
        format!("{}: {text}", doc_id.as_str())
    }

    async fn update_doc(&self, ctx: &Context<'_>, id: ID, title: String) -> Option<Doc> {
        permitted(ctx, &RequirePermission::new("docs.write")).await?;
        Some(Doc { id, title })
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

struct Harness {
    addr: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    issuer: TokenIssuer,
}

async fn harness() -> Harness {
    let mut keys = KeySet::new();
    keys.insert(Key::generate(Algorithm::ES256).unwrap().with_kid("k1"))
        .unwrap();
    let config = IssuerConfig::new("https://issuer.test");
    let hasher = SecretHasher::new(&[7; 32]).unwrap();
    let issuer = TokenIssuer::new(keys.clone(), config.clone(), hasher.clone());
    let verifier = Verifier::new(keys, Validation::for_local_issuer(&config));
    let stores = Stores::new(
        Backends::all(Arc::new(MemoryStores::new())),
        StoresConfig::new(hasher),
    )
    .unwrap();
    let guard_config = GuardConfig::default()
        .role(RoleDef {
            name: "editor".into(),
            permissions: vec!["docs.*".into()],
            includes: Vec::new(),
        })
        .role(RoleDef {
            name: "admin".into(),
            permissions: Vec::new(),
            includes: vec!["editor".into()],
        })
        .route(RouteConfig::new("graphql", "/graphql").credentials([CredentialSource::Jwt]))
        .route(
            RouteConfig::new("public-graphql", "/public/graphql")
                .credentials([CredentialSource::Jwt, CredentialSource::Anonymous]),
        );
    let guard = Guard::builder(guard_config)
        .local_keys(verifier)
        .stores(Arc::new(stores))
        .build()
        .unwrap();
    let schema = Schema::build(Query, Mutation, EmptySubscription).finish();
    let app = Router::new()
        .route("/graphql", post(graphql))
        .route("/public/graphql", post(graphql))
        .with_state(schema)
        .layer(GuardLayer::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
        issuer,
    }
}

impl Harness {
    fn token(&self, subject: &str, claims: Value) -> String {
        self.issuer
            .issue_access(&AccessRequest {
                subject: subject.into(),
                claims: claims.as_object().cloned().unwrap_or_default(),
                ..AccessRequest::default()
            })
            .unwrap()
            .token
    }

    /// Posts `query`; the status and the JSON body.
    async fn post(&self, path: &str, token: Option<&str>, query: &str) -> (u16, Value) {
        let mut req = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = json!({ "query": query }).to_string();
        let res = self
            .client
            .request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

const EDIT: &str = r#"mutation {
    addComment(docId: "1", text: "nice")
    updateDoc(id: "1", title: "Bye") { id title }
}"#;

fn codes(body: &Value) -> Vec<&str> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["extensions"]["code"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_reader_queries_but_update_doc_is_denied_while_the_rest_resolves() {
    let h = harness().await;
    let reader = h.token("reader", json!({ "permissions": ["docs.read"] }));

    let (status, body) = h
        .post("/graphql", Some(&reader), "{ me docs { id title } }")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "data": { "me": "reader", "docs": [{ "id": "1", "title": "Hello" }] } })
    );

    let (status, body) = h.post("/graphql", Some(&reader), EDIT).await;
    assert_eq!(
        status, 200,
        "a field refusal is a GraphQL error, not an HTTP one"
    );
    assert_eq!(body["data"]["addComment"], "1: nice", "{body}");
    assert_eq!(body["data"]["updateDoc"], Value::Null, "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["path"], json!(["updateDoc"]));
    assert_eq!(errors[0]["extensions"]["code"], "authz.denied");
    assert_eq!(errors[0]["extensions"]["permission"], "docs.write");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("docs.write"),
        "the message names the permission: {body}"
    );
}

#[tokio::test]
async fn a_wildcard_grant_allows_reading_and_writing() {
    let h = harness().await;
    let writer = h.token("writer", json!({ "permissions": ["docs.*"] }));
    let (status, body) = h.post("/graphql", Some(&writer), "{ docs { id } }").await;
    assert_eq!(
        (status, &body["data"]["docs"]),
        (200, &json!([{ "id": "1" }]))
    );
    let (_, body) = h.post("/graphql", Some(&writer), EDIT).await;
    assert_eq!(body.get("errors"), None, "{body}");
    assert_eq!(
        body["data"],
        json!({ "addComment": "1: nice", "updateDoc": { "id": "1", "title": "Bye" } })
    );
}

#[tokio::test]
async fn roles_resolve_through_the_guards_role_table() {
    let h = harness().await;
    // `admin` includes `editor`, which grants `docs.*`.
    let admin = h.token("root", json!({ "roles": ["admin"] }));
    let (_, body) = h
        .post("/graphql", Some(&admin), "{ drafts docs { id } }")
        .await;
    assert_eq!(body.get("errors"), None, "{body}");
    assert_eq!(body["data"]["drafts"], 3);
    let (_, body) = h.post("/graphql", Some(&admin), EDIT).await;
    assert_eq!(body["data"]["updateDoc"]["title"], "Bye", "{body}");

    // A guard attribute on a non-null root field nulls `data`, as
    // async-graphql propagates errors; the code still says why.
    let reader = h.token("reader", json!({ "permissions": ["docs.read"] }));
    let (status, body) = h.post("/graphql", Some(&reader), "{ drafts }").await;
    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["authz.denied"], "{body}");
    assert_eq!(body["errors"][0]["extensions"]["role"], "editor");
}

#[tokio::test]
async fn without_a_token_the_guard_layer_answers_401_before_graphql_runs() {
    let h = harness().await;
    let (status, body) = h.post("/graphql", None, "{ me }").await;
    assert_eq!(status, 401);
    assert_eq!(
        body["code"], "auth.missing_credentials",
        "a problem body: {body}"
    );
    assert_eq!(body.get("data"), None);
}

#[tokio::test]
async fn an_anonymous_caller_gets_missing_credentials_from_guarded_fields() {
    let h = harness().await;
    let (status, body) = h.post("/public/graphql", None, "{ docs { id } }").await;
    assert_eq!(status, 200);
    assert_eq!(codes(&body), ["auth.missing_credentials"], "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["docs"]));

    let (_, body) = h.post("/public/graphql", None, EDIT).await;
    assert_eq!(
        codes(&body),
        ["auth.missing_credentials"],
        "addComment's guard refuses first: {body}"
    );

    // The same route with a token sees the caller.
    let reader = h.token("reader", json!({ "permissions": ["docs.read"] }));
    let (_, body) = h.post("/public/graphql", Some(&reader), "{ me }").await;
    assert_eq!(body["data"]["me"], "reader");
}
