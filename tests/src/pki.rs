//! A private PKI made on the spot for TLS tests: a CA, a server certificate for `localhost` /
//! 127.0.0.1 and a client certificate, all signed by the CA, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// PEM files of a CA and two certificates it signed.
#[derive(Debug)]
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn write(dir: &Path, name: &str, pem: String) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write a PEM file");
    path
}

/// A fresh CA with a server and a client certificate.
pub fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a CA key"))
        .expect("the CA");
    let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, stem: &str| {
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &ca).expect("a signed certificate");
        (
            write(dir.path(), &format!("{stem}.pem"), cert.pem()),
            write(dir.path(), &format!("{stem}-key.pem"), key.serialize_pem()),
        )
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    let (client_cert, client_key) = leaf(
        vec!["rrlhf-orchestrator".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    Pki {
        ca: write(dir.path(), "ca.pem", ca.pem()),
        _dir: dir,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}
