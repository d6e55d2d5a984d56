//! Signing-key rotation through the admin API, on two real gateway
//! replicas sharing PostgreSQL and Redis, under load from clients that call
//! the API and refresh continuously through both replicas: not one 401 from
//! the rotation start to the old key's retirement; the new key is published
//! on both replicas before either signs with it; after retirement a token
//! of the old key is refused everywhere.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_core::{AccessRequest, IssuerConfig, Key, KeySet, SecretHasher, TokenIssuer};
use serde_json::{Value, json};
use support::{
    Gateway, GatewayConfig, HttpClient, PASSWORD, Route, TempDir, Upstream, bootstrap_admin,
    client, echo_upstream, get, keys_and_pepper, post, send,
};

const ISSUER: &str = "https://issuer.test";

struct Replica {
    gateway: Gateway,
}

fn admin_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    b.body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

/// The `kid` in a JWT's header.
fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let bytes = portcullis_core::jose::b64_decode(header.as_bytes()).unwrap();
    let header: Value = serde_json::from_slice(&bytes).unwrap();
    header["kid"].as_str().unwrap_or_default().to_owned()
}

fn jwks_kids(v: &Value) -> Vec<String> {
    v["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn jwks(client: &HttpClient, replica: &Replica) -> Vec<String> {
    let r = send(
        client,
        get(replica.gateway.public, "/auth/.well-known/jwks.json", &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    jwks_kids(&r.json())
}

async fn login(client: &HttpClient, replica: &Replica, username: &str) -> Value {
    let body = json!({"username": username, "password": PASSWORD}).to_string();
    let r = send(
        client,
        post(
            replica.gateway.public,
            "/auth/login",
            &[("content-type", "application/json")],
            &body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.json()
}

/// A gateway in `dir` (its key and pepper) over `storage` (the
/// `[storage]` keys) with `keys_extra`, which must end inside
/// `[keys.rotation]` (the stored keys are read every 200 ms), and one JWT
/// route to `upstream`.
fn gateway_config(
    dir: &TempDir,
    storage: &str,
    keys_extra: &str,
    upstream: std::net::SocketAddr,
) -> GatewayConfig {
    GatewayConfig::new(dir)
        .storage_lines(storage)
        .issuer(ISSUER)
        .keys(keys_extra)
        .keys("poll_interval = \"200ms\"")
        .no_audit()
        .route(Route::new("api", "/api/**").credentials(&["jwt"]))
        .upstream(Upstream::new(
            "echo",
            &format!("http://{upstream}"),
            &["api"],
        ))
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unauthorized: AtomicU64,
    other: AtomicU64,
    refreshes: AtomicU64,
    new_kid_seen: AtomicU64,
}

/// One client: calls the API through both replicas in turn and refreshes
/// every few calls (also alternating replicas), until `stop`.
async fn client_loop(
    client: HttpClient,
    publics: [std::net::SocketAddr; 2],
    mut tokens: Value,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    first_kid: String,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let access = tokens["access_token"].as_str().unwrap().to_owned();
        if kid_of(&access) != first_kid {
            tally.new_kid_seen.fetch_add(1, Ordering::Relaxed);
        }
        let r = send(
            &client,
            get(
                publics[i % 2],
                "/api/x",
                &[("authorization", &format!("Bearer {access}"))],
            ),
        )
        .await;
        match r.status {
            StatusCode::OK => tally.ok.fetch_add(1, Ordering::Relaxed),
            StatusCode::UNAUTHORIZED => {
                eprintln!("401 at call {i}: {}", r.body);
                tally.unauthorized.fetch_add(1, Ordering::Relaxed)
            }
            _ => {
                eprintln!("{} at call {i}: {}", r.status, r.body);
                tally.other.fetch_add(1, Ordering::Relaxed)
            }
        };
        i += 1;
        if i.is_multiple_of(5) {
            let body = json!({"refresh_token": tokens["refresh_token"]}).to_string();
            let r = send(
                &client,
                post(
                    publics[(i / 5) % 2],
                    "/auth/refresh",
                    &[("content-type", "application/json")],
                    &body,
                ),
            )
            .await;
            if r.status == StatusCode::OK {
                tokens = r.json();
                tally.refreshes.fetch_add(1, Ordering::Relaxed);
            } else {
                eprintln!("refresh {}: {}", r.status, r.body);
                if r.status == StatusCode::UNAUTHORIZED {
                    tally.unauthorized.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.other.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_under_load_on_two_replicas_never_answers_401() {
    let Some(db) = support::FreshDatabase::create("rotation").await else {
        return;
    };
    let Some(redis) = support::redis_url() else {
        return;
    };
    let prefix = support::RedisPrefix {
        urls: vec![redis.clone()],
        prefix: support::unique_name("pcx-rotation"),
    };
    let dir = TempDir::new("rotation");
    let (keys, pepper) = keys_and_pepper(&dir);
    let upstream = echo_upstream().await;
    let client = client();

    // Short lifetimes so the whole rotation fits in a test: access tokens
    // live 5 s, a new key is published 2 s before it signs, replicas read
    // the stored keys every 200 ms.
    let mut configs = Vec::new();
    for i in 0..2 {
        let storage = format!(
            "url = \"{}\"\npepper_file = \"{}\"\nredis = \"{redis}\"\nredis_prefix = \"{}\"",
            db.url,
            pepper.display(),
            prefix.prefix
        );
        let config = gateway_config(
            &dir,
            &storage,
            "access_ttl = \"5s\"\n\n[keys.rotation]\npropagation_delay = \"2s\"",
            upstream,
        );
        let path = config.write_as(&format!("gateway-{i}"));
        configs.push((path, config));
    }
    let admin_key = bootstrap_admin(&configs[0].0);
    let mut replicas = Vec::new();
    for (i, (_, config)) in configs.iter().enumerate() {
        let gateway = config.start(&dir, &format!("gateway-{i}"));
        gateway.wait_ready(&client).await;
        replicas.push(Replica { gateway });
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let admin = |replica: &Replica, method: &str, path: &str, body: Option<Value>| {
        let req = admin_request(replica.gateway.ops, method, path, &admin_key, body);
        let client = client.clone();
        async move { send(&client, req).await }
    };

    // Users and their sessions, from before the rotation.
    let mut clients = Vec::new();
    for n in 0..4 {
        let name = format!("user{n}");
        let r = admin(
            a,
            "POST",
            "/admin/users",
            Some(json!({"username": name, "password": PASSWORD})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        clients.push(login(&client, if n % 2 == 0 { a } else { b }, &name).await);
    }
    let first = clients[0]["access_token"].as_str().unwrap().to_owned();
    let old_kid = kid_of(&first);
    assert_eq!(old_kid, "k1");
    assert_eq!(jwks(&client, a).await, ["k1"]);

    // A token of the old key that outlives the rotation (signed here with
    // the configured key file, for a real session): it must verify until
    // the old key retires, and be refused after.
    let pem = std::fs::read(keys.join("k1.pem")).unwrap();
    let mut old_set = KeySet::new();
    old_set
        .insert(Key::from_pem(&pem, None).unwrap().with_kid("k1"))
        .unwrap();
    let issuer = TokenIssuer::new(
        old_set,
        IssuerConfig::new(ISSUER),
        SecretHasher::new(&[1; 32]).unwrap(),
    );
    let sid = support::claims(&first)["sid"].as_str().unwrap().to_owned();
    let long_lived = issuer
        .issue_access(&AccessRequest {
            subject: support::claims(&first)["sub"].as_str().unwrap().to_owned(),
            session_id: Some(sid),
            ttl: Some(Duration::from_secs(3600)),
            ..AccessRequest::default()
        })
        .unwrap()
        .token;
    let call = |replica: &Replica, token: &str| {
        let req = get(
            replica.gateway.public,
            "/api/x",
            &[("authorization", &format!("Bearer {token}"))],
        );
        let client = client.clone();
        async move { send(&client, req).await }
    };
    assert_eq!(call(b, &long_lived).await.status, StatusCode::OK);

    // The load: four clients, each on both replicas, refreshing all along.
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for tokens in clients {
        load.push(tokio::spawn(client_loop(
            client.clone(),
            [a.gateway.public, b.gateway.public],
            tokens,
            Arc::clone(&tally),
            Arc::clone(&stop),
            old_kid.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotate through A; a second rotation while the first is pending is refused.
    let r = admin(a, "POST", "/admin/keys/rotate", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let rotated = r.json();
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_eq!(rotated["state"], "published", "{rotated}");
    assert_eq!(rotated["alg"], "ES256");
    let activates_at = rotated["activates_at"].as_i64().unwrap();
    let r = admin(b, "POST", "/admin/keys/rotate", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.code().as_deref(), Some("keys.rotation_pending"));
    let r = admin(a, "POST", "/admin/keys/rotate", Some(json!({"alg": "XX1"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // Published on B (read from storage) well before it signs anywhere.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let kids = jwks(&client, b).await;
        if kids.contains(&new_kid) && kids.contains(&old_kid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not publish {new_kid}: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = login(&client, b, "user0").await;
    assert_eq!(
        kid_of(fresh["access_token"].as_str().unwrap()),
        old_kid,
        "nothing signs with the new key before its activation"
    );

    // After the activation both replicas sign with the new key.
    let status = admin(b, "GET", "/admin/keys", None).await.json();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let wait_until = |t: i64| Duration::from_secs(u64::try_from((t - now()).max(0)).unwrap_or(0));
    tokio::time::sleep(wait_until(activates_at) + Duration::from_millis(1200)).await;
    for replica in [a, b] {
        let t = login(&client, replica, "user1").await;
        assert_eq!(kid_of(t["access_token"].as_str().unwrap()), new_kid);
    }
    let r = admin(a, "GET", "/admin/keys", None).await;
    let keys_now = r.json();
    let state_of = |v: &Value, kid: &str| {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        state_of(&keys_now, &new_kid).as_deref(),
        Some("active"),
        "{keys_now}"
    );
    assert_eq!(state_of(&keys_now, &old_kid).as_deref(), Some("retiring"));
    let retires_at = keys_now["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == old_kid.as_str())
        .unwrap()["retires_at"]
        .as_i64()
        .unwrap();
    assert!(
        retires_at >= activates_at + 5,
        "the old key outlives its last tokens: {status}"
    );
    // Still verifying while retiring.
    assert_eq!(call(a, &long_lived).await.status, StatusCode::OK);

    // Through the retirement, the load keeps going.
    tokio::time::sleep(wait_until(retires_at) + Duration::from_millis(1200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "rotation under load: {ok} calls answered 200, {} refreshes, {} calls with the new key",
        tally.refreshes.load(Ordering::Relaxed),
        tally.new_kid_seen.load(Ordering::Relaxed)
    );
    assert_eq!(
        tally.unauthorized.load(Ordering::Relaxed),
        0,
        "no 401 during the rotation ({ok} calls answered 200)"
    );
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    assert!(ok > 200, "the load ran: {ok} calls");
    assert!(tally.refreshes.load(Ordering::Relaxed) > 40);
    assert!(
        tally.new_kid_seen.load(Ordering::Relaxed) > 0,
        "the clients moved to the new key"
    );

    // Retired: the old key's token is refused on both, and gone from the JWKS.
    for replica in [a, b] {
        let r = call(replica, &long_lived).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert_eq!(r.code().as_deref(), Some("auth.unknown_key"));
        assert_eq!(jwks(&client, replica).await, std::slice::from_ref(&new_kid));
    }
    let r = admin(b, "GET", "/admin/keys", None).await;
    assert_eq!(state_of(&r.json(), &old_kid).as_deref(), Some("retired"));

    // The CLI lists the same schedule.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "keys",
            "list",
            "--admin",
            &format!("http://{}", b.gateway.ops),
            "--format",
            "json",
        ])
        .env("PORTCULLIS_ADMIN_KEY", &admin_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state_of(&listed, &new_kid).as_deref(), Some("active"));

    drop(replicas);
    drop(prefix);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_pepper_refuses_to_start_on_sealed_keys() {
    let dir = TempDir::new("rotation-pepper");
    let (_, pepper) = keys_and_pepper(&dir);
    let upstream = echo_upstream().await;
    let client = client();
    let config = |pepper: &std::path::Path| {
        let storage = format!(
            "url = \"sqlite://{}\"\npepper_file = \"{}\"",
            dir.join("stores.db").display(),
            pepper.display()
        );
        gateway_config(
            &dir,
            &storage,
            "\n[keys.rotation]\npropagation_delay = \"1s\"",
            upstream,
        )
    };
    let first = config(&pepper);
    let (public, ops) = (first.public, first.ops);
    let text = first.text();
    let admin_key = bootstrap_admin(&first.write_as("first"));
    let gateway = Gateway::start(&dir, "first", &text, public, ops);
    gateway.wait_ready(&client).await;
    let r = send(
        &client,
        admin_request(
            ops,
            "POST",
            "/admin/keys/rotate",
            &admin_key,
            Some(json!({"alg": "EdDSA"})),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.json()["alg"], "EdDSA");
    drop(gateway);

    // The stored key is sealed: the record opens with the pepper, and its
    // bytes do not hold the private key (its PKCS#8 body) in the clear.
    let stored = portcullis::stores::sqlite::SqliteStores::open(&dir.join("stores.db"))
        .await
        .unwrap();
    let records = portcullis::stores::SigningKeyStore::signing_keys(&stored)
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    let sealer =
        portcullis_core::KeySealer::from_pepper(&SecretHasher::new(&support::PEPPER).unwrap())
            .unwrap();
    let opened = sealer
        .open(
            &records[0].kid,
            portcullis_core::Algorithm::EdDSA,
            &records[0].sealed,
        )
        .unwrap();
    let pem = opened.private_pkcs8_pem().unwrap();
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
        .replace('+', "-")
        .replace('/', "_");
    let der = portcullis_core::jose::b64_decode(body.trim_end_matches('=').as_bytes()).unwrap();
    let seed = &der[der.len() - 32..];
    assert!(
        !records[0].sealed.windows(32).any(|w| w == seed),
        "the private key is not stored in the clear"
    );
    drop(stored);

    // Another pepper cannot open it: the gateway says so and does not start.
    let other = dir.join("other-pepper");
    std::fs::write(&other, [9u8; 32]).unwrap();
    let path = config(&other).write_as("second");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keys.rotation") && stderr.contains("pepper"),
        "{stderr}"
    );
}
