//! Serving a router on TCP or a Unix socket with a header-read timeout, a connection cap
//! and graceful shutdown (axum's `serve` has neither knob).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

/// A listening socket whose connections [`serve`] can take.
pub trait Listener: Send {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
    /// The address of a connection's peer, when it has one.
    fn peer(_io: &Self::Io) -> Option<std::net::IpAddr> {
        None
    }
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
    fn peer(io: &Self::Io) -> Option<std::net::IpAddr> {
        io.peer_addr().ok().map(|a| a.ip().to_canonical())
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Limits of a served endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client must send its request head within this time.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time open connections get to finish after shutdown starts.
    pub drain: Duration,
    /// Bytes a connection's read buffer grows to: a request head that does not fit is
    /// answered 431 (one read may fill up to about twice this; hyper's default is about
    /// 400 KiB, which 64 connections would turn into 25 MiB).
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
            drain: Duration::from_secs(5),
            max_head_bytes: 32 << 10,
        }
    }
}

impl Limits {
    /// Limits of a probe listener: its requests are tiny, so a client that sends
    /// nothing is dropped after 2 s, and more connections are served at once.
    pub fn probes() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(2),
            max_connections: 256,
            drain: Duration::from_secs(1),
            max_head_bytes: 16 << 10,
        }
    }
}

/// Binds `addr` and serves `app` there until `shutdown` completes (in a task); a bind
/// error names `flag`.
pub async fn spawn_tcp(
    flag: &str,
    addr: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = bind_flag(flag, addr)?;
    Ok(tokio::spawn(serve(listener, app, limits, shutdown)))
}

/// [`bind_tcp`], with an error that names the flag the address came from.
fn bind_flag(flag: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    bind_tcp(addr).map_err(|e| std::io::Error::new(e.kind(), format!("{flag} {addr}: {e}")))
}

/// A TCP listener on `addr` whose accept queue holds 1,024 connections (the standard
/// library's 128 makes a client's connections wait for SYN retries once the served
/// ones are taken).
pub fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `app` on `listener` until `shutdown` completes, then drains connections.
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    accept_loop(listener, limits, shutdown, move |stream, peer, watcher| {
        connection(stream, app.clone(), limits, peer, watcher)
    })
    .await
}

/// [`serve`] over TLS with `tls`: the handshake has the header-read timeout and
/// happens in the connection's own task. A client that speaks plain HTTP instead (its
/// first byte is not a TLS handshake's) gets `plain`, which should hold only what may
/// be said in the clear (health, for probes still pointed at this port).
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    plain: Router,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(listener, limits, shutdown, move |stream, peer, watcher| {
        let (app, plain, acceptor) = (app.clone(), plain.clone(), acceptor.clone());
        async move {
            let wait = limits.header_read_timeout;
            let mut first = [0u8; 1];
            match tokio::time::timeout(wait, stream.peek(&mut first)).await {
                // 22: a TLS handshake record.
                Ok(Ok(1)) if first[0] != 22 => {
                    return connection(stream, plain, limits, peer, watcher).await;
                }
                Ok(Ok(1)) => {}
                _ => return,
            }
            match tokio::time::timeout(wait, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => connection(tls, app, limits, peer, watcher).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    })
    .await
}

/// Accepts connections of `listener`, at most `limits.max_connections` served at once,
/// each by `handle` in a task of its own, until `shutdown`; then drains them.
async fn accept_loop<L, F, Fut>(
    listener: L,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    handle: F,
) -> std::io::Result<()>
where
    L: Listener,
    F: Fn(L::Io, Option<std::net::IpAddr>, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.next() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = L::peer(&stream);
        let served = handle(stream, peer, graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            served.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain time; closing");
    }
    Ok(())
}

/// Serves one connection until it ends or the shutdown's drain ends it; each request
/// carries the peer's address as an [`crate::access::Peer`] extension.
async fn connection<Io>(
    io: Io,
    app: Router,
    limits: Limits,
    peer: Option<std::net::IpAddr>,
    watcher: Watcher,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = tower::ServiceExt::map_request(
        app,
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            if let Some(ip) = peer {
                req.extensions_mut().insert(crate::access::Peer(ip));
            }
            req
        },
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// An endpoint's protection: its TLS configuration and who may read it.
#[derive(Debug, Clone)]
pub struct Protected {
    /// The server's certificate.
    pub tls: Arc<rustls::ServerConfig>,
    /// Who may read `/metrics` and `/v1/links`.
    pub guard: Arc<crate::access::Guard>,
}

/// Binds `addr` and serves `app` there until `shutdown` completes, in a task; when
/// `protected`, over TLS and behind the guard, with `health` for plain-HTTP clients. A
/// bind error names `flag`.
pub async fn spawn_endpoint(
    flag: &str,
    addr: std::net::SocketAddr,
    app: Router,
    health: Router,
    protected: Option<Protected>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let limits = Limits::default();
    let Some(p) = protected else {
        return spawn_tcp(flag, addr, app, limits, shutdown).await;
    };
    let listener = bind_flag(flag, addr)?;
    let app = crate::access::guarded(app, p.guard);
    Ok(tokio::spawn(serve_tls(
        listener, app, health, limits, p.tls, shutdown,
    )))
}

/// Where an endpoint's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files (`--tls-cert-file`, `--tls-key-file`: e.g. a cert-manager Secret).
    Files(std::path::PathBuf, std::path::PathBuf),
    /// Served as the caller keeps it (the release's metrics Secret).
    Served(Arc<crate::tls::ServedCert>),
    /// Made at start, self-signed: clients that check certificates refuse it.
    Made,
}

/// The protection `--metrics-auth` asks for an endpoint on `listen`: `None` for plain
/// HTTP on loopback; else HTTPS with the certificate of `cert` and bearer tokens of the
/// metrics audience (and, with `accept_api_audience`, the API server's) reviewed by
/// the API server through `client` (the process's own, when it has one; else one is
/// made).
#[cfg(feature = "kube")]
pub async fn protection(
    listen: std::net::SocketAddr,
    auth: Option<crate::access::MetricsAuth>,
    cert: CertSource,
    accept_api_audience: bool,
    client: Option<kube::Client>,
) -> std::io::Result<Option<Protected>> {
    use crate::access::{Guard, KubeReviewer, MetricsAuth};
    use crate::tls::ServedCert;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if MetricsAuth::resolve(auth, listen).map_err(invalid)? == MetricsAuth::None {
        return Ok(None);
    }
    let served = match cert {
        CertSource::Files(c, k) => ServedCert::from_files(&c, &k)?,
        CertSource::Served(s) => s,
        CertSource::Made => ServedCert::self_signed(own_names(listen))?,
    };
    let client = match client {
        Some(c) => c,
        None => kube::Client::try_default().await.map_err(|e| {
            std::io::Error::other(format!(
                "--metrics-auth kubernetes needs the Kubernetes API (in-cluster or KUBECONFIG): {e}"
            ))
        })?,
    };
    Ok(Some(Protected {
        tls: crate::tls::server_config(served)?,
        guard: Guard::new(KubeReviewer::new(client, accept_api_audience)),
    }))
}

/// The names a certificate made at start carries: the host's name, `localhost` and the
/// address listened on.
pub fn own_names(listen: std::net::SocketAddr) -> Vec<String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    [host, "localhost".into(), listen.ip().to_string()]
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect()
}
