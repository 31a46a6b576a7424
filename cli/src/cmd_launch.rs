//! `rrlhf launch --plan F [--node N]`: starts one node's share of service processes (ranks and
//! replicas) as children, each `rrlhf serve …` with its rank, world size, device and environment;
//! reports each one's address and health; and supervises them. SIGTERM/SIGINT to the launcher
//! (or any child exiting) stops every child: SIGTERM, then SIGKILL after the grace period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// The placement plan (TOML, `[[process]]` entries).
    #[arg(long)]
    plan: PathBuf,
    /// Start only the processes of this node (default: those without a node, or all when the
    /// plan names no nodes; with `--check`, every node's).
    #[arg(long)]
    node: Option<String>,
    /// Validate the plan, print this node's processes (or all of them), and start nothing.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    /// Seconds a stopping child gets between SIGTERM and SIGKILL.
    #[serde(default = "default_grace")]
    shutdown_grace_secs: f64,
    /// Seconds a child may take to report SERVING (loading a large model is slow).
    #[serde(default = "default_ready")]
    ready_timeout_secs: f64,
    process: Vec<Process>,
}

fn default_grace() -> f64 {
    30.0
}

fn default_ready() -> f64 {
    600.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Process {
    name: String,
    /// `actor`, `critic`, `reference` or `reward`.
    service: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    model: Option<PathBuf>,
    /// HOST:PORT; port 0 picks a free one (reported once the child listens).
    addr: String,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    rank: u32,
    #[serde(default = "one")]
    world_size: u32,
    /// HOST:PORT of the data-parallel group's TCPStore (actor and critic ranks; rank 0 hosts it).
    #[serde(default)]
    store: Option<String>,
    /// Extra environment, e.g. `CUDA_VISIBLE_DEVICES = "3"`.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn load(path: &PathBuf) -> Result<Plan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading plan {}", path.display()))?;
    let plan: Plan = toml::from_str(&text).with_context(|| format!("plan {}", path.display()))?;
    for (i, p) in plan.process.iter().enumerate() {
        if !["actor", "critic", "reference", "reward"].contains(&p.service.as_str()) {
            bail!(
                "process[{i}] ({}).service: `{}` is not actor, critic, reference or reward",
                p.name,
                p.service
            );
        }
        if p.rank >= p.world_size {
            bail!(
                "process[{i}] ({}).rank: {} is not below world_size {}",
                p.name,
                p.rank,
                p.world_size
            );
        }
    }
    check_groups(&plan.process)?;
    Ok(plan)
}

/// The actor's and the critic's ranks each form one data-parallel group: every rank of it must
/// be in the plan exactly once, with the same world size and store (which a group of more than
/// one rank needs).
fn check_groups(processes: &[Process]) -> Result<()> {
    for service in ["actor", "critic"] {
        let ranks: Vec<&Process> = processes.iter().filter(|p| p.service == service).collect();
        let Some(first) = ranks.first() else {
            continue;
        };
        for p in &ranks {
            if (p.world_size, &p.store) != (first.world_size, &first.store) {
                bail!(
                    "{service} ranks disagree: {} has world_size {} and store {:?}, {} has {} and {:?}",
                    first.name,
                    first.world_size,
                    first.store,
                    p.name,
                    p.world_size,
                    p.store
                );
            }
        }
        if first.world_size > 1 && first.store.is_none() {
            bail!(
                "{}.store: {service} ranks with world_size {} need the group's store (HOST:PORT of rank 0)",
                first.name,
                first.world_size
            );
        }
        let mut seen = vec![false; first.world_size as usize];
        for p in &ranks {
            if std::mem::replace(&mut seen[p.rank as usize], true) {
                bail!("{}.rank: {service} rank {} appears twice", p.name, p.rank);
            }
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            bail!(
                "{service}: rank {missing} of {} is in no process of the plan",
                first.world_size
            );
        }
    }
    Ok(())
}

struct Running {
    proc: Process,
    child: Child,
    pid: u32,
}

/// Sends SIGTERM to every child, waits up to `grace`, then SIGKILLs the rest.
async fn stop_all(children: &mut [Running], grace: Duration) {
    for c in children.iter() {
        let _ = kill(Pid::from_raw(c.pid as i32), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    for c in children.iter_mut() {
        match tokio::time::timeout_at(deadline, c.child.wait()).await {
            Ok(_) => eprintln!("launch: {} (pid {}) stopped", c.proc.name, c.pid),
            Err(_) => {
                let _ = c.child.start_kill();
                let _ = c.child.wait().await;
                eprintln!(
                    "launch: {} (pid {}) killed after {grace:?}",
                    c.proc.name, c.pid
                );
            }
        }
    }
}

/// Waits for the child's "listening on ADDR" line (its stderr keeps being forwarded).
async fn listening_addr(name: &str, child: &mut Child) -> Result<String> {
    let stderr = child.stderr.take().context("child stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let prefix = name.to_owned();
    while let Some(line) = lines.next_line().await? {
        eprintln!("[{prefix}] {line}");
        if let Some(addr) = line.split(" listening on ").nth(1) {
            let addr = addr.trim().to_owned();
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    eprintln!("[{prefix}] {l}");
                }
            });
            return Ok(addr);
        }
    }
    bail!("{name} exited before listening")
}

async fn serving(addr: &str) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut c = HealthClient::new(channel);
    let s = c
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    anyhow::ensure!(s.status == ServingStatus::Serving as i32, "not serving yet");
    Ok(())
}

