//! API clients that count their requests as client-go does
//! (`rest_client_requests_total` by `code`, `method` and `host`), for every
//! server either binary talks to: the service cluster, kcp and its virtual
//! workspaces.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use kube::client::ClientBuilder;
use kube::{Client, Config};
use prometheus::{IntCounterVec, Opts};
use tower::{Layer, Service};

/// Requests by response code (`<error>` when none came), method and host.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "rest_client_requests_total",
            "Number of HTTP requests, partitioned by status code, method, and host.",
        ),
        &["code", "method", "host"],
    )
    .expect("valid metric")
});

/// A client of `config` whose requests are counted.
pub fn client(config: Config) -> Result<Client, kube::Error> {
    let host = config
        .cluster_url
        .authority()
        .map_or_else(String::new, |a| a.to_string());
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&Counting { host })
        .build())
}

/// Counts the requests of the service it wraps.
#[derive(Clone, Debug)]
struct Counting {
    host: String,
}

impl<S> Layer<S> for Counting {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            host: self.host.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    host: String,
}

impl<S, Req, Res> Service<http::Request<Req>> for Counted<S>
where
    S: Service<http::Request<Req>, Response = http::Response<Res>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let method = request.method().as_str().to_string();
        let host = self.host.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "<error>".to_string(),
            };
            REQUESTS.with_label_values(&[&code, &method, &host]).inc();
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_request_is_counted_by_code_method_and_host() {
        let mut service = Counting {
            host: "kcp.test:6443".into(),
        }
        .layer(tower::service_fn(|request: http::Request<()>| async move {
            let status = if request.uri().path() == "/missing" {
                404
            } else {
                200
            };
            Ok::<_, std::convert::Infallible>(
                http::Response::builder().status(status).body(()).unwrap(),
            )
        }));
        let count = |code: &str, method: &str| {
            REQUESTS
                .with_label_values(&[code, method, "kcp.test:6443"])
                .get()
        };
        let before = (count("200", "GET"), count("404", "PATCH"));
        for (method, path) in [("GET", "/"), ("GET", "/"), ("PATCH", "/missing")] {
            let request = http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            service.call(request).await.unwrap();
        }
        assert_eq!(
            (count("200", "GET"), count("404", "PATCH")),
            (before.0 + 2, before.1 + 1)
        );
    }
}
