//! The REST control API (axum). Runs are created from the orchestrator's configuration with a
//! JSON body of overrides in the same shape; a bad body or value is a 4xx whose message names
//! the field. Every failure is an [`OrchestratorError`], answered as `{"error": "…"}` with the
//! status code of its kind (see its `IntoResponse`). The OpenAPI document is served at
//! `/v1/openapi.json`.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/runs[?resume=true]` | start a run (body: config overrides) |
//! | `GET /v1/runs`, `GET /v1/runs/{id}` | list, inspect |
//! | `POST /v1/runs/{id}/pause\|resume\|stop\|checkpoint` | control (`resume` also restarts a run recorded on disk that nothing drives) |
//! | `PATCH /v1/runs/{id}` | `{"lambda", "strategy", "beta"}` from the next step |
//! | `GET /v1/runs/{id}/metrics[?since=N]`, `GET /v1/runs/{id}/samples[?step=S&limit=N]` | a run's step metrics; its kept scored samples |
//! | `GET /` | the dashboard (one embedded page) |
//! | `GET /metrics`, `/healthz`, `/readyz` | Prometheus text, liveness, readiness (every service endpoint reachable) |

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::OrchestratorConfig;
use crate::error::{OrchestratorError, Result};
use crate::run::{Control, Patch, RunHandle, RunInfo, RunOptions, RunStatus, spawn_run};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Debug)]
pub struct Api {
    /// Defaults every created run starts from.
    pub base: OrchestratorConfig,
    /// The runs this process drives.
    pub runs: Mutex<BTreeMap<String, RunHandle>>,
    /// Runs found recorded on disk that nothing here drives: listed, and resumable.
    pub stored: Mutex<BTreeMap<String, RunInfo>>,
    pub token: Option<String>,
    pub print_progress: bool,
}

impl Api {
    /// The API over `base`; its bearer token is `rest.auth_token` or read from
    /// `rest.auth_token_file` now (an unreadable file is an error naming the field).
    pub fn new(base: OrchestratorConfig) -> Result<Arc<Self>> {
        let token = rrlhf_runtime::secrets::token(
            "rest.auth_token",
            base.rest.auth_token.as_deref(),
            base.rest.auth_token_file.as_deref(),
        )?;
        Ok(Arc::new(Self {
            token,
            base,
            runs: Mutex::new(BTreeMap::new()),
            stored: Mutex::new(BTreeMap::new()),
            print_progress: false,
        }))
    }

    /// Registers a run started elsewhere (e.g. by the CLI) so the API can control it.
    pub fn adopt(&self, run: RunHandle) {
        self.stored.lock().expect("stored lock").remove(&run.id);
        self.runs
            .lock()
            .expect("runs lock")
            .insert(run.id.clone(), run);
    }

    /// Lists the runs recorded under `run.out_dir` (see [`crate::record`]). Those recorded as
    /// created, running or paused were being driven by an orchestrator that is gone: they are
    /// listed as `interrupted`, and the ones that were running (or about to) are resumed from
    /// their latest checkpoint when `rest.resume_interrupted` is set. Returns the resumed ids.
    pub fn restore(&self) -> Result<Vec<String>> {
        let mut resumed = Vec::new();
        for mut info in crate::record::scan(&self.base.run.out_dir)? {
            if self.runs.lock().expect("runs lock").contains_key(&info.id) {
                continue;
            }
            let was = info.status;
            if !was.is_terminal() {
                info.status = RunStatus::Interrupted;
            }
            let id = info.id.clone();
            self.stored
                .lock()
                .expect("stored lock")
                .insert(id.clone(), info);
            if self.base.rest.resume_interrupted
                && matches!(was, RunStatus::Created | RunStatus::Running)
            {
                match self.resume_stored(&id) {
                    Ok(_) => resumed.push(id),
                    Err(e) => {
                        tracing::warn!(run = %id, error = %e, "could not resume an interrupted run");
                        if let Some(info) = self.stored.lock().expect("stored lock").get_mut(&id) {
                            info.error = Some(format!("resuming after a restart: {e}"));
                        }
                    }
                }
            }
        }
        Ok(resumed)
    }

