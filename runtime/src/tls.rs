//! TLS for the metrics endpoint of the in-cluster processes: the server's certificate
//! (PEM files, a release's metrics Secret, or one made at start until the Secret has
//! one), and the client side the operator uses to read the node plugins' `/v1/links`,
//! which always checks the server against a CA: a bearer token is never sent to a peer
//! whose certificate was not verified.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
}

/// The certificate a server presents now: one made at start, replaced when the
/// release's metrics Secret has one (the node plugins follow it).
#[derive(Debug)]
pub struct ServedCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServedCert {
    fn of(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> std::io::Result<CertifiedKey> {
        CertifiedKey::from_der(chain, key, &provider()).map_err(invalid)
    }

    /// A certificate made now for `names` (DNS names or IP addresses), self-signed:
    /// clients that check it refuse it, so none sends it a token.
    pub fn self_signed(names: Vec<String>) -> std::io::Result<Arc<Self>> {
        let made = rcgen::generate_simple_self_signed(names).map_err(invalid)?;
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).map_err(invalid)?;
        let key = Self::of(vec![made.cert.der().clone()], key)?;
        Ok(Arc::new(ServedCert {
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// The certificate chain and key of PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> std::io::Result<Arc<Self>> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid(format!("--tls-cert-file {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(invalid(format!(
                "--tls-cert-file {}: no certificate in it",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| invalid(format!("--tls-key-file {}: {e}", key.display())))?;
        Ok(Arc::new(ServedCert {
            current: RwLock::new(Arc::new(Self::of(chain, key)?)),
        }))
    }

    /// Serves the chain and key of PEM text from now on.
    pub fn set_pem(&self, cert: &[u8], key: &[u8]) -> std::io::Result<()> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if chain.is_empty() {
            return Err(invalid("no certificate in tls.crt"));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(invalid)?;
        let made = Arc::new(Self::of(chain, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = made;
        Ok(())
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A server configuration for HTTP/1.1 over TLS 1.2 or 1.3 presenting `cert`.
pub fn server_config(cert: Arc<ServedCert>) -> std::io::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A CA and a certificate it signed for `names`, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The CA's certificate (`ca.crt`).
    pub ca: String,
    /// The certificate (`tls.crt`).
    pub cert: String,
    /// Its key (`tls.key`).
    pub key: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued { .. }")
    }
}

/// Makes a CA (its key is dropped: nothing else is ever signed with it) and one
/// certificate for `names` signed by it.
pub fn issue(names: &[String]) -> std::io::Result<Issued> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(invalid)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "ipclink metrics CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(invalid)?).map_err(invalid)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(invalid)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "ipclink metrics");
    let key = KeyPair::generate().map_err(invalid)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(invalid)?;
    Ok(Issued {
        ca: issuer.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// How a client checks a server's certificate: always against a CA.
#[derive(Debug, Clone)]
pub enum ServerCheck {
    /// The CA certificates of a PEM file.
    Ca(std::path::PathBuf),
    /// The CA certificates of PEM text (the release's metrics Secret's `ca.crt`).
    CaPem(Vec<u8>),
}

/// A client configuration for `check`.
pub fn client_config(check: &ServerCheck) -> std::io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let certs: Vec<CertificateDer<'static>> = match check {
        ServerCheck::Ca(file) => CertificateDer::pem_file_iter(file)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid(format!("{}: {e}", file.display())))?,
        ServerCheck::CaPem(pem) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("ca.crt: {e}")))?,
    };
    if certs.is_empty() {
        return Err(invalid("no CA certificate to check servers against"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(invalid)?;
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}
