//! `dllm-rl serve`: the verifier as an HTTP service that speaks SandboxFusion's API, so that
//! verl's `sandbox_fusion` reward, Dream-Coder's reward manager and the `sandbox-fusion` SDK can
//! use it unchanged, with our trusted judge behind `/submit`.
//!
//! Endpoints: `POST /run_code`, `POST /submit` (see [`api`]), `GET /v1/ping` (`"pong"`),
//! `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! Admission: at most `jobs + queue` requests are admitted at once (running or waiting for a
//! sandbox worker); one more is answered 504 at once, the status verl's client retries on (it
//! scores every other error as a failed run). Caps on the body, code, stdin and time limits
//! answer 400 with the field named, before a request takes a place.

// The handlers' helpers return the early answer (a 400, a 504) as their error: a `Response`,
// made at most once per request, so boxing it would save nothing.
#![allow(clippy::result_large_err)]

pub mod api;
mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use api::{BadRequest, RunCodeResponse, Service};
use metrics::Metrics;

/// Everything the handlers share.
pub struct App {
    service: Arc<Service>,
    /// The bearer token every request but `/healthz` must carry, when set.
    token: Option<String>,
    /// Places for requests admitted (running or waiting).
    admission: Arc<Semaphore>,
    capacity: usize,
    /// One permit per sandbox worker: what bounds concurrent runs.
    workers: Arc<Semaphore>,
    jobs: usize,
    metrics: Metrics,
}

impl App {
    pub fn new(service: Service, token: Option<String>, jobs: usize, queue: usize) -> Arc<Self> {
        let capacity = jobs + queue;
        Arc::new(App {
            service: Arc::new(service),
            token,
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
            workers: Arc::new(Semaphore::new(jobs)),
            jobs,
            metrics: Metrics::default(),
        })
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/run_code", post(run_code))
        .route("/submit", post(submit))
        .route("/v1/ping", get(|| async { Json("pong") }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        // Bodies are read by `read_body` under the server's own cap (a 400 naming it).
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(app.clone(), authorize_and_count))
        .with_state(app)
}

/// Serves until `shutdown` resolves, then stops accepting and returns once every request in
/// flight is answered.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await
}

/// The endpoint's name for the metrics: a fixed set, so a client cannot grow the label space.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/run_code" => "/run_code",
        "/submit" => "/submit",
        "/v1/ping" => "/v1/ping",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

async fn authorize_and_count(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let endpoint = endpoint_label(request.uri().path());
    let response = match &app.token {
        // /healthz stays open: probes of an orchestrator carry no token.
        Some(token) if endpoint != "/healthz" && !bearer_matches(request.headers().get(header::AUTHORIZATION), token) => {
            error_response(StatusCode::UNAUTHORIZED, "a bearer token is required: Authorization: Bearer TOKEN")
        }
        _ => next.run(request).await,
    };
    app.metrics.request(endpoint, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// Compares in time independent of where the first difference is.
fn bearer_matches(value: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = value.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error in SandboxFusion's RunCodeResponse shape (`status`, `message`), with FastAPI's
/// `detail` beside it, so that either kind of client prints the reason.
fn error_response(code: StatusCode, message: &str) -> Response {
    let mut body = serde_json::to_value(RunCodeResponse::refusal(message)).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("detail".into(), message.into());
    }
    (code, Json(body)).into_response()
}

fn bad_request(e: BadRequest) -> Response {
    error_response(StatusCode::BAD_REQUEST, &e.0)
}

async fn read_body(app: &App, request: Request) -> Result<axum::body::Bytes, Response> {
    let cap = app.service.caps.body_bytes;
    axum::body::to_bytes(request.into_body(), cap).await.map_err(|_| {
        bad_request(BadRequest(format!("request body: more than this server's cap of {cap} bytes (or not fully sent)")))
    })
}

async fn parse<T: serde::de::DeserializeOwned>(app: &App, request: Request) -> Result<T, Response> {
    let body = read_body(app, request).await?;
    serde_json::from_slice(&body).map_err(|e| bad_request(BadRequest(format!("request body: {e}"))))
}

/// A place among the admitted requests, or the 504 that tells the client to retry later.
fn admit(app: &App) -> Result<OwnedSemaphorePermit, Response> {
    app.admission.clone().try_acquire_owned().map_err(|_| {
        error_response(StatusCode::GATEWAY_TIMEOUT, &format!("the server is full ({} requests admitted); retry", app.capacity))
    })
}

/// Runs `work` on a blocking thread once a sandbox worker is free.
async fn on_worker<T: Send + 'static>(app: &App, work: impl FnOnce(&Service) -> T + Send + 'static) -> Result<T, Response> {
    let worker = app.workers.clone().acquire_owned().await.map_err(|_| error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let service = app.service.clone();
    tokio::task::spawn_blocking(move || {
        let _worker = worker;
        work(&service)
    })
    .await
    .map_err(|e| error_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("the run failed: {e}")))
}

async fn run_code(State(app): State<Arc<App>>, request: Request) -> Response {
    let request: api::RunCodeRequest = match parse(&app, request).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    if let Err(e) = app.service.check_run_code(&request) {
        return bad_request(e);
    }
    let _place = match admit(&app) {
        Ok(p) => p,
        Err(response) => return response,
    };
    match on_worker(&app, move |service| service.run_code(&request)).await {
        Ok(response) => {
            app.metrics.run(response.status.name());
            Json(response).into_response()
        }
        Err(response) => response,
    }
}

async fn submit(State(app): State<Arc<App>>, request: Request) -> Response {
    let request: api::SubmitRequest = match parse(&app, request).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let submission = match app.service.submission(request) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let _place = match admit(&app) {
        Ok(p) => p,
        Err(response) => return response,
    };
    match on_worker(&app, move |service| service.submit(submission)).await {
        Ok(Ok((result, verdict))) => {
            app.metrics.verdict(verdict);
            Json(result).into_response()
        }
        Ok(Err(e)) => bad_request(e),
        Err(response) => response,
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let queued = app.capacity - app.admission.available_permits();
    let running = app.jobs - app.workers.available_permits();
    let text = app.metrics.render(queued, running, app.capacity);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], Body::from(text)).into_response()
}