    /// Continues a recorded run from its latest checkpoint with its own configuration
    /// (`config.json`; this orchestrator's endpoints, REST, telemetry and output directory).
    pub fn resume_stored(&self, id: &str) -> Result<RunHandle> {
        if !self.stored.lock().expect("stored lock").contains_key(id) {
            return Err(OrchestratorError::NoRun { id: id.into() });
        }
        let path = self.base.run.out_dir.join(id).join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| OrchestratorError::io(format!("reading {}", path.display()), e))?;
        let mut cfg: OrchestratorConfig = serde_json::from_str(&text)
            .map_err(|e| OrchestratorError::invalid(path.display().to_string(), e))?;
        cfg.endpoints = self.base.endpoints.clone();
        cfg.rest = self.base.rest.clone();
        cfg.telemetry = self.base.telemetry.clone();
        cfg.run.out_dir = self.base.run.out_dir.clone();
        cfg.run.id = id.into();
        self.start(
            cfg,
            RunOptions {
                resume: true,
                print_progress: self.print_progress,
                gold: None,
                pause_on_bad_batch: true,
            },
        )
    }

    /// Starts a run and adopts it, unless a live run (created, running or paused) has the same
    /// id or trains one of its actor or critic endpoints: two runs would overwrite each other's
    /// weights, and a new run puts the services' start weights back. Checked and adopted under
    /// one lock, so two requests at once cannot both pass.
    fn start(&self, cfg: OrchestratorConfig, opts: RunOptions) -> Result<RunHandle> {
        let mut runs = self.runs.lock().expect("runs lock");
        for other in runs.values() {
            let status = other.info().status;
            if status.is_terminal() {
                continue;
            }
            if other.id == cfg.run.id {
                return Err(OrchestratorError::Active { id: cfg.run.id });
            }
            let mine = cfg.endpoints.actor.iter().chain(&cfg.endpoints.critic);
            if let Some(url) = mine.into_iter().find(|u| other.trains.contains(u)) {
                return Err(OrchestratorError::ServicesInUse {
                    id: cfg.run.id.clone(),
                    other: other.id.clone(),
                    status,
                    url: url.clone(),
                });
            }
        }
        let run = spawn_run(cfg, opts)?;
        runs.insert(run.id.clone(), run.clone());
        drop(runs);
        self.stored.lock().expect("stored lock").remove(&run.id);
        Ok(run)
    }

    /// What is known of run `id`: live, or recorded.
    fn info_of(&self, id: &str) -> Result<RunInfo> {
        if let Some(run) = self.runs.lock().expect("runs lock").get(id) {
            return Ok(run.info());
        }
        self.stored
            .lock()
            .expect("stored lock")
            .get(id)
            .cloned()
            .ok_or_else(|| OrchestratorError::NoRun { id: id.into() })
    }
}

/// The HTTP status of an error: what the caller did wrong (4xx), or which side failed (5xx).
fn status_of(e: &OrchestratorError) -> StatusCode {
    use OrchestratorError as E;
    match e {
        E::Invalid { .. } | E::Body { .. } => StatusCode::BAD_REQUEST,
        E::Unauthorized => StatusCode::UNAUTHORIZED,
        E::NoRun { .. } | E::UnknownAction { .. } => StatusCode::NOT_FOUND,
        E::Ended { .. }
        | E::NotPaused
        | E::AlreadyExists { .. }
        | E::Active { .. }
        | E::ServicesInUse { .. }
        | E::Locked { .. }
        | E::NotDriven { .. }
        // A checkpoint asked for after a restart would hold the restarted service's weights.
        | E::Restarted { .. } => StatusCode::CONFLICT,
        // A service that is down or busy may come back; one that refused or answered nonsense
        // will not by itself.
        E::Rpc { .. } if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        E::Rpc { .. } | E::BadResponse { .. } | E::NonFinite { .. } | E::Diverged { .. } => {
            StatusCode::BAD_GATEWAY
        }
        E::Step { error, .. } => status_of(error),
        E::Io { .. }
        | E::Prompts(_)
        | E::Objective(_)
        | E::Ppo(_)
        | E::Report(_)
        | E::Task { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error": "..."}` with the status code of the error's kind.
impl IntoResponse for OrchestratorError {
    fn into_response(self) -> Response {
        error_response(status_of(&self), self.to_string())
    }
}

pub fn router(api: Arc<Api>) -> Router {
    let protected = Router::new()
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run).patch(patch_run))
        .route("/v1/runs/{id}/{action}", post(control_run))
        .route("/v1/runs/{id}/samples", get(get_samples))
        .route("/v1/runs/{id}/metrics", get(get_metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(prometheus))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token));
    Router::new()
        // The dashboard holds no data itself: with a token set, it asks for it and sends it.
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        // Unknown paths and methods answer in the documented error shape too.
        .fallback(|uri: Uri| async move {
            error_response(StatusCode::NOT_FOUND, format!("no route {uri}"))
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{uri} does not answer {method}"),
            )
        })
        .with_state(api)
}

