//! The dashboard in a real browser (headless Chromium over the DevTools protocol) against a
//! live run: the page asks for the API token and uses it, draws the charts once two steps
//! exist, pauses the run from its button, sets λ (seen in the next step's metrics), resumes,
//! and its screenshot is not blank. Skipped, saying so, where no Chromium is installed
//! (`.ci/run` installs Debian's `chromium`).

use std::time::Duration;

use rrlhf_orchestrator::rest::{Api, serve};
use rrlhf_orchestrator::run::{Control, RunOptions, RunStatus, spawn_run};
use rrlhf_testkit::browser::Browser;
use rrlhf_testkit::cluster::{cluster, config, metrics_of, wait_for};

/// The samples endpoint keeps its bound and names bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_samples_endpoint_is_bounded_and_names_bad_input() {
    use crate::rest::http;
    let out = tempfile::tempdir().unwrap();
    let cluster = cluster().await;
    let mut cfg = config(&cluster, out.path(), "kept", 4);
    cfg.rest.samples_per_step = 3;
    cfg.rest.sample_steps = 2;
    let api = Api::new(cfg.clone()).unwrap();
    let (addr, _task) = serve("127.0.0.1:0", api.clone(), std::future::pending())
        .await
        .unwrap();
    let run = spawn_run(cfg, RunOptions::default()).unwrap();
    api.adopt(run.clone());
    assert_eq!(run.finished().await, RunStatus::Finished);

    let (code, v) = http(addr, "GET", "/v1/runs/kept/samples", None, None).await;
    assert_eq!(code, 200, "{v}");
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3, "samples_per_step");
    assert!(samples.iter().all(|s| s["step"] == 4));
    assert_eq!(samples[0]["head_rewards"].as_array().unwrap().len(), 3);
    assert!(samples[0]["response"].is_string() && samples[0]["prompt"].is_string());
    let (code, v) = http(
        addr,
        "GET",
        "/v1/runs/kept/samples?step=3&limit=1",
        None,
        None,
    )
    .await;
    assert_eq!((code, v["samples"].as_array().unwrap().len()), (200, 1));
    for (path, field) in [
        ("/v1/runs/kept/samples?step=1", "step"),
        ("/v1/runs/kept/samples?limit=0", "limit"),
        ("/v1/runs/kept/samples?limit=100000", "limit"),
        ("/v1/runs/kept/samples?step=x", "query"),
        ("/v1/runs/kept/samples?stp=1", "query"),
    ] {
        let (code, v) = http(addr, "GET", path, None, None).await;
        assert_eq!(code, 400, "{path}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().starts_with(field),
            "{path}: {v}"
        );
    }
    let (code, _) = http(addr, "GET", "/v1/runs/nope/samples", None, None).await;
    assert_eq!(code, 404);
    let (code, v) = http(addr, "GET", "/v1/runs/kept/metrics?since=2", None, None).await;
    assert_eq!(code, 200);
    let steps: Vec<u64> = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![3, 4]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_run_and_controls_it() {
    let browser = match Browser::launch() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED the dashboard browser test: {why}");
            return;
        }
    };
    let out = tempfile::tempdir().unwrap();
    let cluster = cluster().await;
    let mut cfg = config(&cluster, out.path(), "live", 10_000);
    cfg.rest.auth_token = Some("sesame".into());
    cfg.run.checkpoint_every = 0;
    let api = Api::new(cfg.clone()).unwrap();
    let (addr, _task) = serve("127.0.0.1:0", api.clone(), std::future::pending())
        .await
        .unwrap();
    let run = spawn_run(
        cfg,
        RunOptions {
            pause_on_bad_batch: true,
            ..RunOptions::default()
        },
    )
    .unwrap();
    api.adopt(run.clone());

    let url = format!("http://{addr}/?run=live");
    let (browser, screenshot) = tokio::task::spawn_blocking(move || {
        let mut b = browser;
        b.navigate(&url);
        // The token is set: the page asks for it.
        let box_shown = "getComputedStyle(document.getElementById('token-box')).display";
        b.wait_for("the token prompt", 30, box_shown, |v| v != "none");
        b.type_into("token", "sesame");
        b.click("token-save");
        let points = "Number(document.getElementById('chart-rewards').dataset.points || 0)";
        b.wait_for("two steps on the charts", 60, points, |v| {
            v.as_f64().unwrap_or(0.0) >= 2.0
        });
        let status = "document.getElementById('status').textContent";
        b.click("pause");
        b.wait_for("paused", 60, status, |v| v == "paused");
        b.type_into("lambda", "0.7");
        b.click("apply");
        let message = "document.getElementById('message').textContent";
        b.wait_for("λ applied", 30, message, |v| {
            v.as_str().unwrap_or_default().starts_with("applied")
        });
        // A bad value gets the API's own error, naming the field.
        b.eval("document.getElementById('lambda').value = ''");
        b.type_into("beta-input", "99");
        b.click("apply");
        b.wait_for("β refused", 30, message, |v| {
            v.as_str().unwrap_or_default().starts_with("beta")
        });
        b.eval("document.getElementById('beta-input').value = ''");
        b.click("resume");
        b.wait_for("running", 30, status, |v| v == "running");
        let rows = "document.querySelectorAll('#samples tbody tr').length";
        b.wait_for("the samples table", 30, rows, |v| {
            v.as_f64().unwrap_or(0.0) > 0.0
        });
        b.eval("window.scrollTo(0, 0)");
        let shot = b.screenshot();
        (b, shot)
    })
    .await
    .unwrap();
    drop(browser);

    // λ = 0.7 reached the run: a step after the pause trained with it.
    wait_for("a step with λ = 0.7", || {
        metrics_of(out.path(), "live").iter().any(|m| {
            m.strategy
                .lambda()
                .is_some_and(|l| (l.get() - 0.7).abs() < 1e-9)
        })
    })
    .await;
    run.request(Control::Stop).await.unwrap();
    assert_eq!(run.finished().await, RunStatus::Stopped);
    cluster.stop().await;

    // The screenshot shows a page, not a blank: many colours, the browser window's size.
    let decoder = png::Decoder::new(std::io::Cursor::new(&screenshot));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert!(frame.width >= 1000 && frame.height >= 700, "{frame:?}");
    let step = frame.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..frame.buffer_size()].chunks(step).collect();
    assert!(
        colours.len() > 50,
        "{} colours: a blank page",
        colours.len()
    );
    if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
        std::fs::write(path, &screenshot).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
