//! `rrlhf launch`: starts a node's processes from a plan, reports them SERVING, and on SIGTERM
//! stops every child; bad plans and children that cannot start are named.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixture::{fixture, rrlhf};

fn plan(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("plan.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn launch_starts_supervises_and_stops_a_nodes_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture().model.display().to_string();
    let mut body = String::from("shutdown_grace_secs = 5.0\nready_timeout_secs = 120.0\n");
    // Two actor ranks: a real data-parallel group, whose rendezvous needs both started at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for rank in 0..2 {
        body.push_str(&format!(
            "[[process]]\nname = \"actor-{rank}\"\nservice = \"actor\"\nnode = \"n0\"\nmodel = \"{model}\"\naddr = \"127.0.0.1:0\"\nrank = {rank}\nworld_size = 2\nstore = \"127.0.0.1:{port}\"\nenv = {{ OMP_NUM_THREADS = \"1\" }}\n"
        ));
    }
    body.push_str(&format!(
        "[[process]]\nname = \"elsewhere\"\nservice = \"reference\"\nnode = \"n1\"\nmodel = \"{model}\"\naddr = \"127.0.0.1:0\"\n"
    ));
    let path = plan(dir.path(), &body);
    let mut launcher = rrlhf()
        .args(["launch", "--node", "n0", "--plan"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Vec::new();
    for line in BufReader::new(launcher.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(pid) = line.split(" pid ").nth(1).and_then(|r| r.split(' ').next()) {
            assert!(line.contains("SERVING at 127.0.0.1:"), "{line}");
            pids.push(pid.parse::<i32>().unwrap());
        }
        if line.starts_with("launch: all") {
            assert_eq!(
                line, "launch: all 2 processes SERVING",
                "only node n0's processes"
            );
            break;
        }
    }
    assert_eq!(pids.len(), 2);
    kill(Pid::from_raw(launcher.id() as i32), Signal::SIGTERM).unwrap();
    let status = launcher.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "child {pid} still alive"
        );
    }
}

/// Runs `rrlhf launch <flags> --plan` on the plan `body` and asserts it fails with `needle` on
/// stderr.
fn plan_fails(dir: &std::path::Path, flags: &[&str], body: &str, needle: &str) {
    let path = plan(dir, body);
    let out = rrlhf()
        .arg("launch")
        .args(flags)
        .arg("--plan")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "{needle}: {stderr}");
}

/// Runs `rrlhf launch` on a one-process plan and asserts it fails with `needle` on stderr.
fn launch_fails(dir: &std::path::Path, process: &str, needle: &str) {
    let body = format!("[[process]]\n{process}\naddr = \"127.0.0.1:0\"\n");
    plan_fails(dir, &[], &body, needle);
}

#[test]
fn bad_plans_and_failed_children_are_named() {
    let dir = tempfile::tempdir().unwrap();
    launch_fails(
        dir.path(),
        "name = \"x\"\nservice = \"bogus\"",
        "process[0] (x).service",
    );
    launch_fails(
        dir.path(),
        "name = \"broken\"\nservice = \"reference\"\nmodel = \"/nonexistent\"",
        "broken exited before listening",
    );
}

/// The actor's and critic's ranks must form whole groups: one world size and store for all,
/// a store when there are several ranks, each rank exactly once.
#[test]
fn plans_with_broken_groups_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let rank = |name: &str, rank: u32, world: u32, store: &str| {
        format!(
            "[[process]]\nname = \"{name}\"\nservice = \"critic\"\naddr = \"127.0.0.1:0\"\nrank = {rank}\nworld_size = {world}\n{store}\n"
        )
    };
    for (body, needle) in [
        (
            rank("c0", 0, 2, "") + &rank("c1", 1, 2, ""),
            "c0.store: critic ranks with world_size 2 need the group's store",
        ),
        (
            rank("c0", 0, 2, "store = \"h:1\"") + &rank("c1", 1, 2, "store = \"h:2\""),
            "critic ranks disagree",
        ),
        (
            rank("c0", 0, 2, "store = \"h:1\"") + &rank("c1", 0, 2, "store = \"h:1\""),
            "c1.rank: critic rank 0 appears twice",
        ),
        (
            rank("c0", 0, 3, "store = \"h:1\"") + &rank("c2", 2, 3, "store = \"h:1\""),
            "critic: rank 1 of 3 is in no process",
        ),
    ] {
        plan_fails(dir.path(), &["--check"], &body, needle);
    }
}

/// The shipped three-node plan is valid: 24 processes over three nodes, 8 on each.
#[test]
fn the_three_node_plan_checks() {
    let plan = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/plans/three-node-h800.toml"
    );
    let check = |node: Option<&str>| {
        let mut cmd = rrlhf();
        cmd.args(["launch", "--check", "--plan", plan]);
        if let Some(n) = node {
            cmd.args(["--node", n]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = check(None);
    assert!(
        all.contains("plan valid, 24 processes in the plan"),
        "{all}"
    );
    assert!(all.contains("actor-9 = serve actor rank 9/10"), "{all}");
    for node in ["n0", "n1", "n2"] {
        let one = check(Some(node));
        assert!(
            one.contains("plan valid, 8 processes on this node"),
            "{node}: {one}"
        );
    }
}

/// The shipped single-node plan is valid and places 8 processes.
#[test]
fn the_single_node_plan_checks() {
    let plan = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/plans/single-node-8gpu.toml"
    );
    let out = rrlhf()
        .args(["launch", "--check", "--plan", plan])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("plan valid, 8 processes"), "{stdout}");
    assert!(
        stdout.contains("actor-2 = serve actor rank 2/3"),
        "{stdout}"
    );
}
