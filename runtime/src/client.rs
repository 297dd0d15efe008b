//! The client side of `/v1/links`: what the operator gathers from the node plugins and
//! `ipclink-sidecar status --endpoint` reads from a running sidecar or volume plugin.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use ipclink_core::report::LinksReport;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest `/v1/links` body accepted (10,000 channels are about 3 MB).
pub const MAX_BODY: usize = 32 << 20;

/// How `https://` endpoints are reached: TLS with this configuration, and the bearer
/// token read from `token_file` at each request (the kubelet rotates it). A token is
/// never sent over plain HTTP.
#[derive(Clone, Debug)]
pub struct Secure {
    /// The TLS client configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// Where the token is (a ServiceAccount's projected token).
    pub token_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the endpoint's
    /// host (pods are reached by address; one certificate names their Service).
    pub server_name: Option<String>,
}

/// One GET of `/v1/links` from `endpoint` — `HOST:PORT` or `http://HOST:PORT` (plain
/// HTTP), or `https://HOST:PORT` (with `secure`, which it then needs) — within
/// `timeout`.
pub async fn links(
    endpoint: &str,
    secure: Option<&Secure>,
    timeout: Duration,
) -> std::io::Result<LinksReport> {
    let work = async {
        if let Some(hostport) = endpoint.strip_prefix("https://") {
            let secure = secure.ok_or_else(|| {
                std::io::Error::other(format!("{endpoint}: no TLS settings for https"))
            })?;
            let host = hostport
                .rsplit_once(':')
                .map_or(hostport, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let host = secure.server_name.as_deref().unwrap_or(host);
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| std::io::Error::other(format!("{endpoint}: {e}")))?;
            let stream = tokio::net::TcpStream::connect(hostport).await?;
            let tls = tokio_rustls::TlsConnector::from(secure.tls.clone())
                .connect(name, stream)
                .await?;
            let token = match &secure.token_file {
                // A small file, read once per request: no blocking-pool trip.
                Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("token {}: {e}", f.display()))
                })?),
                None => None,
            };
            get_links(tls, hostport, token.as_deref().map(str::trim)).await
        } else {
            let hostport = endpoint.strip_prefix("http://").unwrap_or(endpoint);
            let stream = tokio::net::TcpStream::connect(hostport).await?;
            get_links(stream, hostport, None).await
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )
    })?
}

async fn get_links<Io>(io: Io, host: &str, token: Option<&str>) -> std::io::Result<LinksReport>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get("/v1/links").header(hyper::header::HOST, host);
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
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
}

/// One POST of the JSON `body` to `path` on the Unix socket `socket` (a volume plugin's),
/// within `timeout`: the answer's status and body (at most [`MAX_BODY`] bytes).
pub async fn post_unix(
    socket: &std::path::Path,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, "plugin")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(std::io::Error::other)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| std::io::Error::other(format!("reading the body: {e}")))?
            .to_bytes();
        Ok((status, body.to_vec()))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{}: no answer within {timeout:?}", socket.display()),
        )
    })?
}
