//! Secrets and client TLS. A bearer token comes from the configuration, the environment
//! (`RRLHF__…__AUTH_TOKEN`, through the config layers) or a file (`…auth_token_file`, e.g. a
//! mounted Kubernetes Secret) — never from a command-line argument, which every user of the
//! machine can read in the process list. [`ClientTls`] is what a client of the services (the
//! orchestrator, `rrlhf score`) needs for `https://` endpoints signed by a private CA, and the
//! client certificate it presents to services that require one (mutual TLS).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::ConfigError;

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The token given inline (`value`) or in a file (`file`: its contents, trimmed); both at once
/// is an error naming `field`, as is an empty or unreadable file.
pub fn token(
    field: &str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(invalid(
            field,
            format!("and {field}_file are both set; give one"),
        )),
        (Some(v), None) => Ok(Some(v.to_owned())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    &format!("{field}_file"),
                    format!("cannot be read: {}: {e}", path.display()),
                )
            })?;
            let t = text.trim();
            if t.is_empty() {
                return Err(invalid(
                    &format!("{field}_file"),
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Some(t.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// TLS of a client of the services.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM certificate(s) of the CA that signed the services' certificates; needed for
    /// `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// PEM certificate and key this client presents, for services that require client
    /// certificates (`server.tls_client_ca`). Set together.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the services' certificates must carry (default: each endpoint's host).
    pub domain: Option<String>,
}

impl ClientTls {
    /// Checks the fields' combination; `prefix` names the section, e.g. `endpoints.tls`.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(
                &format!("{prefix}.cert"),
                format!("and {prefix}.key must be set together"),
            ));
        }
        if self.cert.is_some() && self.ca.is_none() {
            return Err(invalid(
                &format!("{prefix}.ca"),
                "is needed with a client certificate (mutual TLS runs over TLS)",
            ));
        }
        Ok(())
    }

    /// The tonic client configuration (files read now); `None` without a CA.
    pub fn config(&self, prefix: &str) -> Result<Option<ClientTlsConfig>, ConfigError> {
        self.validate(prefix)?;
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let read = |field: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                invalid(
                    &format!("{prefix}.{field}"),
                    format!("cannot be read: {}: {e}", path.display()),
                )
            })
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca", ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        Ok(Some(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_inline_or_from_a_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(
            token("auth_token", None, Some(&file)).unwrap().unwrap(),
            "s3cret"
        );
        assert_eq!(token("auth_token", Some("x"), None).unwrap().unwrap(), "x");
        assert_eq!(token("auth_token", None, None).unwrap(), None);
        let both = token("auth_token", Some("x"), Some(&file)).unwrap_err();
        assert!(both.to_string().contains("both set"), "{both}");
        std::fs::write(&file, " \n").unwrap();
        let empty = token("auth_token", None, Some(&file)).unwrap_err();
        assert!(empty.to_string().contains("`auth_token_file`"), "{empty}");
        let missing = token("auth_token", None, Some(&dir.path().join("no"))).unwrap_err();
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
    }

    #[test]
    fn client_tls_fields_go_together() {
        let half = ClientTls {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            ..ClientTls::default()
        };
        let e = half.validate("endpoints.tls").unwrap_err().to_string();
        assert!(e.contains("`endpoints.tls.cert`"), "{e}");
        let no_ca = ClientTls {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..ClientTls::default()
        };
        let e = no_ca.validate("t").unwrap_err().to_string();
        assert!(e.contains("`t.ca`"), "{e}");
        assert!(ClientTls::default().config("t").unwrap().is_none());
    }
}