/// `{"error": message}` with `status`.
fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn require_token(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return OrchestratorError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Ready when every service endpoint of the base configuration accepts a connection (within
/// a second each, all at once); otherwise 503 naming the ones that do not. A probe that only
/// said "ready" let a load balancer send runs to an orchestrator that could not reach them.
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let e = &api.base.endpoints;
    let urls: Vec<String> = [&e.actor, &e.critic, &e.reference, &e.reward]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut checks = tokio::task::JoinSet::new();
    for url in urls {
        checks.spawn(async move {
            let target = url.parse::<Uri>().ok().and_then(|uri| {
                let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                });
                Some((uri.host()?.to_owned(), port))
            });
            let reachable = match target {
                Some(addr) => matches!(
                    tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        tokio::net::TcpStream::connect(addr)
                    )
                    .await,
                    Ok(Ok(_))
                ),
                None => false,
            };
            (url, reachable)
        });
    }
    let mut down = Vec::new();
    while let Some(done) = checks.join_next().await {
        match done {
            Ok((_, true)) => {}
            Ok((url, false)) => down.push(url),
            Err(e) => down.push(format!("(a check failed: {e})")),
        }
    }
    down.sort();
    if down.is_empty() {
        "ready".into_response()
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("services not reachable: {down:?}"),
        )
    }
}

/// The dashboard: one self-contained page (HTML, CSS, JavaScript, SVG charts).
const DASHBOARD: &str = include_str!("rest/ui/index.html");

async fn dashboard() -> Response {
    axum::response::Html(DASHBOARD).into_response()
}

/// Parses a URL query string, naming the parameter on error (in the API's error shape).
fn query<T: serde::de::DeserializeOwned>(raw: Option<String>) -> Result<T> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| OrchestratorError::invalid("query", e))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplesQuery {
    step: Option<usize>,
    limit: Option<usize>,
}

/// Most samples one answer carries.
const MAX_SAMPLES: usize = 256;

/// `{"run", "samples": [...]}`: the kept scored samples of a step (default the latest). A run
/// recorded on disk but not driven here has none.
async fn get_samples(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let q: SamplesQuery = query(raw)?;
    let limit = q.limit.unwrap_or(MAX_SAMPLES);
    if !(1..=MAX_SAMPLES).contains(&limit) {
        return Err(OrchestratorError::invalid(
            "limit",
            format!("must be in [1, {MAX_SAMPLES}], got {limit}"),
        ));
    }
    let live = api.runs.lock().expect("runs lock").get(&id).cloned();
    let samples = match live {
        Some(run) => run.samples(q.step, limit)?,
        None => {
            api.info_of(&id)?;
            Vec::new()
        }
    };
    Ok(axum::Json(json!({ "run": id, "samples": samples })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    since: Option<usize>,
}

/// `{"run", "metrics": [...]}`: every recorded step's metrics after `since` (default all).
async fn get_metrics(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let q: MetricsQuery = query(raw)?;
    let info = api.info_of(&id)?;
    let since = q.since.unwrap_or(0);
    let metrics: Vec<_> = crate::metrics::read_all(&info.dir.join("metrics.jsonl"))?
        .into_iter()
        .filter(|m| m.step > since)
        .collect();
    Ok(axum::Json(json!({ "run": id, "metrics": metrics })).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn prometheus() -> String {
    rrlhf_runtime::metrics::handle().render()
}

/// Parses a JSON body, naming the offending field on error.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Only a value of the wrong shape has a field to name; broken JSON has none.
        let path = match e.inner().classify() {
            serde_json::error::Category::Data => e.path().to_string(),
            _ => String::new(),
        };
        OrchestratorError::Body {
            path,
            error: e.into_inner(),
        }
    })
}

/// `overrides` laid over `base`, object by object.
fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    #[serde(default)]
    resume: bool,
}

