//! The client side of `/v1/links`: what the operator gathers from the node plugins and
//! `ipclink-sidecar status --endpoint` reads from a running sidecar or volume plugin.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use ipclink_core::report::LinksReport;

/// Largest `/v1/links` body accepted (10,000 channels are about 3 MB).
pub const MAX_BODY: usize = 32 << 20;

/// One GET of `http://{endpoint}/v1/links` (`HOST:PORT`), within `timeout`.
pub async fn links(endpoint: &str, timeout: Duration) -> std::io::Result<LinksReport> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(endpoint).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get("/v1/links")
            .header(hyper::header::HOST, endpoint)
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(std::io::Error::other(format!(
                "GET /v1/links answered {}",
                resp.status()
            )));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| std::io::Error::other(format!("reading the body: {e}")))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(std::io::Error::other)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )
    })?
}
