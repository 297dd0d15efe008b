//! TLS for the metrics endpoint of the in-cluster processes: the server's certificate
//! (PEM files, or one made at start), and the client side the operator uses to read the
//! node plugins' `/v1/links`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
}

/// A server configuration for HTTP/1.1 over TLS 1.2 or 1.3.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> std::io::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(invalid)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration of the certificate chain and key in PEM files.
pub fn server_from_files(cert: &Path, key: &Path) -> std::io::Result<Arc<ServerConfig>> {
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
    server_config(chain, key)
}

/// A server configuration with a self-signed certificate made now for `names` (DNS
/// names or IP addresses); clients then authenticate the server only if they pin it.
pub fn server_self_signed(names: Vec<String>) -> std::io::Result<Arc<ServerConfig>> {
    let made = rcgen::generate_simple_self_signed(names).map_err(invalid)?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).map_err(invalid)?;
    server_config(vec![made.cert.der().clone()], key)
}

/// How a client checks a server's certificate.
#[derive(Debug, Clone)]
pub enum ServerCheck {
    /// Against the CA certificates of a PEM file.
    Ca(std::path::PathBuf),
    /// Not at all: the connection is encrypted, and the server is trusted by how it was
    /// found (the node plugins' pod addresses, from the API server).
    None,
}

/// A client configuration for `check`.
pub fn client_config(check: &ServerCheck) -> std::io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let config = match check {
        ServerCheck::Ca(file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(file)
                .map_err(|e| invalid(format!("{}: {e}", file.display())))?
            {
                let cert = cert.map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                roots.add(cert).map_err(invalid)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerCheck::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
