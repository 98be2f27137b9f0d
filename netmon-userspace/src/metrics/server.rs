//! The HTTP endpoint: `GET /metrics` on its own thread and runtime, so that
//! a scrape never waits for a poll and a poll never waits for a scrape.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    http::{header, HeaderMap},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::{encoding, metrics::info::Info, registry::Registry};

use super::{exposition::Exposition, MetricsError};
use crate::flows::FailedSends;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listens on `addr` and serves `/metrics` from then on, with no capability
/// on the serving thread. Called before anything is attached: a port in use
/// refuses the run. The failed sends of `flow_collectors` are shown too.
pub fn serve(
    addr: SocketAddr,
    flow_collectors: Vec<FailedSends>,
) -> Result<Arc<Exposition>, MetricsError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|cause| MetricsError::Bind { addr, cause })?;
    listener
        .set_nonblocking(true)
        .map_err(|cause| MetricsError::Bind { addr, cause })?;
    let exposition = Arc::new(Exposition::new(flow_collectors));
    let mut registry = Registry::default();
    registry.register(
        "netmon_build",
        "The running netmon's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(exposition.clone()));
    let registry = Arc::new(registry);
    let (ready, started) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let server = (|| {
                // Capabilities are per thread: this one serves the network and needs none.
                for set in [
                    caps::CapSet::Effective,
                    caps::CapSet::Permitted,
                    caps::CapSet::Inheritable,
                ] {
                    caps::clear(None, set)
                        .map_err(|e| MetricsError::Start(std::io::Error::other(e)))?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(MetricsError::Start)?;
                let listener = {
                    let _entered = runtime.enter();
                    tokio::net::TcpListener::from_std(listener).map_err(MetricsError::Start)?
                };
                Ok((runtime, listener))
            })();
            let (runtime, listener) = match server {
                Ok(server) => {
                    let _ = ready.send(Ok(()));
                    server
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let app = Router::new().route(
                "/metrics",
                get(move |headers: HeaderMap| async move { scrape(&registry, &headers) }),
            );
            if let Err(e) = runtime.block_on(async { axum::serve(listener, app).await }) {
                log::error!("the metrics endpoint stopped: {e}");
            }
        })
        .map_err(MetricsError::Start)?;
    started
        .recv()
        .map_err(|e| MetricsError::Start(std::io::Error::other(e)))??;
    Ok(exposition)
}

/// The exposition in OpenMetrics when the scraper asks for it, else in the
/// Prometheus text format.
fn scrape(registry: &Registry, headers: &HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (encoding::text::encode(&mut body, registry), OPENMETRICS)
    } else {
        (
            encoding::prometheus_text::encode(&mut body, registry),
            PROMETHEUS_TEXT,
        )
    };
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
