//! The API's answers to bad requests and to commands its runs cannot take, without services: a
//! run whose services do not answer fails at once, which is enough to see every kind of error
//! get its status code.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;
use crate::config::{Endpoints, RetrySettings};

async fn call(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// Unknown paths and methods answer `{"error": …}` like every other failure (they used to
/// answer an empty body).
#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = router(Api::new(OrchestratorConfig::default()));
    let (code, v) = call(&app, "GET", "/v1/nothing", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&v), "no route /v1/nothing", "{v}");
    let (code, v) = call(&app, "DELETE", "/v1/runs", "").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&v), "/v1/runs does not answer DELETE", "{v}");
}

/// `/readyz` is ready only while every service endpoint accepts connections; it names the
/// ones that do not (it used to answer "ready" whatever the services' state).
#[tokio::test]
async fn readiness_follows_the_services() {
    let listeners: Vec<tokio::net::TcpListener> = listeners(4).await;
    let url = |l: &tokio::net::TcpListener| format!("http://{}", l.local_addr().unwrap());
    let mut base = OrchestratorConfig::default();
    base.endpoints.actor = vec![url(&listeners[0])];
    base.endpoints.critic = vec![url(&listeners[1])];
    base.endpoints.reference = vec![url(&listeners[2])];
    base.endpoints.reward = vec![url(&listeners[3])];
    let app = router(Api::new(base.clone()));
    let req = || {
        Request::builder()
            .uri("/readyz")
            .body(Body::empty())
            .unwrap()
    };
    let resp = app.clone().oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The reward service goes away.
    let gone = base.endpoints.reward[0].clone();
    drop(listeners);
    let (code, v) = call(&app, "GET", "/readyz", "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&v).contains(&gone), "{v}");
}

/// `n` listeners on free loopback ports.
async fn listeners(n: usize) -> Vec<tokio::net::TcpListener> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    out
}

#[tokio::test]
async fn every_error_gets_the_status_of_its_kind() {
    let out = tempfile::tempdir().unwrap();
    let nowhere = vec!["http://127.0.0.1:1".to_owned()];
    let mut base = OrchestratorConfig::default();
    base.run.out_dir = out.path().into();
    base.endpoints = Endpoints {
        actor: nowhere.clone(),
        critic: nowhere.clone(),
        reference: nowhere.clone(),
        reward: nowhere,
        reference_from_actor_base: false,
        auth_token: None,
    };
    // No patience: the first refused connection fails the run.
    base.retry = RetrySettings {
        initial_ms: 1,
        max_ms: 1,
        give_up_secs: 0,
        ..Default::default()
    };
    let app = router(Api::new(base));

    let (code, v) = call(&app, "POST", "/v1/runs", "{not json").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).starts_with("invalid JSON body"), "{v}");
    let (code, v) = call(&app, "PATCH", "/v1/runs/r", r#"{"lambda": }"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).starts_with("invalid JSON body"), "{v}");
    let (code, v) = call(&app, "POST", "/v1/runs", "[1]").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let body = r#"{"objective": {"strategy": "tradeoff:1.5"}}"#;
    let (code, v) = call(&app, "POST", "/v1/runs", body).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&v).starts_with("objective.strategy: λ must be in [0, 1]"),
        "{v}"
    );
    let (code, v) = call(&app, "POST", "/v1/runs", r#"{"run": {"steps": 0}}"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).starts_with("run.steps"), "{v}");
    let (code, _) = call(&app, "GET", "/v1/runs/nope", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, v) = call(&app, "POST", "/v1/runs", r#"{"run": {"id": "r"}}"#).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["strategy"], "tradeoff:0.4");
    let (code, _) = call(&app, "POST", "/v1/runs/r/jump", "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let v = loop {
        let (_, v) = call(&app, "GET", "/v1/runs/r", "").await;
        if v["status"] == "failed" {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let error = v["error"].as_str().unwrap();
    assert!(error.starts_with("actor Info: gave up"), "{v}");

    // A bad body is refused before the run is looked at; a good one conflicts with its end.
    let (code, v) = call(&app, "PATCH", "/v1/runs/r", r#"{"lambda": 1.5}"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&v).starts_with("lambda: λ must be in [0, 1]"),
        "{v}"
    );
    let (code, v) = call(&app, "PATCH", "/v1/runs/r", r#"{"lambda": 0.5}"#).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(error_of(&v), "run `r` has ended (Failed)");
    let (code, _) = call(&app, "POST", "/v1/runs/r/pause", "").await;
    assert_eq!(code, StatusCode::CONFLICT);
}

#[test]
fn service_failures_are_gateway_errors() {
    use tonic::Status;
    let down = OrchestratorError::rpc("actor Train", Status::unavailable("down"));
    assert_eq!(status_of(&down), StatusCode::SERVICE_UNAVAILABLE);
    let refused = OrchestratorError::rpc("actor Train", Status::invalid_argument("no"));
    assert_eq!(status_of(&refused), StatusCode::BAD_GATEWAY);
    let step = OrchestratorError::Step {
        step: 2,
        error: Box::new(refused),
    };
    assert_eq!(status_of(&step), StatusCode::BAD_GATEWAY);
    assert_eq!(
        status_of(&OrchestratorError::NotPaused),
        StatusCode::CONFLICT
    );
    assert_eq!(
        status_of(&OrchestratorError::Unauthorized),
        StatusCode::UNAUTHORIZED
    );
}
