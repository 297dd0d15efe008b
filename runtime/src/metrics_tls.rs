//! A release's metrics certificate, kept in a Secret the chart makes empty
//! (`RELEASE-metrics-tls`): a CA (`ca.crt`) and one certificate naming the node plugins'
//! and the operator's metrics Services (`tls.crt`, `tls.key`). The operator fills it
//! once (and again if it is emptied, with what it holds), the node plugins and the
//! operator serve it, and every client that sends a token — the operator, the uninstall
//! hook, Prometheus — checks the server against its CA. The chart cannot make the CA
//! itself: `helm template` and GitOps renders would make another on every render.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use crate::tls::{Issued, ServedCert};

/// A Secret by namespace and name (`--metrics-tls-secret NAMESPACE/NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for SecretRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected NAMESPACE/NAME"))?;
        for part in [namespace, name] {
            ipclink_core::model::names::check_dns_subdomain(part)
                .map_err(|e| format!("{s:?}: {e}"))?;
        }
        Ok(SecretRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn io(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// What the Secret holds, when it holds all three keys.
fn issued(secret: &Secret) -> Option<Issued> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|t| !t.trim().is_empty())
    };
    Some(Issued {
        ca: text("ca.crt")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
    })
}

/// The certificate in the Secret `at`, if it has one (`None` when it is empty).
pub async fn read(client: &kube::Client, at: &SecretRef) -> std::io::Result<Option<Issued>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let secret = api
        .get(&at.name)
        .await
        .map_err(|e| io(&format!("Secret {at}"), e))?;
    Ok(issued(&secret))
}

/// Writes `want` into the Secret `at` unless it holds a certificate already; returns
/// what it holds then (another replica's, when two race).
async fn fill(client: &kube::Client, at: &SecretRef, want: &Issued) -> std::io::Result<Issued> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    for _ in 0..5 {
        let mut secret = api
            .get(&at.name)
            .await
            .map_err(|e| io(&format!("Secret {at} (the chart makes it)"), e))?;
        if let Some(have) = issued(&secret) {
            return Ok(have);
        }
        let data: BTreeMap<String, ByteString> = [
            ("ca.crt", &want.ca),
            ("tls.crt", &want.cert),
            ("tls.key", &want.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
        secret.data = Some(data);
        // The resourceVersion read above: a write that raced another fails (409).
        match api.replace(&at.name, &PostParams::default(), &secret).await {
            Ok(_) => return Ok(want.clone()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(io(&format!("write Secret {at}"), e)),
        }
    }
    Err(io(&format!("Secret {at}"), "changed under every write"))
}

/// The operator's side: makes sure the Secret `at` holds a certificate for `names`
/// (made now when it is empty), waiting for the API server up to `patience`.
pub async fn ensure(
    client: &kube::Client,
    at: &SecretRef,
    names: &[String],
    patience: Duration,
) -> std::io::Result<Issued> {
    let made = crate::tls::issue(names)?;
    let start = std::time::Instant::now();
    loop {
        match fill(client, at, &made).await {
            Ok(have) => return Ok(have),
            Err(e) if start.elapsed() < patience => {
                tracing::warn!(secret = %at, error = %e, "cannot fill the metrics certificate Secret yet");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The operator's side, after [`ensure`]: writes `have` back whenever the Secret is
/// found emptied (`helm upgrade --force`, a hand edit), every `every`, until `stop`.
pub fn spawn_keep(
    client: kube::Client,
    at: SecretRef,
    have: Issued,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            match fill(&client, &at, &have).await {
                Ok(now) if now != have => {
                    tracing::warn!(secret = %at, "the metrics certificate Secret holds another certificate than this process serves; restart it to serve that one")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(secret = %at, error = %e, "cannot check the metrics certificate Secret")
                }
            }
        }
    });
}

/// The node plugins' side: serves the Secret's certificate through `served` as soon as
/// it has one, and whatever it holds later, looking every `every` (more often while it
/// is empty), until `stop`.
pub fn spawn_follow(
    client: kube::Client,
    at: SecretRef,
    served: Arc<ServedCert>,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut serving: Option<Issued> = None;
        loop {
            match read(&client, &at).await {
                Ok(Some(now)) if serving.as_ref() != Some(&now) => {
                    match served.set_pem(now.cert.as_bytes(), now.key.as_bytes()) {
                        Ok(()) => {
                            tracing::info!(secret = %at, "serving the metrics certificate of the Secret");
                            serving = Some(now);
                        }
                        Err(e) => {
                            tracing::warn!(secret = %at, error = %e, "the metrics certificate Secret holds no usable certificate")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(secret = %at, error = %e, "cannot read the metrics certificate Secret")
                }
            }
            let wait = if serving.is_some() {
                every
            } else {
                Duration::from_secs(2)
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_are_checked_names() {
        let r: SecretRef = "ipclink-system/ipclink-metrics-tls".parse().expect("valid");
        assert_eq!(r.to_string(), "ipclink-system/ipclink-metrics-tls");
        for bad in ["nons", "a/b/c", "../x", "A/b", "/x", "x/"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad}");
        }
    }

    /// A TLS handshake with a server presenting `served`, as a client checking
    /// against `ca` for `name`: whether it succeeds.
    async fn handshake(served: Arc<ServedCert>, ca: &str, name: &str) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(crate::tls::server_config(served).expect("server"));
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let _ = acceptor.accept(s).await;
        });
        let config =
            crate::tls::client_config(&crate::tls::ServerCheck::CaPem(ca.as_bytes().to_vec()))
                .expect("client");
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let ok = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .is_ok();
        let _ = server.await;
        ok
    }

    #[tokio::test]
    async fn an_issued_certificate_is_checked_against_its_ca_and_names() {
        let service = "ipclink-node-metrics.ipclink-system.svc";
        let issued = crate::tls::issue(&[service.to_owned()]).expect("issue");
        let served = ServedCert::self_signed(vec!["localhost".into()]).expect("self-signed");
        // Self-signed at start: a checking client refuses it (and sends no token).
        assert!(!handshake(served.clone(), &issued.ca, service).await);
        served
            .set_pem(issued.cert.as_bytes(), issued.key.as_bytes())
            .expect("set");
        assert!(handshake(served.clone(), &issued.ca, service).await);
        // Not for another name (the pod's address), nor with another CA.
        assert!(!handshake(served.clone(), &issued.ca, "10.0.0.7").await);
        let stranger = crate::tls::issue(&[service.to_owned()]).expect("another CA");
        assert!(!handshake(served, &stranger.ca, service).await);
    }
}
