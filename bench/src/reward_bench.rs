//! `rrlhf-reward-bench`: reward-service throughput (samples/s) at 1, 8 and 32 concurrent gRPC
//! clients against the in-process engine on the same checkpoint (the gRPC overhead, as a ratio),
//! and — for a Bradley–Terry checkpoint, which transformers opens as
//! `LlamaForSequenceClassification` — against transformers scoring the same token ids
//! (`bench/reward_peer.py`). Same thread count everywhere. Prints a Markdown table.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rrlhf_model::reward_model::RewardModel;
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_model::{Placement, TextTokenizer};
use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use rrlhf_reward_service::RewardServiceConfig;

#[derive(Parser, Debug)]
struct Args {
    /// Reward-model directory (stage 1 for the transformers comparison).
    #[arg(long)]
    model: PathBuf,
    /// HH-RLHF JSONL(.gz) whose chosen replies are scored.
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
    #[arg(long, default_value_t = 512)]
    samples: usize,
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How long the service's engine waits for more requests before running a batch
    /// (`engine.batch_wait_ms`).
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
    /// Python of the transformers peer (skipped when absent).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads as i32);
    let pairs = rrlhf_data::sft::load(&a.data)
        .context("reading samples")?
        .examples;
    let samples: Vec<(String, String)> = pairs
        .into_iter()
        .take(a.samples)
        .map(|e| (e.prompt, e.response))
        .collect();

    // In-process engine: the ceiling the service can reach.
    let model = RewardModel::from_dir(&a.model, Placement::default())?;
    let kind = model.meta.kind;
    let scorer = RewardScorer {
        model,
        tokenizer: TextTokenizer::load(&a.model)?,
        max_len: a.max_len,
        batch_size: a.batch,
        overlong: Overlong::Truncate,
    };
    let ids = scorer.encode(&samples)?;
    scorer.heads_of_ids(&ids[..a.batch.min(ids.len())])?;
    let t = Instant::now();
    scorer.heads_of_ids(&ids)?;
    let engine_rate = ids.len() as f64 / t.elapsed().as_secs_f64();
    // What a server sees: batches formed in arrival order, so lengths are mixed and padding
    // grows, unlike the globally length-sorted pass above.
    let t = Instant::now();
    for chunk in ids.chunks(a.batch) {
        scorer.heads_of_ids(chunk)?;
    }
    let arrival_rate = ids.len() as f64 / t.elapsed().as_secs_f64();
    drop(scorer);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = vec![
        (
            "in-process engine, all samples length-sorted into batches".to_string(),
            engine_rate,
        ),
        (
            format!("in-process engine, batches of {} in arrival order", a.batch),
            arrival_rate,
        ),
    ];
    rt.block_on(async {
        let mut cfg = RewardServiceConfig {
            model: a.model.clone(),
            max_length: a.max_len,
            ..Default::default()
        };
        cfg.service.overlong = rrlhf_reward_service::Overlong::Truncate;
        cfg.server.addr = "127.0.0.1:0".into();
        cfg.engine.threads = a.threads;
        cfg.engine.batch_max_sequences = a.batch;
        cfg.engine.batch_wait_ms = a.batch_wait_ms;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = rrlhf_reward_service::start(cfg, async {
            let _ = stopped.await;
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        for clients in [1usize, 8, 32] {
            let url = format!("http://{}", running.addr);
            let per_client = samples.len() / clients;
            let t = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let mine: Vec<(String, String)> =
                    samples[c * per_client..(c + 1) * per_client].to_vec();
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let mut client = RewardServiceClient::connect(url).await?;
                    for (prompt, response) in mine {
                        let req = ScoreRequest {
                            samples: vec![Sample {
                                prompt,
                                response,
                                ..Default::default()
                            }],
                            strategy: "nominal".into(),
                            ..Default::default()
                        };
                        client.score(req).await?;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            let rate = (per_client * clients) as f64 / t.elapsed().as_secs_f64();
            rows.push((
                format!("gRPC, {clients} concurrent clients (1 sample per call)"),
                rate,
            ));
        }
        let _ = stop.send(());
        running.task.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(())
    })?;

    // transformers on the same ids: length-sorted batches, then batches in arrival order.
    let mut peers = Vec::new();
    if kind == rrlhf_model::RewardKind::BradleyTerry && a.python.exists() {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ids.json");
        std::fs::write(&path, serde_json::to_string(&ids)?)?;
        for (order, flag) in [
            ("length-sorted", None),
            ("arrival-order", Some("--arrival-order")),
        ] {
            let out = std::process::Command::new(&a.python)
                .arg("bench/reward_peer.py")
                .args(["--model", &a.model.display().to_string()])
                .args(["--ids", &path.display().to_string()])
                .args(["--batch", &a.batch.to_string()])
                .args(["--threads", &a.threads.to_string()])
                .args(flag)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "peer failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rate: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap_or("nan")
                .parse()?;
            peers.push((order, rate));
        }
    }

    println!(
        "reward model {} ({kind:?}), {} HH-RLHF samples, max length {}, batch {}, {} threads",
        a.model.display(),
        ids.len(),
        a.max_len,
        a.batch,
        a.threads
    );
    println!("| path | samples/s | ratio to in-process engine |");
    println!("|---|---|---|");
    for (name, rate) in &rows {
        println!("| {name} | {rate:.1} | {:.2} |", rate / engine_rate);
    }
    for (order, p) in &peers {
        println!(
            "| transformers `*ForSequenceClassification`, same ids, {order} batches of {} | \
             {p:.1} | {:.2} |",
            a.batch,
            p / engine_rate
        );
    }
    Ok(())
}
