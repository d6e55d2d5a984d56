//! Fetching key documents: a size- and time-bounded HTTP GET, and the URL
//! policy (https only, unless plain http to loopback is explicitly allowed).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use crate::http_client::{self, HttpClient, TlsTrust};

use crate::authz::BoxFuture;

/// Why a document could not be fetched.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not acceptable (scheme, host, syntax).
    #[error("refused URL `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The TLS client could not be set up (e.g. a malformed extra CA bundle).
    #[error("TLS client: {0}")]
    Tls(String),
    /// The server answered with a non-200 status.
    #[error("`{url}` answered HTTP {status}; check the JWKS or discovery URL and the issuer")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body exceeds the bound.
    #[error(
        "`{url}` sent more than {limit} bytes; raise max_bytes if the key set is really that large"
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// The request did not finish in time.
    #[error("`{0}` did not answer in time; check the issuer is reachable from this host")]
    Timeout(String),
    /// Connection or protocol failure.
    #[error("`{url}`: {detail}")]
    Io {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
}

/// Fetches a document by URL; implementations must bound size and time.
pub trait Fetcher: Send + Sync {
    /// GETs `url`, failing when the body exceeds `max_bytes`.
    fn get<'a>(
        &'a self,
        url: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Bytes, FetchError>>;
}

/// Checks `url` against the policy: `https://`, or `http://` to a loopback
/// host when `allow_http` is set.
pub fn check_url(url: &str, allow_http: bool) -> Result<(), FetchError> {
    let refuse = |reason| {
        Err(FetchError::Url {
            url: url.to_owned(),
            reason,
        })
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return refuse("not a valid absolute URL");
    };
    let Some(host) = uri.host() else {
        return refuse("has no host");
    };
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_http => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                refuse("plain http is allowed for loopback hosts only")
            }
        }
        Some("http") => {
            refuse("plain http is refused; use https (or allow_http for loopback tests)")
        }
        _ => refuse("scheme must be https"),
    }
}

/// An HTTP/1.1 fetcher on the shared outbound client: `https://` over rustls
/// (Mozilla roots plus configured CAs), `http://` only where [`check_url`]
/// allowed it.
#[derive(Clone)]
pub struct HttpFetcher {
    client: HttpClient,
    timeout: Duration,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// A fetcher trusting `trust` whose every request (connect, TLS,
    /// headers, body) ends within `timeout`.
    pub fn new(timeout: Duration, trust: &TlsTrust) -> Result<Self, FetchError> {
        let client =
            http_client::build(trust, timeout).map_err(|e| FetchError::Tls(e.to_string()))?;
        Ok(Self { client, timeout })
    }

    async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Bytes, FetchError> {
        let io = |detail: String| FetchError::Io {
            url: url.to_owned(),
            detail,
        };
        let uri: http::Uri = url.parse().map_err(|_| FetchError::Url {
            url: url.to_owned(),
            reason: "not a valid absolute URL",
        })?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|e| io(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| io(e.to_string()))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit: max_bytes,
        };
        if let Some(len) = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > max_bytes as u64
        {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    io(e.to_string())
                }
            })?;
        Ok(body.to_bytes())
    }
}

impl Fetcher for HttpFetcher {
    fn get<'a>(
        &'a self,
        url: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Bytes, FetchError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.fetch(url, max_bytes))
                .await
                .unwrap_or_else(|_| Err(FetchError::Timeout(url.to_owned())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_policy() {
        assert!(check_url("https://id.example.com/jwks", false).is_ok());
        assert!(check_url("http://id.example.com/jwks", false).is_err());
        assert!(check_url("http://id.example.com/jwks", true).is_err());
        assert!(check_url("http://127.0.0.1:8080/jwks", true).is_ok());
        assert!(check_url("http://[::1]:8080/jwks", true).is_ok());
        assert!(check_url("http://localhost/jwks", true).is_ok());
        assert!(check_url("ftp://localhost/jwks", true).is_err());
        assert!(check_url("/relative", true).is_err());
    }
}
