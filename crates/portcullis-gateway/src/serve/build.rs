//! Building the engine from a `Config`: the long-lived handles every
//! reload shares (stores, key ring, audit, token service, nonces), the
//! guard, and the request path a reload or a key rotation swaps in.

use std::sync::Arc;
use std::time::Duration;

use portcullis::http::GuardLayer;
use portcullis::jwks::TrustedIssuers;
use portcullis::keyring::{KeyRing, KeyRingConfig};
use portcullis::service::TokenService;
use portcullis::{Guard, GuardConfig};
use portcullis_core::{IssuerConfig, KeySet, TokenIssuer, Validation, Verifier};
use tower_layer::Layer;

use crate::config::{Config, SignedRequestsConfig};
use crate::forward_auth::ForwardAuth;
use crate::proxy::Proxy;
use arc_swap::ArcSwap;
use portcullis::authz::{NonceStore, SignedRequestAuthenticator};

use super::app::RequestMetrics;
use super::*;

/// The long-lived handles a reload keeps: stores, keys, the audit writer,
/// the Redis connection and the token service. Built once at start from
/// the restart-only keys ([`crate::ops::reload::RESTART_ONLY`]).
pub(crate) struct Shared {
    /// Stores, Redis, bans and detectors, the audit writer.
    pub(crate) storage: crate::serve::storage::Storage,
    /// The signing keys in force (configured plus rotated in).
    pub(crate) keyring: Arc<KeyRing>,
    pub(crate) issuer_config: IssuerConfig,
    pub(crate) token_service: Option<(String, axum::Router)>,
    /// The token service itself, to hand it each rotated key set.
    pub(crate) token_service_handle: Option<TokenService>,
    /// Signed-request nonces: outlive reloads, so a reload never forgets
    /// which nonces were spent.
    pub(crate) nonces: Arc<dyn NonceStore>,
    /// `[[keys.trusted_issuers]]` and their cached key sets.
    pub(crate) trusted_issuers: Option<TrustedIssuers>,
    /// The WebSocket tunnels open, counted across reloads.
    pub(crate) tunnels: Arc<crate::proxy::deadline::Tunnels>,
    /// Failed logins, resets and console sign-ins (`[token_service.regulation]`).
    pub(crate) regulator: Option<Arc<portcullis::regulation::Regulator>>,
}

impl Shared {
    pub(crate) async fn open(config: &Config) -> Result<Self, ServeError> {
        // Stores, Redis, bans and detectors, audit.
        let storage = crate::serve::storage::open(config).await?;
        let hasher = storage.hasher.clone();

        // Keys and the local issuer.
        let configured =
            crate::keys::load_key_dir(&config.keys.dir, config.keys.active_kid.as_deref())
                .map_err(|e| start("keys.dir")(e.to_string()))?;
        let keyring = KeyRing::open(
            configured,
            Arc::clone(&storage.stores),
            &hasher,
            keyring_config(config),
        )
        .await
        .map_err(|e| start("keys.rotation")(e.to_string()))?;
        let keys = keyring.keys();
        let mut issuer_config = IssuerConfig::new(config.keys.issuer.clone());
        issuer_config.audience.clone_from(&config.keys.audience);
        issuer_config.access_ttl = config.keys.access_ttl;

        // The token service.
        let regulator = storage.regulator(&config.token_service.regulation)?;
        let token_service_handle = if config.token_service.enabled {
            let issuer = TokenIssuer::new(Arc::clone(&keys), issuer_config.clone(), hasher);
            let public_url = config.token_service.public_url.clone().unwrap_or_else(|| {
                format!(
                    "{}{}",
                    config.keys.issuer.trim_end_matches('/'),
                    config.token_service.prefix
                )
            });
            let mut b =
                TokenService::builder(Arc::clone(&storage.stores), issuer, Arc::clone(&keys))
                    .public_url(public_url)
                    .client_ip(config.guard.client_ip.clone());
            if let Some(engine) = &storage.anomaly {
                b = b.anomaly(Arc::clone(engine));
            }
            if let Some(a) = &storage.audit {
                b = b.audit(Arc::clone(a));
            }
            b = match &regulator {
                Some(r) => b.regulator(Arc::clone(r)),
                None => b.without_regulation(),
            };
            Some(
                b.build()
                    .map_err(|e| start("token_service")(e.to_string()))?,
            )
        } else {
            None
        };
        let token_service = token_service_handle.as_ref().map(|service| {
            let prefix = config.token_service.prefix.clone();
            let router = axum::Router::new().nest(&prefix, service.router());
            (prefix, router)
        });
        let nonces = storage.nonce_store();
        let trusted_issuers = trusted_issuers(config)?;
        Ok(Self {
            nonces,
            trusted_issuers,
            tunnels: Arc::default(),
            regulator,
            storage,
            keyring,
            issuer_config,
            token_service,
            token_service_handle,
        })
    }
}

