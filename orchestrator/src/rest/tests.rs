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
    let app = router(Api::new(OrchestratorConfig::default()).unwrap());
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
    let app = router(Api::new(base.clone()).unwrap());
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

/// The API over services that refuse connections, writing under `out`, with no patience: the
/// first refused connection fails a run.
fn unreachable_services(out: &std::path::Path) -> Router {
    router(unreachable_api(out))
}

fn unreachable_api(out: &std::path::Path) -> Arc<Api> {
    let nowhere = vec!["http://127.0.0.1:1".to_owned()];
    let mut base = OrchestratorConfig::default();
    base.run.out_dir = out.into();
    base.endpoints = Endpoints {
        actor: nowhere.clone(),
        critic: nowhere.clone(),
        reference: nowhere.clone(),
        reward: nowhere,
        reference_from_actor_base: false,
        ..Endpoints::default()
    };
    base.retry = RetrySettings {
        initial_ms: 1,
        max_ms: 1,
        give_up_secs: 0,
        ..Default::default()
    };
    Api::new(base).unwrap()
}

/// A run record as an orchestrator that died (or finished) left it, with its config (`base`
/// under another id).
fn recorded(base: &OrchestratorConfig, id: &str, status: RunStatus) {
    let dir = base.run.out_dir.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = base.clone();
    cfg.run.id = id.into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let info = RunInfo {
        id: id.into(),
        status,
        step: 3,
        steps: 10,
        dir: dir.clone(),
        strategy: cfg.objective.strategy,
        beta: 0.05,
        error: None,
        last_checkpoint: None,
        last_metrics: None,
    };
    crate::record::write(&dir, &info).unwrap();
}

