//! One Redis connection type for every Redis-backed part of the runtime
//! (stores, rate limits, anomaly windows and bans, nonces): a single server
//! through an auto-reconnecting connection manager, or a Redis Cluster.
//!
//! Every call is bounded twice: by the connection's reply timeout (2 s, on
//! a single server and on each Cluster node), and, on the request path, by a
//! per-call time budget ([`RedisConnection::with_call_timeout`], default
//! [`DEFAULT_CALL_TIMEOUT`] for the rate limiter, bans and anomaly
//! detectors). A call over its budget fails with an I/O `TimedOut` error,
//! which callers count as a failure like any other: a server that hangs is
//! a server that is down. (A call cut off by its budget may still run on
//! the server once it answers again.)

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The budget of one request-path call (rate limits, bans, detectors).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long connecting, and each reply, may take on any connection.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to one Redis server (auto-reconnecting) or to a Cluster;
/// cheap to clone.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
    call_timeout: Option<Duration>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field(
                "kind",
                &match self.inner {
                    Inner::Single(_) => "single",
                    Inner::Cluster(_) => "cluster",
                },
            )
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl RedisConnection {
    /// Connects to one server (`redis://host:port`); connecting and each
    /// reply are bounded to [`REPLY_TIMEOUT`], and a lost connection is
    /// re-established in the background.
    pub async fn single(url: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REPLY_TIMEOUT))
            .set_response_timeout(Some(REPLY_TIMEOUT))
            .set_number_of_retries(2);
        Ok(Self {
            inner: Inner::Single(client.get_connection_manager_with_config(config).await?),
            call_timeout: None,
        })
    }

    /// Connects to a Cluster through its seed nodes; connecting to a node
    /// and each reply (retries and redirections included) are bounded to
    /// [`REPLY_TIMEOUT`].
    pub async fn cluster(urls: &[String]) -> redis::RedisResult<Self> {
        let client = redis::cluster::ClusterClient::builder(urls.to_vec())
            .connection_timeout(REPLY_TIMEOUT)
            .response_timeout(REPLY_TIMEOUT)
            .build()?;
        Ok(Self {
            inner: Inner::Cluster(client.get_async_connection().await?),
            call_timeout: None,
        })
    }

    /// The same connection with every call bounded to `budget` (a call over
    /// it fails with an I/O `TimedOut` error).
    pub fn with_call_timeout(&self, budget: Duration) -> Self {
        Self {
            inner: self.inner.clone(),
            call_timeout: Some(budget.max(Duration::from_millis(1))),
        }
    }

    /// The per-call budget, if one is set.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// Whether this is a Cluster connection (multi-key calls must then stay
    /// on one hash slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }
}

/// `call` bounded by `budget`, if any.
fn bounded<'a, T: Send + 'a>(
    budget: Option<Duration>,
    call: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    match budget {
        None => call,
        Some(budget) => Box::pin(async move {
            match tokio::time::timeout(budget, call).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("Redis did not answer within the {budget:?} call budget"),
                )
                .into()),
            }
        }),
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let budget = self.call_timeout;
        let call = match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        };
        bounded(budget, call)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let budget = self.call_timeout;
        let call = match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        };
        bounded(budget, call)
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

/// The part of `key` Redis Cluster hashes: the text between the first `{`
/// and the next `}` when that is not empty, else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// Puts `items` in the order [`script_calls`] splits them: on a Redis
/// Cluster by the hash tag of `key` (a stable sort: one tag's items keep
/// their order); on one server as they are.
pub(crate) fn sort_for_calls<T>(items: &mut [T], cluster: bool, key: impl Fn(&T) -> &str) {
    if cluster {
        items.sort_by(|a, b| hash_tag(key(a)).cmp(hash_tag(key(b))));
    }
}

/// The runs of `items` (in [`sort_for_calls`] order) that one script call
/// may take: at most `max` (a script blocks Redis while it runs), and on a
/// Cluster only keys of one hash tag (a script's keys must share a slot).
pub(crate) fn script_calls<'a, T>(
    items: &'a [T],
    cluster: bool,
    max: usize,
    key: impl Fn(&T) -> &str + 'a,
) -> impl Iterator<Item = &'a [T]> + 'a {
    let mut rest = items;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let tag = hash_tag(key(first));
        let len = rest
            .iter()
            .take(max.max(1))
            .take_while(|item| !cluster || hash_tag(key(item)) == tag)
            .count();
        let (call, tail) = rest.split_at(len);
        rest = tail;
        Some(call)
    })
}

#[cfg(test)]
mod tests {
    use super::{hash_tag, script_calls, sort_for_calls};

    #[test]
    fn script_calls_keep_one_hash_tag_a_call_on_a_cluster_and_any_on_one_server() {
        let mut keys = vec!["{a}x", "{b}y", "{a}z", "w", "{b}v"];
        let calls = |keys: &[&str], cluster, max| -> Vec<Vec<String>> {
            script_calls(keys, cluster, max, |k| k)
                .map(|c| c.iter().map(|k| (*k).to_owned()).collect())
                .collect()
        };
        assert_eq!(calls(&keys, false, 100).len(), 1);
        assert_eq!(calls(&keys, false, 2).len(), 3);
        sort_for_calls(&mut keys, true, |k| k);
        assert_eq!(
            calls(&keys, true, 100),
            vec![vec!["{a}x", "{a}z"], vec!["{b}y", "{b}v"], vec!["w"]]
        );
        assert_eq!(calls(&keys, true, 1).len(), 5);
        assert_eq!(calls(&[], true, 100).len(), 0);
    }

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag("p:rl:{tenant-1}:r:k"), "tenant-1");
        assert_eq!(hash_tag("p:{}:x"), "p:{}:x");
        assert_eq!(hash_tag("p:{a}{b}"), "a");
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("p:{open"), "p:{open");
    }
}
