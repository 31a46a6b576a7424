//! Bearer-token authentication as a tonic interceptor: with a token configured, a call without
//! `authorization: Bearer <token>` fails with UNAUTHENTICATED. Health checks are not wrapped
//! (see [`crate::server`]), so probes work without credentials.

use tonic::{Request, Status};

/// An interceptor accepting calls that carry `token` (or every call when `None`).
#[derive(Clone, Debug)]
pub struct BearerAuth {
    expected: Option<String>,
}

impl BearerAuth {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}")),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        match request.metadata().get("authorization").map(|v| v.to_str()) {
            Some(Ok(given)) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
        }
    }
}

/// Compares without an early exit, so response time does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn checks_the_bearer_token() {
        let mut auth = BearerAuth::new(Some("s3cret"));
        let mut req = Request::new(());
        assert_eq!(
            auth.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        req.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(auth.call(req).is_ok());
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer s3cre".parse().unwrap());
        assert_eq!(
            auth.call(wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(BearerAuth::new(None).call(Request::new(())).is_ok());
    }
}
