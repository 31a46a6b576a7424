//! HTTPS for the REST API (`rest.tls_cert` / `rest.tls_key`): a listener that completes each
//! connection's TLS handshake (rustls, ring), concurrently, before axum serves HTTP/1.1 on it.

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

/// A TCP listener whose connections are TLS. A background task accepts TCP connections and
/// runs each handshake in its own task, so a slow or silent client delays nobody else's; the
/// connections that complete their handshake wait in a queue for axum.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

type TlsStream<S> = tokio_rustls::server::TlsStream<S>;

impl TlsListener {
    pub fn new(tcp: TcpListener, cert: &Path, key: &Path) -> Result<Self> {
        let acceptor = acceptor(cert, key)?;
        let local = tcp
            .local_addr()
            .map_err(|e| OrchestratorError::io("rest.addr: the listener's address", e))?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            let mut tcp = tcp;
            loop {
                let (stream, addr) = Listener::accept(&mut tcp).await;
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A failed handshake (a plain-HTTP client, a wrong certificate) ends that
                    // connection only.
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => drop(tx.send((tls, addr)).await),
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "REST TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "REST TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task is gone (only when the listener is dropped): nothing more
            // will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
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
