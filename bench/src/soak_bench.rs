//! `rrlhf-soak`: the client side of the reward-service soak benchmark (`bench/soak.sh`). It
//! opens `--clients` `ScoreStream`s to a running reward service, each sending one HH-RLHF
//! sample at a time and waiting for its score (a closed loop), for `--secs` seconds; it samples
//! the server's resident memory (`/proc/PID/status`) every `--sample-secs`, and prints the
//! latency percentiles, the errors by gRPC code and the memory over time as one JSON object.
//! Run it in its own CPU-limited process (the script pins it to a core the server does not
//! use), so the clients' own work does not show up as server latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// The reward service, e.g. http://127.0.0.1:50061.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 160)]
    secs: u64,
    /// The server's process id, for its resident memory over time.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 20)]
    sample_secs: u64,
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
}

/// Resident memory of process `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One client: a stream of one-sample requests, each sent when the previous one's score came
/// back. Returns each request's latency in ms and the errors by code.
async fn client(
    url: String,
    samples: Vec<(String, String)>,
    until: Instant,
) -> Result<(Vec<f64>, BTreeMap<String, usize>)> {
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut next = 0usize;
    while Instant::now() < until {
        let mut c = RewardServiceClient::connect(url.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<ScoreRequest>(1);
        let mut responses = match c
            .score_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                *errors.entry(format!("{:?}", e.code())).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while Instant::now() < until {
            let (prompt, response) = samples[next % samples.len()].clone();
            next += 1;
            let request = ScoreRequest {
                samples: vec![Sample {
                    id: next.to_string(),
                    prompt,
                    response,
                    token_ids: vec![],
                }],
                strategy: "nominal".into(),
                ..Default::default()
            };
            let sent = Instant::now();
            if tx.send(request).await.is_err() {
                break;
            }
            match responses.message().await {
                Ok(Some(_)) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                Ok(None) => break,
                Err(e) => {
                    *errors.entry(format!("{:?}", e.code())).or_default() += 1;
                    break;
                }
            }
        }
    }
    Ok((latencies, errors))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let samples: Vec<(String, String)> = rrlhf_data::sft::load(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?
        .examples
        .into_iter()
        // Valid requests only (a non-empty reply, within the service's `--max-length`): the
        // soak measures service, not refusals.
        .filter(|e| !e.response.trim().is_empty() && e.prompt.len() + e.response.len() <= 1200)
        .map(|e| (e.prompt, e.response))
        .collect();
    let started = Instant::now();
    let until = started + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        // Each client starts at its own place in the data, so lengths mix as in real traffic.
        let mut mine = samples.clone();
        mine.rotate_left(c * samples.len() / a.clients.max(1));
        tasks.push(tokio::spawn(client(a.url.clone(), mine, until)));
    }
    let mut memory = Vec::new();
    while Instant::now() < until {
        if let Some(pid) = a.server_pid {
            memory.push(json!({
                "secs": started.elapsed().as_secs(),
                "rss_mib": rss_mib(pid),
            }));
        }
        tokio::time::sleep(Duration::from_secs(a.sample_secs).min(until - Instant::now())).await;
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    if let Some(pid) = a.server_pid {
        memory.push(json!({ "secs": started.elapsed().as_secs(), "rss_mib": rss_mib(pid) }));
    }
    latencies.sort_by(f64::total_cmp);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "clients": a.clients,
            "secs": secs,
            "requests": latencies.len(),
            "requests_per_s": latencies.len() as f64 / secs,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
            "errors": errors,
            "server_memory": memory,
        })
    );
    Ok(())
}
