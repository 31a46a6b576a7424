//! 32 concurrent streaming clients: every request answered, in order, with the scores a lone
//! unary call gives, and the engine merged concurrent requests into shared batches.

use std::sync::atomic::Ordering;

use rrlhf_proto::reward::v1::ScoreRequest;

use crate::fixture::{client, config, request, sample, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_streaming_clients_are_answered_and_batched() {
    let mut cfg = config();
    // A longer gathering window makes merging certain on a loaded CI machine.
    cfg.engine.batch_wait_ms = 20;
    cfg.server.metrics_addr = Some("127.0.0.1:0".into());
    let (running, _stop) = start(cfg).await;

    // Reference scores from one unary call per sample.
    let mut c = client(&running).await;
    let mut reference = Vec::new();
    for i in 0..8 {
        reference.push(
            c.score(request(vec![sample(i)]))
                .await
                .unwrap()
                .into_inner()
                .scores
                .remove(0),
        );
    }
    let before = running.engine.engine.stats.batches.load(Ordering::Relaxed);

    let mut tasks = Vec::new();
    for client_no in 0..32usize {
        let mut c = client(&running).await;
        tasks.push(tokio::spawn(async move {
            // Three requests on one stream; each names the samples it carries.
            let reqs: Vec<ScoreRequest> = (0..3)
                .map(|k| {
                    request(vec![
                        sample((client_no + k) % 8),
                        sample((client_no + 2 * k + 1) % 8),
                    ])
                })
                .collect();
            let expected: Vec<Vec<usize>> = (0..3)
                .map(|k| vec![(client_no + k) % 8, (client_no + 2 * k + 1) % 8])
                .collect();
            let mut responses = c
                .score_stream(tokio_stream::iter(reqs))
                .await
                .unwrap()
                .into_inner();
            let mut got = Vec::new();
            while let Some(r) = responses.message().await.unwrap() {
                got.push(r);
            }
            (expected, got)
        }));
    }
    let mut answered = 0;
    for t in tasks {
        let (expected, got) = t.await.unwrap();
        assert_eq!(got.len(), 3, "one response per request");
        for (want, resp) in expected.iter().zip(&got) {
            for (&i, score) in want.iter().zip(&resp.scores) {
                assert_eq!(
                    score.id,
                    format!("s{i}"),
                    "responses come back in request order"
                );
                for (h, r) in score.heads.iter().zip(&reference[i].heads) {
                    assert!(
                        (h.mu - r.mu).abs() < 1e-5 && (h.sigma - r.sigma).abs() < 1e-5,
                        "sample {i}: batched {h:?} vs alone {r:?}"
                    );
                }
                answered += 1;
            }
        }
    }
    assert_eq!(answered, 32 * 3 * 2);
    let stats = &running.engine.engine.stats;
    let batches = stats.batches.load(Ordering::Relaxed) - before;
    assert!(
        stats.max_requests_per_batch.load(Ordering::Relaxed) > 1,
        "concurrent requests were merged"
    );
    assert!(batches < 96, "96 requests ran in {batches} model batches");

    // The batching is visible in the Prometheus metrics.
    let metrics = http_get(running.metrics_addr.expect("metrics endpoint"), "/metrics").await;
    assert!(
        metrics.contains("rrlhf_engine_batch_requests_bucket{engine=\"reward-engine\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("rrlhf_engine_batch_items_count{engine=\"reward-engine\"}"),
        "{metrics}"
    );
    // The recorder is process-wide and other tests in this binary stream too: at least ours.
    let streams: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "rrlhf_grpc_requests_total{method=\"/rrlhf.reward.v1.RewardService/ScoreStream\"} ",
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ScoreStream counter in {metrics}"));
    assert!(streams >= 32, "{streams} ScoreStream calls counted");
}

/// A minimal HTTP/1.1 GET over a raw socket (no HTTP client needed).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The requests of one stream are scored concurrently (so the engine merges them) and still
/// answered in order; they used to be scored one after another, one model batch each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_streams_requests_share_model_batches_and_keep_their_order() {
    let mut cfg = config();
    cfg.engine.batch_wait_ms = 20;
    let (running, _stop) = start(cfg).await;
    let mut c = client(&running).await;
    let before = running.engine.engine.stats.batches.load(Ordering::Relaxed);
    let reqs: Vec<ScoreRequest> = (0..24).map(|i| request(vec![sample(i % 8)])).collect();
    let mut responses = c
        .score_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        ids.push(r.scores[0].id.clone());
    }
    let expected: Vec<String> = (0..24).map(|i| format!("s{}", i % 8)).collect();
    assert_eq!(ids, expected, "answered in request order");
    let batches = running.engine.engine.stats.batches.load(Ordering::Relaxed) - before;
    assert!(
        batches < 24,
        "24 stream requests ran in {batches} model batches"
    );
}
