//! Transport security end to end, with a private CA made in the test: a service that requires
//! client certificates (mutual TLS) and a bearer token read from a file answers the
//! orchestrator's clients configured with the CA, their certificate and the token file, and
//! turns away a client without a certificate; the REST API served over HTTPS answers a client
//! that trusts the CA (without waiting behind a client that never finishes its handshake) and
//! not a plain-HTTP one.

use std::sync::Arc;

use rrlhf_embedded::{Options, reward_config, start_reward};
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::clients::Services;
use rrlhf_orchestrator::config::Endpoints;
use rrlhf_orchestrator::rest::{Api, serve};
use rrlhf_proto::reward::v1::InfoRequest;
use rrlhf_runtime::secrets::ClientTls;
use rrlhf_testkit::cluster::dirs;
use rrlhf_testkit::pki::pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_token_files_between_the_orchestrator_and_a_service() {
    let pki = pki();
    let scratch = tempfile::tempdir().unwrap();
    let token = scratch.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mut cfg = reward_config(&dirs().reward, "127.0.0.1:0", &Options::default());
    cfg.server.tls_cert = Some(pki.server_cert.clone());
    cfg.server.tls_key = Some(pki.server_key.clone());
    cfg.server.tls_client_ca = Some(pki.ca.clone());
    cfg.server.auth_token_file = Some(token.clone());
    let reward = start_reward(cfg).await.unwrap();

    let endpoints = |tls: ClientTls| Endpoints {
        reward: vec![format!("https://127.0.0.1:{}", reward.addr.port())],
        auth_token_file: Some(token.clone()),
        tls,
        ..Endpoints::default()
    };
    let full = ClientTls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        domain: Some("localhost".into()),
    };
    let services = Services::connect(&endpoints(full.clone())).unwrap();
    let info = services.reward.any().info(InfoRequest {}).await;
    assert!(info.is_ok(), "{info:?}");

    // No client certificate: refused in the handshake.
    let anonymous = ClientTls {
        cert: None,
        key: None,
        ..full.clone()
    };
    let services = Services::connect(&endpoints(anonymous)).unwrap();
    assert!(services.reward.any().info(InfoRequest {}).await.is_err());
    // The certificate but no token: UNAUTHENTICATED.
    let no_token = Endpoints {
        auth_token_file: None,
        ..endpoints(full)
    };
    let status = Services::connect(&no_token)
        .unwrap()
        .reward
        .any()
        .info(InfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // An https endpoint without a CA is refused when the config is checked, naming the field.
    let mut cfg = OrchestratorConfig::default();
    cfg.endpoints.reward = vec!["https://127.0.0.1:1".into()];
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.starts_with("endpoints.tls.ca"), "{e}");
    reward.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_speaks_https_when_given_a_certificate() {
    let pki = pki();
    let mut base = OrchestratorConfig::default();
    base.rest.tls_cert = Some(pki.server_cert.clone());
    base.rest.tls_key = Some(pki.server_key.clone());
    let (addr, _task) = serve(
        "127.0.0.1:0",
        Api::new(base).unwrap(),
        std::future::pending(),
    )
    .await
    .unwrap();

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&std::fs::read(&pki.ca).unwrap()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A client that connects and never starts its handshake delays nobody else's.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "waited {:?} behind a silent client",
        started.elapsed()
    );

    // Plain HTTP gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw).await;
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");
}
