//! `rrlhf orchestrate --api-only` serves the dashboard at `/` and prints its URL, and lists the
//! runs it finds recorded in its output directory — the same router the browser test drives
//! against a live `rrlhf run`-style embedded run (`tests/it/dashboard.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fixture::rrlhf;

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn orchestrate_api_only_serves_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(
        &config,
        format!(
            "[run]\nout_dir = \"{}\"\n\n[rest]\naddr = \"127.0.0.1:{port}\"\n",
            dir.path().join("runs").display()
        ),
    )
    .unwrap();
    let mut child = rrlhf()
        .args(["orchestrate", "--api-only", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        assert!(Instant::now() < deadline, "no dashboard URL printed");
        let line = lines.next().expect("the orchestrator runs").unwrap();
        if let Some(url) = line.split("dashboard: ").nth(1) {
            break url.trim().to_owned();
        }
    };
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    let addr = format!("127.0.0.1:{port}");
    let page = get(&addr, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html") && page.contains("<title>rrlhf dashboard</title>"));
    let runs = get(&addr, "/v1/runs");
    assert!(runs.contains(r#"{"runs":[]}"#), "{runs}");
    let _ = child.kill();
    let _ = child.wait();
}
