//! `--metrics ADDR`: the Prometheus endpoint (`GET /metrics`). Served on a
//! thread of its own with its own small runtime: a scrape asks the kernel
//! for the plugs' counters (netlink, blocking), which must never delay the
//! supervisor in the middle of a hold.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::report::Report;

/// Binds `addr` now (so a taken port is an error at start) and serves from
/// a thread. Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, report: Arc<Report>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    let report = report.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let report = report.clone();
                            async move { Ok::<_, Infallible>(answer(&req, &report)) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })?;
    Ok(bound)
}

fn answer<B>(req: &Request<B>, report: &Report) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => match report.metrics() {
            Ok(text) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "the reloader serves GET /metrics only\n".into(),
        ),
    }
}