/// A restarted orchestrator lists the runs recorded in its output directory with their state
/// (before, it listed none): one it was driving as `interrupted`, refusing commands but
/// `resume`, which starts it again; a finished one as finished.
#[tokio::test]
async fn recorded_runs_are_listed_after_a_restart_and_resume_on_request() {
    let out = tempfile::tempdir().unwrap();
    let api = unreachable_api(out.path());
    recorded(&api.base, "was-running", RunStatus::Running);
    recorded(&api.base, "done", RunStatus::Finished);
    std::fs::create_dir_all(out.path().join("not-a-run")).unwrap();
    let mut base = api.base.clone();
    base.rest.resume_interrupted = false;
    let api = Arc::new(Api {
        base,
        ..Arc::into_inner(api).unwrap()
    });
    assert!(
        api.restore().unwrap().is_empty(),
        "resume_interrupted is off"
    );
    let app = router(api.clone());

    let (code, v) = call(&app, "GET", "/v1/runs", "").await;
    assert_eq!(code, StatusCode::OK);
    let listed: Vec<(&str, &str, u64)> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap();
            (s("id"), s("status"), r["step"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        listed,
        vec![("done", "finished", 3), ("was-running", "interrupted", 3)]
    );
    let (code, v) = call(&app, "POST", "/v1/runs/was-running/pause", "").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(error_of(&v).contains("/v1/runs/was-running/resume"), "{v}");
    let (code, _) = call(&app, "PATCH", "/v1/runs/was-running", r#"{"beta": 0.1}"#).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, v) = call(&app, "POST", "/v1/runs/done/stop", "").await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");

    // Resumed: driven by this orchestrator now (its services are unreachable, so it fails).
    let (code, v) = call(&app, "POST", "/v1/runs/was-running/resume", "").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(api.runs.lock().unwrap().contains_key("was-running"));
    assert!(!api.stored.lock().unwrap().contains_key("was-running"));
    let run = api.runs.lock().unwrap()["was-running"].clone();
    assert_eq!(run.finished().await, RunStatus::Failed);
    // Its record follows it.
    let again = crate::record::scan(out.path()).unwrap();
    assert_eq!(again[1].status, RunStatus::Failed);
}

/// A run created with an empty `run.id` gets a derived id and writes under the configured
/// output directory (it used to write under the process's working directory).
#[tokio::test]
async fn an_empty_run_id_is_derived_and_stays_in_the_output_directory() {
    let out = tempfile::tempdir().unwrap();
    let app = unreachable_services(out.path());
    let (code, v) = call(&app, "POST", "/v1/runs", r#"{"run": {"id": ""}}"#).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("run-"), "{v}");
    let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap());
    assert_eq!(dir, out.path().join(id));
    assert!(
        dir.exists(),
        "the run writes where the orchestrator's output goes"
    );
}

#[tokio::test]
async fn every_error_gets_the_status_of_its_kind() {
    let out = tempfile::tempdir().unwrap();
    let app = unreachable_services(out.path());

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
    let body = r#"{"run": {"id": "elsewhere", "out_dir": "/tmp/somewhere-else"}}"#;
    let (code, v) = call(&app, "POST", "/v1/runs", body).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).starts_with("run.out_dir: is set by"), "{v}");
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

/// Seeded random bodies for every route (objects built from the config's own keys with values
/// of every JSON type, plus byte garbage): no panic, no 5xx but the gateway errors of runs whose
/// services are unreachable, and the API still answers afterwards.
#[tokio::test]
async fn random_bodies_never_crash_the_api_or_answer_internal_errors() {
    use rrlhf_util::rng::Rng;
    const KEYS: [&str; 24] = [
        "run",
        "prompts",
        "sampling",
        "objective",
        "ppo",
        "retry",
        "deadlines",
        "id",
        "steps",
        "batch_size",
        "seed",
        "lambda",
        "beta",
        "strategy",
        "temperature",
        "top_k",
        "top_p",
        "max_new_tokens",
        "min_new_tokens",
        "kl",
        "actor",
        "critic",
        "lr",
        "uncertainty_set",
    ];
    fn value(rng: &mut Rng, depth: u32) -> Value {
        let strings = [
            "",
            "tradeoff:0.3",
            "tradeoff:NaN",
            "min",
            "../../x",
            "ü\u{0}",
            "1e999",
        ];
        let numbers = [0.0, -1.0, 0.5, 1.0, 1e308, -1e308, 3.0e9, 1e-300];
        match rng.next_u64() % if depth > 2 { 5 } else { 7 } {
            0 => Value::Null,
            1 => Value::Bool(rng.next_u64() % 2 == 0),
            2 => json!(numbers[(rng.next_u64() % numbers.len() as u64) as usize]),
            3 => json!(rng.next_u64() as i64),
            4 => json!(strings[(rng.next_u64() % strings.len() as u64) as usize]),
            5 => Value::Array(
                (0..rng.next_u64() % 3)
                    .map(|_| value(rng, depth + 1))
                    .collect(),
            ),
            _ => object(rng, depth + 1),
        }
    }
    fn object(rng: &mut Rng, depth: u32) -> Value {
        let mut map = serde_json::Map::new();
        for _ in 0..1 + rng.next_u64() % 4 {
            let key = KEYS[(rng.next_u64() % KEYS.len() as u64) as usize];
            map.insert(key.into(), value(rng, depth));
        }
        Value::Object(map)
    }
    let out = tempfile::tempdir().unwrap();
    let app = unreachable_services(out.path());
    let (code, v) = call(&app, "POST", "/v1/runs", r#"{"run": {"id": "r"}}"#).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let mut rng = Rng::new(16);
    for i in 0..300 {
        let body = if i % 10 == 9 {
            let bytes: Vec<u8> = (0..rng.next_u64() % 40)
                .map(|_| rng.next_u64() as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            object(&mut rng, 0).to_string()
        };
        let action = ["pause", "resume", "stop", "checkpoint", "x"][i % 5];
        for (method, path) in [
            ("POST", "/v1/runs".to_string()),
            ("PATCH", "/v1/runs/r".to_string()),
            ("POST", format!("/v1/runs/r/{action}")),
        ] {
            let (code, v) = call(&app, method, &path, &body).await;
            let gateway = [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE];
            assert!(
                code.as_u16() < 500 || gateway.contains(&code),
                "{method} {path} {body}: {code} {v}"
            );
            if !code.is_success() {
                assert!(
                    !error_of(&v).is_empty(),
                    "{method} {path} {body}: {code} {v}"
                );
            }
        }
    }
    let (code, v) = call(&app, "GET", "/v1/runs", "").await;
    assert_eq!(code, StatusCode::OK);
    assert!(v["runs"].as_array().is_some_and(|r| !r.is_empty()), "{v}");
    let (code, _) = call(&app, "GET", "/healthz", "").await;
    assert_eq!(code, StatusCode::OK);
}
