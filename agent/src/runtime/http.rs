//! The HTTP endpoints of the agent and the operator: `/healthz` and `/readyz` on the health
//! address, `/metrics` on the metrics address. Both serve from start-up,
//! whether or not this replica leads. [`get`] is the matching plain-`http://`
//! client, for the operator's `probe` command and the end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use warp::Filter;
pub use warp::http::StatusCode;

/// How long [`get`] waits for a whole answer.
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// Readiness, flipped by the start-up sequence.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the agent ready (kcp resolved, caches synced) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// An endpoint's address that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({flag}): {source}")]
pub struct ListenError {
    /// The flag that set the address.
    pub flag: &'static str,
    /// The address.
    pub address: SocketAddr,
    /// The socket error, e.g. the address is in use.
    pub source: std::io::Error,
}

/// Binds `address`, set by `flag`, for [`serve_health`] or
/// [`serve_metrics`], so that a taken port stops start-up with an error
/// naming the flag instead of a panic in the serving task.
pub async fn listen(flag: &'static str, address: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ListenError {
            flag,
            address,
            source,
        })
}

/// Serves `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve_health(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let healthz = warp::path!("healthz").map(|| String::from("ok"));
    let readyz = warp::path!("readyz").map(move || {
        if health.is_ready() {
            warp::reply::with_status(String::from("ok"), StatusCode::OK)
        } else {
            warp::reply::with_status(String::from("not ready"), StatusCode::SERVICE_UNAVAILABLE)
        }
    });
    warp::serve(warp::get().and(healthz.or(readyz)))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// Serves `/metrics` on `listener`, rendered by `render` on each scrape,
/// until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let route = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(render(), "content-type", "text/plain; version=0.0.4")
    });
    warp::serve(route)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// Why [`get`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The URL is not `http://host:port/path`.
    #[error("{0} is not an http://host:port URL")]
    Url(String),
    /// No TCP connection.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("requesting {url}: {source}")]
    Exchange {
        /// The URL.
        url: String,
        /// The protocol error.
        source: hyper::Error,
    },
    /// No whole answer in time.
    #[error("{0} did not answer within 10s")]
    Timeout(String),
}

/// GETs a plain `http://` URL over HTTP/1.1 and returns the status and body,
/// whatever the status.
pub async fn get(url: &str) -> Result<(StatusCode, String), GetError> {
    tokio::time::timeout(GET_TIMEOUT, exchange(url))
        .await
        .map_err(|_| GetError::Timeout(url.to_string()))?
}

async fn exchange(url: &str) -> Result<(StatusCode, String), GetError> {
    let bad_url = || GetError::Url(url.to_string());
    let uri: warp::http::Uri = url.parse().map_err(|_| bad_url())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad_url());
    }
    let authority = uri.authority().ok_or_else(bad_url)?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|source| GetError::Connect {
            url: url.to_string(),
            source,
        })?;
    let failed = |source| GetError::Exchange {
        url: url.to_string(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failed)?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = warp::http::Request::get(path)
        .header(warp::http::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|_| bad_url())?;
    let response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(failed)?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_reads_status_and_body_from_the_health_endpoints() {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = listen("--health-address", any_port).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let health = Arc::new(Health::default());
        tokio::spawn(serve_health(
            listener,
            health.clone(),
            std::future::pending(),
        ));
        let readyz = format!("http://{address}/readyz");
        assert_eq!(
            get(&readyz).await.expect("answer"),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_string())
        );
        health.set_ready(true);
        assert_eq!(
            get(&readyz).await.expect("answer"),
            (StatusCode::OK, "ok".to_string())
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_the_flag() {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let taken = listen("--metrics-address", any_port).await.expect("bind");
        let address = taken.local_addr().expect("address");
        let error = listen("--metrics-address", address)
            .await
            .expect_err("the address is taken");
        assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {address} (--metrics-address): ")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn get_rejects_other_schemes() {
        assert!(matches!(
            get("https://127.0.0.1:1/readyz").await,
            Err(GetError::Url(_))
        ));
    }
}