async fn create_run(
    State(api): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let q: CreateQuery = query(raw)?;
    let overrides: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse(&body)?
    };
    if !overrides.is_object() {
        return Err(OrchestratorError::invalid(
            "body",
            "must be a JSON object of config overrides",
        ));
    }
    let mut merged = serde_json::to_value(&api.base).expect("the config serialises");
    merge(&mut merged, overrides);
    let cfg: OrchestratorConfig = parse(&serde_json::to_vec(&merged).expect("a JSON value"))?;
    cfg.validate()?;
    // Where runs write is the operator's choice, not a caller's: a body could otherwise make
    // the orchestrator write anywhere its process may.
    if cfg.run.out_dir != api.base.run.out_dir {
        return Err(OrchestratorError::invalid(
            "run.out_dir",
            format!(
                "is set by the orchestrator's configuration ({}); a request cannot change it",
                api.base.run.out_dir.display()
            ),
        ));
    }
    let run = api.start(
        cfg,
        RunOptions {
            resume: q.resume,
            print_progress: api.print_progress,
            gold: None,
            pause_on_bad_batch: true,
        },
    )?;
    let info = run.info();
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn list_runs(State(api): State<Arc<Api>>) -> Response {
    let mut runs: BTreeMap<String, RunInfo> = api
        .stored
        .lock()
        .expect("stored lock")
        .iter()
        .map(|(id, info)| (id.clone(), info.clone()))
        .collect();
    for (id, run) in api.runs.lock().expect("runs lock").iter() {
        runs.insert(id.clone(), run.info());
    }
    let runs: Vec<RunInfo> = runs.into_values().collect();
    axum::Json(json!({ "runs": runs })).into_response()
}

/// The live run `id`; a recorded one that nothing drives is an error saying how to resume it.
fn find(api: &Api, id: &str) -> Result<RunHandle> {
    if let Some(run) = api.runs.lock().expect("runs lock").get(id) {
        return Ok(run.clone());
    }
    match api.stored.lock().expect("stored lock").get(id) {
        Some(info) if info.status.is_terminal() => Err(OrchestratorError::Ended {
            id: id.into(),
            status: Some(info.status),
        }),
        Some(_) => Err(OrchestratorError::NotDriven { id: id.into() }),
        None => Err(OrchestratorError::NoRun { id: id.into() }),
    }
}

/// A run that has ended takes no more commands.
fn still_going(run: &RunHandle) -> Result<()> {
    let status = run.info().status;
    if status.is_terminal() {
        return Err(OrchestratorError::Ended {
            id: run.id.clone(),
            status: Some(status),
        });
    }
    Ok(())
}

async fn get_run(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Result<Response> {
    Ok(axum::Json(api.info_of(&id)?).into_response())
}

async fn control_run(
    State(api): State<Arc<Api>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response> {
    // A recorded run that nothing here drives (after a restart) is resumed by starting it.
    let live = api.runs.lock().expect("runs lock").contains_key(&id);
    if !live && action == "resume" && api.stored.lock().expect("stored lock").contains_key(&id) {
        let run = api.resume_stored(&id)?;
        return Ok(axum::Json(run.info()).into_response());
    }
    let run = find(&api, &id)?;
    still_going(&run)?;
    let body = match action.as_str() {
        "pause" => run.request(Control::Pause).await.map(|()| json!({})),
        "resume" => run.request(Control::Resume).await.map(|()| json!({})),
        "stop" => run.request(Control::Stop).await.map(|()| json!({})),
        "checkpoint" => run
            .request(Control::Checkpoint)
            .await
            .map(|p| json!({ "checkpoint": p })),
        other => {
            return Err(OrchestratorError::UnknownAction {
                action: other.into(),
            });
        }
    }?;
    let mut out = serde_json::to_value(run.info()).expect("serialisable");
    merge(&mut out, body);
    Ok(axum::Json(out).into_response())
}

async fn patch_run(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let patch: Patch = parse(&body)?;
    let run = find(&api, &id)?;
    still_going(&run)?;
    run.request(|r| Control::Patch(patch, r)).await?;
    Ok(axum::Json(run.info()).into_response())
}

/// Serves the API on `addr` until `shutdown` resolves — over HTTPS when `rest.tls_cert` and
/// `rest.tls_key` are set; returns the bound address and the serving task, which ends with
/// the server's own I/O result.
pub async fn serve(
    addr: &str,
    api: Arc<Api>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let binding = |e| OrchestratorError::io(format!("rest.addr: listening on {addr}"), e);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(binding)?;
    let local = listener.local_addr().map_err(binding)?;
    let https = match (&api.base.rest.tls_cert, &api.base.rest.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    let app = router(api);
    let task = match https {
        Some((cert, key)) => {
            let listener = tls::TlsListener::new(listener, &cert, &key)?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }),
    };
    Ok((local, task))
}

mod tls;

#[cfg(test)]
mod tests;