/// How the key ring of `config` rotates: a rotated-out key verifies for the
/// longest lifetime of a token it signed (access token, or internal token
/// when an upstream gets one), plus the verifier's leeway and one poll of a
/// slow replica.
pub(crate) fn keyring_config(config: &Config) -> KeyRingConfig {
    let it = &config.internal_token;
    let internal = if config.upstreams.iter().any(|u| u.sends_internal_token(it)) {
        it.ttl
    } else {
        Duration::ZERO
    };
    let longest = config.keys.access_ttl.max(internal);
    let rotation = &config.keys.rotation;
    let mut ring = KeyRingConfig::new(longest + Validation::new().leeway + rotation.poll_interval);
    ring.propagation_delay = rotation.propagation_delay;
    ring.poll_interval = rotation.poll_interval;
    ring
}

impl Shared {
    /// Follows the key ring: each new key set goes to the token service
    /// (issuer, verifier, JWKS) and to `on_change` (the gateway rebuilds its
    /// request path; the in-process engine swaps its guard's keys). Runs
    /// until aborted.
    pub(crate) fn follow_keys<F, Fut>(&self, on_change: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<KeySet>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let ring = self.keyring.spawn();
        let mut changes = self.keyring.subscribe();
        let service = self.token_service_handle.clone();
        tokio::spawn(async move {
            let _ring = AbortOnDrop(ring);
            while changes.changed().await.is_ok() {
                let keys = Arc::clone(&changes.borrow_and_update());
                if let Some(service) = &service {
                    service.replace_keys(Arc::clone(&keys));
                }
                on_change(keys).await;
            }
        })
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The guard of `config` over the long-lived handles of `shared`: local
/// keys through the verified-token cache, the stores (revocation), the
/// shared rate limiter, bans and detectors, audit and signed requests.
/// `previous` is the app being replaced by a reload: its rate limiter is
/// kept when the rate limits are unchanged.
pub(crate) fn build_guard(
    config: &Config,
    shared: &Shared,
    previous: Option<&App>,
) -> Result<Guard, ServeError> {
    let verifier = Verifier::new(
        shared.keyring.keys(),
        Validation::for_local_issuer(&shared.issuer_config),
    );
    let guard_config: GuardConfig = config.guard.clone();
    let mut builder = Guard::builder(guard_config)
        .local_keys_cached(
            verifier,
            portcullis::TokenCacheConfig {
                max_entries: config.keys.token_cache_entries,
                ..portcullis::TokenCacheConfig::default()
            },
        )
        .stores(Arc::clone(&shared.storage.stores))
        // Admin keys work on the ops listener only.
        .refuse_api_key_owners(crate::ops::admin::ADMIN_OWNER_PREFIX);
    if let Some(limiter) = shared.storage.rate_limiter() {
        // Rate-limit counters shared by every replica.
        builder = builder.rate_limiter(limiter);
    }
    if let Some(engine) = &shared.storage.anomaly {
        builder = builder.anomaly(Arc::clone(engine));
    }
    if let Some(limiter) = previous.and_then(|p| p.guard.rate_limiter()) {
        builder = builder.reuse_rate_limiter(limiter.clone());
    }
    if let Some(a) = &shared.storage.audit {
        builder = builder.audit(Arc::clone(a));
    }
    if let Some(signed) = &config.signed_requests {
        builder = builder.signed_requests(signed_authenticator(signed, &shared.nonces)?);
    }
    if let Some(issuers) = &shared.trusted_issuers {
        builder = builder.trusted_issuers(issuers.clone());
    }
    builder.build().map_err(|e| start("guard")(e.to_string()))
}

/// Every `[[keys.trusted_issuers]]` entry, built once at start: their
/// fetched key sets outlive reloads and key rotations.
pub(crate) fn trusted_issuers(config: &Config) -> Result<Option<TrustedIssuers>, ServeError> {
    if config.keys.trusted_issuers.is_empty() {
        return Ok(None);
    }
    let mut issuers = TrustedIssuers::new();
    for (i, c) in config.keys.trusted_issuers.iter().enumerate() {
        let issuer = crate::config::remote_issuer(c).map_err(|(field, message)| {
            start("keys.trusted_issuers")(format!("[{i}].{field}: {message}"))
        })?;
        issuers = issuers.with(issuer);
    }
    Ok(Some(issuers))
}

/// The request path of `config`: guard, proxy, forward-auth, over the
/// long-lived handles of `shared` (see [`build_guard`] for `previous`).
pub(crate) fn build_app(
    config: &Config,
    shared: &Shared,
    previous: Option<&App>,
) -> Result<App, ServeError> {
    let guard = build_guard(config, shared, previous)?;

    let outbound = crate::proxy::identity::Outbound::new(config, shared.keyring.keys())
        .map_err(|e| start("internal_token")(e.to_string()))?;
    let jwks = (outbound.jwks_path().to_owned(), outbound.jwks());
    let proxy = Proxy::new(config, outbound, Arc::clone(&shared.tunnels))
        .map_err(|e| start("upstreams")(e.to_string()))?;
    let canonical = crate::proxy::canonical::Canonicalizer::new(config)
        .map_err(|e| start("request")(e.to_string()))?;
    let forward_auth = config.forward_auth.enabled.then(|| {
        (
            config.forward_auth.prefix.clone(),
            ForwardAuth::new(
                guard.clone(),
                proxy.identity().clone(),
                config.guard.client_ip.clone(),
                canonical.clone(),
            ),
        )
    });
    let explainer = crate::explain::Explainer::live(config, guard.clone(), proxy.clone())
        .map_err(start("explain"))?;
    Ok(App {
        explainer,
        token_service: shared.token_service.clone(),
        forward_auth,
        guarded: GuardLayer::new(guard.clone()).layer(proxy),
        guard,
        canonical,
        max_body: config.server.max_body_bytes,
        body_timeout: config.server.request_body_timeout,
        jwks,
        request_metrics: RequestMetrics::default(),
    })
}

/// The apps of `[signed_requests]`, their secrets read now (so a reload
/// picks up a rotated secret), over the process's nonce store.
pub(crate) fn signed_authenticator(
    signed: &SignedRequestsConfig,
    nonces: &Arc<dyn NonceStore>,
) -> Result<SignedRequestAuthenticator<SharedNonces>, ServeError> {
    crate::signed_requests::authenticator(signed, SharedNonces(Arc::clone(nonces)))
        .map_err(|(what, message)| start(what)(message))
}

/// The live request path over the process's long-lived handles: what a
/// reload or a key rotation rebuilds and swaps in.
pub(crate) struct LivePath {
    pub(crate) shared: Arc<Shared>,
    pub(crate) live: Arc<ArcSwap<App>>,
}

impl crate::ops::reload::RequestPath for LivePath {
    fn rebuild(&self, config: &Config) -> Result<(), String> {
        let previous = self.live.load_full();
        let app = build_app(config, &self.shared, Some(&previous)).map_err(|e| e.to_string())?;
        self.live.store(Arc::new(app));
        Ok(())
    }

    fn rebuild_for_keys(&self, config: &Config) {
        let previous = self.live.load_full();
        match build_app(config, &self.shared, Some(&previous)) {
            Ok(app) => self.live.store(Arc::new(app)),
            Err(e) => {
                // The running path keeps its internal-token signer; its
                // guard at least verifies with the new set.
                previous
                    .guard
                    .replace_local_keys(self.shared.keyring.keys());
                tracing::error!(error = %e, "the request path could not be rebuilt with the new signing keys");
            }
        }
    }
}

/// The process's one nonce store, shared by every guard a reload builds.
pub(crate) struct SharedNonces(Arc<dyn NonceStore>);

impl NonceStore for SharedNonces {
    fn remember<'a>(
        &'a self,
        app: &'a str,
        nonce: &'a str,
        ttl: Duration,
    ) -> portcullis::authz::BoxFuture<'a, Result<bool, portcullis::authz::NonceStoreError>> {
        self.0.remember(app, nonce, ttl)
    }
}