pub fn run(a: LaunchArgs) -> Result<()> {
    let plan = load(&a.plan)?;
    let named_nodes = plan.process.iter().any(|p| p.node.is_some());
    // `--check` without `--node` checks every node's processes.
    let whole_plan = !named_nodes || (a.check && a.node.is_none());
    let mine: Vec<Process> = plan
        .process
        .iter()
        .filter(|p| whole_plan || p.node == a.node || (a.node.is_none() && p.node.is_none()))
        .cloned()
        .collect();
    anyhow::ensure!(
        !mine.is_empty(),
        "--node: the plan has no process for node {:?}",
        a.node
    );
    if a.check {
        for p in &mine {
            println!(
                "launch --check: {} = serve {} rank {}/{} on {} at {}{}",
                p.name,
                p.service,
                p.rank,
                p.world_size,
                p.device.as_deref().unwrap_or("the config's device"),
                p.addr,
                p.store
                    .as_ref()
                    .map_or(String::new(), |s| format!(" (store {s})"))
            );
        }
        println!(
            "launch --check: plan valid, {} processes {}",
            mine.len(),
            if whole_plan && named_nodes {
                "in the plan"
            } else {
                "on this node"
            }
        );
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let grace = Duration::from_secs_f64(plan.shutdown_grace_secs);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // Registered before any child starts, so a SIGTERM at any moment stops the children
        // instead of killing the launcher and orphaning them.
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut children: Vec<Running> = Vec::new();
        let started = async {
            for p in &mine {
                let mut cmd = Command::new(&exe);
                cmd.arg("serve").arg(&p.service).arg("--addr").arg(&p.addr);
                if let Some(c) = &p.config {
                    cmd.arg("--config").arg(c);
                }
                if let Some(m) = &p.model {
                    cmd.arg("--model").arg(m);
                }
                if let Some(d) = &p.device {
                    cmd.arg("--device").arg(d);
                }
                cmd.env("RRLHF__SERVER__RANK", p.rank.to_string())
                    .env("RRLHF__SERVER__WORLD_SIZE", p.world_size.to_string());
                if let Some(store) = &p.store {
                    cmd.env("RRLHF__SERVER__STORE_ADDR", store);
                }
                cmd.envs(&p.env)
                    .stdin(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let child = cmd.spawn().with_context(|| format!("starting {}", p.name))?;
                let pid = child.id().context("child pid")?;
                children.push(Running { proc: p.clone(), child, pid });
            }
            let timeout = Duration::from_secs_f64(plan.ready_timeout_secs);
            for c in children.iter_mut() {
                let addr = tokio::time::timeout(timeout, listening_addr(&c.proc.name, &mut c.child))
                    .await
                    .map_err(|_| anyhow::anyhow!("{}: not listening after {timeout:?}", c.proc.name))??;
                let ready = async {
                    while serving(&addr).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                tokio::time::timeout(timeout, ready)
                    .await
                    .map_err(|_| anyhow::anyhow!("{}: not SERVING after {timeout:?}", c.proc.name))?;
                println!(
                    "{} {} rank {}/{} pid {} SERVING at {addr}",
                    c.proc.name, c.proc.service, c.proc.rank, c.proc.world_size, c.pid
                );
            }
            println!("launch: all {} processes SERVING", children.len());
            Ok::<(), anyhow::Error>(())
        }
        ;
        let started = tokio::select! {
            r = started => r,
            _ = sigterm.recv() => Err(anyhow::anyhow!("stopped by SIGTERM while starting")),
            _ = sigint.recv() => Err(anyhow::anyhow!("stopped by SIGINT while starting")),
        };
        if let Err(e) = started {
            stop_all(&mut children, grace).await;
            return Err(e);
        }
        // Supervise: a signal to us or any child's exit stops everything.
        let exited = async {
            loop {
                for c in children.iter_mut() {
                    if let Ok(Some(status)) = c.child.try_wait() {
                        return (c.proc.name.clone(), status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let outcome = tokio::select! {
            _ = sigterm.recv() => Ok(()),
            _ = sigint.recv() => Ok(()),
            (name, status) = exited => Err(anyhow::anyhow!("{name} exited ({status}); stopping the others")),
        };
        stop_all(&mut children, grace).await;
        outcome
    })
}
