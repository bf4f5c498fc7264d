//! Process lifecycle shared by the services: stop on SIGTERM or SIGINT, Prometheus text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT, logging which.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "stopping"),
        () = term => tracing::info!(signal = "SIGTERM", "stopping"),
    }
    shutdown.cancel();
}

/// `/metrics`: the Prometheus text exposition format, with the process metrics read now.
pub fn prometheus_text(handle: &PrometheusHandle) -> Response {
    handle.run_upkeep();
    let mut text = handle.render();
    crate::process::append(&mut text);
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The container healthcheck of a service listening on `listen`: true when
/// `GET http(s)://<host>:<port><path>` answers 200 within 2 s. An unspecified listen
/// address (`0.0.0.0`, `::`) is probed on loopback. Needs no tool in the image besides the
/// binary. With `tls`, the probe speaks HTTPS without checking the certificate: it asks
/// its own process on this host whether it serves, not whether its certificate is valid
/// for a name.
#[must_use]
pub fn probe(listen: std::net::SocketAddr, path: &str, tls: bool) -> bool {
    let host = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{host}:{}{path}", listen.port());
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    runtime.block_on(async {
        let Ok(client) = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .danger_accept_invalid_certs(tls)
            .build()
        else {
            return false;
        };
        match client.get(&url).send().await {
            Ok(response) => response.status() == reqwest::StatusCode::OK,
            Err(e) => {
                eprintln!("{url}: {e}");
                false
            }
        }
    })
}
