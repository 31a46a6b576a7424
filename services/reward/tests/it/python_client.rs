//! An independent client: Python's grpcio compiles the repository's .proto files and scores
//! samples against this Rust service (python/grpc_client/score_client.py).

use std::path::Path;
use std::process::Command;

use crate::fixture::{config, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_scores_against_the_rust_service() {
    let mut cfg = config();
    cfg.server.auth_token = Some("py-token".into());
    let (running, _stop) = start(cfg).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("RRLHF_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    assert!(
        Path::new(&python).exists(),
        "{} not found: run `make setup`",
        Path::new(&python).display()
    );
    let addr = running.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root.join("python/grpc_client/score_client.py"))
            .args(["--addr", &addr])
            .env("RRLHF_TOKEN", "py-token")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "python client failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
