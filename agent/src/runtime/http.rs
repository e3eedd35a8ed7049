//! The HTTP endpoints of the agent and the operator: `/healthz` and `/readyz` on the health
//! address, `/metrics` on the metrics address. Both serve from start-up,
//! whether or not this replica leads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use warp::Filter;
use warp::http::StatusCode;

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

/// Serves `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve_health(
    address: SocketAddr,
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
        .bind(address)
        .await
        .graceful(shutdown)
        .run()
        .await;
}

/// Serves `/metrics`, rendered by `render` on each scrape, until `shutdown`
/// resolves.
pub async fn serve_metrics(
    address: SocketAddr,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let route = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(render(), "content-type", "text/plain; version=0.0.4")
    });
    warp::serve(route)
        .bind(address)
        .await
        .graceful(shutdown)
        .run()
        .await;
}
