//! The REST control API over real HTTP: auth, create, pause, PATCH λ (seen in the next step's
//! metrics), resume, checkpoint, stop; bad JSON and bad values are 4xx naming the field.

use std::net::SocketAddr;

use rrlhf_orchestrator::rest::{Api, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rrlhf_testkit::cluster::{cluster, config};

/// One HTTP/1.1 request; returns the status code and the body parsed as JSON (or a string).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status: u16 = raw[9..12].parse().unwrap();
    let text = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Responses are small and sent without chunking except for some; strip chunk framing.
    let text = if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(text)
    } else {
        text.to_owned()
    };
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_drives_a_run() {
    let out = tempfile::tempdir().unwrap();
    let cluster = cluster().await;
    let mut base = config(&cluster, out.path(), "", 60);
    base.run.batch_size = 4;
    base.sampling.max_new_tokens = 4;
    base.rest.auth_token = Some("sesame".into());
    let api = Api::new(base).unwrap();
    let (addr, _task) = serve("127.0.0.1:0", api, std::future::pending())
        .await
        .unwrap();
    let t = Some("sesame");

    assert_eq!(http(addr, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(http(addr, "GET", "/v1/runs", None, None).await.0, 401);
    assert_eq!(
        http(addr, "GET", "/v1/runs", Some("wrong"), None).await.0,
        401
    );
    let (code, doc) = http(addr, "GET", "/v1/openapi.json", t, None).await;
    assert_eq!(code, 200);
    assert!(doc["paths"]["/v1/runs/{id}"]["patch"].is_object());

    let (code, v) = http(addr, "POST", "/v1/runs", t, Some("{not json")).await;
    assert_eq!(code, 400);
    assert!(error_of(&v).contains("invalid JSON"), "{v}");
    let (code, v) = http(
        addr,
        "POST",
        "/v1/runs",
        t,
        Some(r#"{"run": {"stepz": 3}}"#),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        error_of(&v).contains("run") && error_of(&v).contains("stepz"),
        "{v}"
    );
    let (code, v) = http(
        addr,
        "POST",
        "/v1/runs",
        t,
        Some(r#"{"objective": {"strategy": "tradeoff:1.5"}}"#),
    )
    .await;
    assert_eq!(code, 400);
    assert!(error_of(&v).contains("objective.strategy"), "{v}");
    let (code, v) = http(
        addr,
        "POST",
        "/v1/runs",
        t,
        Some(r#"{"run": {"steps": "many"}}"#),
    )
    .await;
    assert_eq!(code, 400);
    assert!(error_of(&v).contains("run.steps"), "{v}");

    let (code, v) = http(
        addr,
        "POST",
        "/v1/runs",
        t,
        Some(r#"{"run": {"id": "live"}}"#),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["id"], "live");

    // Pause is answered between steps; the run then stays put.
    let (code, v) = http(addr, "POST", "/v1/runs/live/pause", t, None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "paused");
    let paused_at = v["step"].as_u64().unwrap();

    let (code, v) = http(
        addr,
        "PATCH",
        "/v1/runs/live",
        t,
        Some(r#"{"lambda": 1.5}"#),
    )
    .await;
    assert_eq!(code, 400);
    assert!(error_of(&v).starts_with("lambda"), "{v}");
    let (code, v) = http(addr, "PATCH", "/v1/runs/live", t, Some(r#"{"lamda": 0.5}"#)).await;
    assert_eq!(code, 400);
    assert!(error_of(&v).contains("lamda"), "{v}");
    // A finite but absurd β used to be accepted, overflow the next step's returns to NaN and
    // end the run (and the process); it is refused, naming the field and its range.
    let (code, v) = http(
        addr,
        "PATCH",
        "/v1/runs/live",
        t,
        Some(r#"{"beta": 1e308}"#),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        error_of(&v).starts_with("beta: ") && error_of(&v).contains("[0, 10]"),
        "{v}"
    );
    let (code, v) = http(
        addr,
        "PATCH",
        "/v1/runs/live",
        t,
        Some(r#"{"lambda": 0.8, "beta": 0.2}"#),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["strategy"], "tradeoff:0.8");
    let (code, v) = http(addr, "GET", "/v1/runs/live", t, None).await;
    assert_eq!(
        (code, v["step"].as_u64().unwrap()),
        (200, paused_at),
        "paused runs do not step"
    );
    // A second run on the services a paused run trains is refused: it would put their start
    // weights back under the paused run (before, it trained the same weights as well).
    let (code, v) = http(
        addr,
        "POST",
        "/v1/runs",
        t,
        Some(r#"{"run": {"id": "rival"}}"#),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    assert!(
        error_of(&v).starts_with("endpoints: ") && error_of(&v).contains("trained by run `live`"),
        "{v}"
    );

    let (code, v) = http(addr, "POST", "/v1/runs/live/resume", t, None).await;
    assert_eq!(code, 200, "{v}");
    let (code, _) = http(addr, "POST", "/v1/runs/live/resume", t, None).await;
    assert_eq!(code, 409, "resuming a running run is a conflict");

    // The next step ran with the patched objective and β.
    let metrics = loop {
        let (_, v) = http(addr, "GET", "/v1/runs/live", t, None).await;
        if v["step"].as_u64().unwrap() > paused_at {
            break v["last_metrics"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(metrics["strategy"], "tradeoff:0.8", "{metrics}");
    assert_eq!(metrics["beta"], 0.2);
    let r = &metrics["rewards"];
    let (agg, nom, min) = (
        r["aggregated"].as_f64().unwrap(),
        r["nominal"].as_f64().unwrap(),
        r["min"].as_f64().unwrap(),
    );
    assert!((agg - (0.8 * nom + 0.2 * min)).abs() < 1e-4, "{r}");

    let (code, v) = http(addr, "POST", "/v1/runs/live/checkpoint", t, None).await;
    assert_eq!(code, 200, "{v}");
    let ckpt = std::path::PathBuf::from(v["checkpoint"].as_str().unwrap());
    assert!(ckpt.join("state.json").exists());

    let (code, v) = http(addr, "POST", "/v1/runs/live/stop", t, None).await;
    assert_eq!(code, 200, "{v}");
    let status = loop {
        let (_, v) = http(addr, "GET", "/v1/runs/live", t, None).await;
        if v["status"] != "running" {
            break v["status"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status, "stopped");
    let (code, _) = http(addr, "POST", "/v1/runs/live/pause", t, None).await;
    assert_eq!(code, 409);
    assert_eq!(http(addr, "GET", "/v1/runs/nope", t, None).await.0, 404);

    let (code, text) = http(addr, "GET", "/metrics", t, None).await;
    assert_eq!(code, 200);
    assert!(
        text.as_str().unwrap_or_default().contains("rrlhf_run_step"),
        "{text}"
    );
    cluster.stop().await;
}
