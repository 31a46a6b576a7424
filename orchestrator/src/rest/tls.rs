//! HTTPS for the REST API (`rest.tls_cert` / `rest.tls_key`): a listener that completes each
//! connection's TLS handshake (rustls, ring) before axum serves HTTP/1.1 on it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::error::{OrchestratorError, Result};

/// How long a client may take over its handshake before it is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A TCP listener whose connections are TLS.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cert: &Path, key: &Path) -> Result<Self> {
        Ok(Self {
            tcp,
            acceptor: acceptor(cert, key)?,
        })
    }
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = Listener::accept(&mut self.tcp).await;
            // A failed handshake (a plain-HTTP client, a wrong certificate) ends that
            // connection only.
            match tokio::time::timeout(HANDSHAKE, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "REST TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "REST TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A rustls acceptor for the PEM certificate chain `cert` and private key `key`.
fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            OrchestratorError::invalid(field, format!("cannot read {}: {e}", path.display()))
        })
    };
    let pem = read("rest.tls_cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| OrchestratorError::invalid("rest.tls_cert", e))?;
    if chain.is_empty() {
        return Err(OrchestratorError::invalid(
            "rest.tls_cert",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read("rest.tls_key", key)?)
        .map_err(|e| OrchestratorError::invalid("rest.tls_key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OrchestratorError::invalid("rest.tls_cert", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| OrchestratorError::invalid("rest.tls_key", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
