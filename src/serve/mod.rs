//! `serve`: the admin HTTP API (axum on tokio). This module owns the
//! routes, their request bodies and limits, the bearer-token check, the
//! request log, the one-at-a-time gates of the long POSTs, and the
//! lifecycle (bind, graceful shutdown). The work itself is the library's:
//! every handler calls the same function the CLI calls, and answers with the
//! same JSON document the CLI prints.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /admin/backup` | optional `{"include_chroma": bool, "tags": [..]}` | the `create` result |
//! | `GET /admin/backup` | | the `list` result |
//! | `GET /admin/backup/{stamp}/validate` | | the `validate` result (200 even when `valid` is false) |
//! | `POST /admin/backup/{stamp}/drill` | optional `{}` | the `drill` result |
//! | `POST /admin/verify` | optional `{"snapshots": [..]}` | the `verify` result |
//! | `GET /healthz` | | store, snapshot count, newest stamp and its age |
//! | `GET /metrics` | | OpenMetrics text ([`metrics`]) |
//!
//! Store work runs on tokio's blocking pool, never on the async workers, so
//! GETs keep answering while a create runs. Creates (and verifies, and
//! drills) run one at a time per server: a second one waits up to
//! `--lock-wait` and then gets 409 naming the running one. Validations run
//! [`VALIDATE_SLOTS`] at a time; one more gets 409 at once. Busy answers
//! carry `Retry-After`. `/healthz` and `/metrics` have blocking threads of
//! their own, so they answer while store work queues. On SIGTERM or Ctrl-C
//! the server stops accepting, lets running work finish, and returns.
//!
//! Connections are served by hyper directly (our accept loop, not
//! `axum::serve`) for the limits axum does not expose: a connection that
//! has not sent a whole request head within [`ServeLimits::header_timeout`]
//! is closed, a body must arrive within the same time (408), one that takes
//! no bytes of its answers for as long is closed too, and past
//! [`ServeLimits::max_connections`] a connection is answered 503 and closed.
//! Without a token, requests a browser makes for another site (a foreign
//! `Origin` or `Host`) are refused with 403 ([`auth::cross_site_reason`]).

pub mod api_error;
pub mod auth;
mod handlers;
pub mod metrics;
mod stall;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::sources::paths::Paths;
use crate::store::key::Secrets;
use crate::store::location::StoreAddress;
use crate::store::{Object, Store};
pub use api_error::{status_for, ApiError};
pub use auth::Token;
use handlers::{
    create_backup, drill_backup, healthz, list_backups, metrics_text, validate_backup, verify_store,
};
pub use handlers::{CreateRequest, DrillRequest, Health, VerifyRequest};
use metrics::Metrics;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A body over the limit is still read (and dropped) up to this size, so
/// the client reads its 413 instead of a connection reset.
const DRAIN_LIMIT: usize = 1 << 20;
/// Ceiling on concurrent store jobs; shutdown waits for all of them.
const MAX_JOBS: u32 = 64;
/// Blocking threads kept for `/healthz` and `/metrics`, apart from the jobs.
const PROBE_JOBS: u32 = 4;
/// Validations run at once; one more is refused (409) without waiting.
pub const VALIDATE_SLOTS: usize = 2;
/// Connections past the cap being answered 503 at once; past this many,
/// a connection is closed without an answer.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is kept to read what its client sent, so
/// that closing does not reset it before it reads the 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The tracing target of the start and stop lines (kept with `--quiet`).
pub const LIFECYCLE: &str = "atosnap::serve::lifecycle";
/// Target of the other serve events (the module path before the handlers
/// moved to `handlers.rs`), so log filters and readers see no change.
pub const LOG: &str = "atosnap::serve";

/// How `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    pub paths: Paths,
    /// The store (`paths.store` parsed, with the remote settings).
    pub store: StoreAddress,
    /// The store's password source (an encrypted store is opened once and
    /// kept open: the key derivation is deliberately slow).
    pub secrets: Secrets,
    pub lock_wait: Duration,
    pub ingestion_lock: Option<PathBuf>,
    pub limits: ServeLimits,
}

/// How much a client may take of the server.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// A connection must send a whole request head within this (and a
    /// request body within it too), and take the bytes of its answer
    /// without stalling longer. SPEC §3: 60 s.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            header_timeout: Duration::from_secs(60),
            max_connections: 128,
        }
    }
}

impl ServeLimits {
    /// The defaults, with `ATOSNAP_SERVE_HEADER_TIMEOUT_MS` and
    /// `ATOSNAP_SERVE_MAX_CONNECTIONS` when set.
    pub fn from_env() -> Result<ServeLimits> {
        let mut limits = ServeLimits::default();
        if let Some(ms) = env_number("ATOSNAP_SERVE_HEADER_TIMEOUT_MS", 1..=3_600_000)? {
            limits.header_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = env_number("ATOSNAP_SERVE_MAX_CONNECTIONS", 1..=65_536)? {
            limits.max_connections = n as usize;
        }
        Ok(limits)
    }
}

fn env_number(var: &str, range: std::ops::RangeInclusive<u64>) -> Result<Option<u64>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{var}={v:?}: expected a whole number in {}..={}",
                    range.start(),
                    range.end()
                ))
            }),
        _ => Ok(None),
    }
}

/// Printed by the CLI when the server has stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServeSummary {
    pub listen: String,
    pub stopped_by: String,
    pub requests: u64,
    pub uptime_seconds: u64,
}

/// Refuses a configuration that would expose the store: a non-loopback
/// address without a token.
pub fn check_config(cfg: &ServeConfig) -> Result<()> {
    if !cfg.listen.ip().is_loopback() && cfg.token.is_none() {
        return Err(Error::ServeRefused(format!(
            "{} is not a loopback address and no token is set: pass --token-file F (or ATOSNAP_TOKEN_FILE), or listen on 127.0.0.1",
            cfg.listen
        )));
    }
    Ok(())
}

/// Binds, serves until SIGTERM or Ctrl-C, waits for running work, returns.
pub fn run(cfg: ServeConfig) -> Result<ServeSummary> {
    check_config(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads((MAX_JOBS + PROBE_JOBS) as usize + 4)
        .thread_name("atosnap-serve")
        .enable_all()
        .build()
        .map_err(|e| Error::ServeRuntime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve_until_signal(cfg))
}

async fn serve_until_signal(cfg: ServeConfig) -> Result<ServeSummary> {
    let listen = cfg.listen.to_string();
    let std_listener =
        std::net::TcpListener::bind(cfg.listen).map_err(|e| Error::io("listen on", &listen, e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("listen on", &listen, e))?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| Error::io("listen on", &listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("listen on", &listen, e))?;
    let limits = cfg.limits.clone();
    let state = Arc::new(AppState::new(cfg, bound));
    // Open the store now: a wrong or missing password refuses to start
    // (rather than failing every request); a missing store is made by the
    // first create.
    let opening = state.clone();
    let opened = tokio::task::spawn_blocking(move || opening.store(false).map(|_| ()))
        .await
        .map_err(|e| Error::ServeRuntime(format!("opening the store failed unexpectedly: {e}")))?;
    match opened {
        Ok(()) => {}
        Err(e @ Error::StoreMissing { .. }) if state.secrets.is_given() => tracing::warn!(
            "{e}; a password was given, so POST /admin/backup is refused until `atosnap init --encryption repokey` makes it"
        ),
        Err(e @ Error::StoreMissing { .. }) => {
            tracing::warn!("{e}; the first POST /admin/backup creates it")
        }
        Err(
            e @ (Error::PasswordRequired { .. }
            | Error::WrongPassword { .. }
            | Error::PasswordFile { .. }
            | Error::KeyFileMissing { .. }
            | Error::KeyFileCorrupt { .. }
            | Error::StoreTooNew { .. }
            | Error::StoreConfigInvalid { .. }),
        ) => return Err(e),
        Err(e) => tracing::warn!(code = e.code(), "store not readable yet: {e}"),
    }
    let stop = state.stopped_by.clone();
    let signal = shutdown_signal(stop.clone())?;
    tracing::info!(
        target: LIFECYCLE,
        store = %state.address.display(),
        token = state.token.is_some(),
        "listening on http://{bound}"
    );
    accept_loop(listener, router(state.clone()), &limits, signal).await;
    // Connections are closed; work whose client went away may still run.
    if state.jobs.available_permits() < MAX_JOBS as usize {
        tracing::info!(target: LIFECYCLE, "waiting for running store work to finish");
    }
    let _all = state.jobs.acquire_many(MAX_JOBS).await;
    let _probes = state.probes.acquire_many(PROBE_JOBS).await;
    let stopped_by = lock(&stop).clone();
    tracing::info!(target: LIFECYCLE, stopped_by = %stopped_by, "stopped");
    Ok(ServeSummary {
        listen: bound.to_string(),
        stopped_by,
        requests: state.requests.load(Ordering::Relaxed),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}

/// Accepts connections until `stop` resolves, then lets every open one
/// finish its request and returns when all are closed. Past
/// `max_connections` a connection is answered 503 and closed.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &ServeLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
                if !matches!(e.kind(), ConnectionAborted | ConnectionReset) {
                    // Out of file descriptors and the like: pause, not spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let conn = serve_connection(stream, app.clone(), limits.header_timeout);
            tokio::spawn(until_closing(conn, slot, closing_rx.clone()));
        } else if let Ok(permit) = refusing.clone().try_acquire_owned() {
            tokio::spawn(refuse_connection(stream, limits.max_connections, permit));
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let _all = slots.acquire_many(limits.max_connections as u32).await;
}

type Connection = hyper::server::conn::http1::Connection<
    hyper_util::rt::TokioIo<stall::StallLimit>,
    hyper_util::service::TowerToHyperService<Router>,
>;

/// One HTTP/1.1 connection, closed when its request head (or the next
/// one) is not complete within `header_timeout`, or when the client takes
/// none of its answer for as long ([`stall::StallLimit`]).
fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    header_timeout: Duration,
) -> Connection {
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.serve_connection(
        hyper_util::rt::TokioIo::new(stall::StallLimit::new(stream, header_timeout)),
        hyper_util::service::TowerToHyperService::new(app),
    )
}

/// Runs a connection to its end; once the server is stopping, lets it
/// finish the request under way and closes it. Holds its slot until then.
async fn until_closing(
    conn: Connection,
    _slot: OwnedSemaphorePermit,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing.wait_for(|c| *c) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Answers a connection past the cap with 503 and `Retry-After`, then
/// closes it.
async fn refuse_connection(
    mut stream: tokio::net::TcpStream,
    cap: usize,
    _permit: OwnedSemaphorePermit,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let doc = api_error::error_doc(
        "too_many_connections",
        &format!("this server serves {cap} connections at once; retry later"),
    );
    let body = format!("{doc:#}\n");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        api_error::RETRY_AFTER_SECS,
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent: closing a socket with unread data
        // resets it, and the client could lose the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT), recording which.
fn shutdown_signal(
    stop: Arc<Mutex<String>>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::ServeRuntime(format!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::ServeRuntime(format!("cannot watch SIGINT: {e}")))?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        *lock(&stop) = name.to_string();
        tracing::info!(
            target: LIFECYCLE,
            signal = name,
            "stopping: no new connections; running requests finish first"
        );
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- state ----------------------------------------------------------------

struct AppState {
    /// The bound address: what a browser's `Host` and `Origin` must name.
    listen: SocketAddr,
    /// How long a request body may take to arrive.
    body_timeout: Duration,
    paths: Paths,
    address: StoreAddress,
    secrets: Secrets,
    /// The opened store, with the config bytes it was opened from.
    store: Mutex<Option<(Vec<u8>, Store)>>,
    lock_wait: Duration,
    ingestion_lock: Option<PathBuf>,
    token: Option<Token>,
    metrics: Metrics,
    create_gate: Gate,
    verify_gate: Gate,
    drill_gate: Gate,
    validate_gate: Gate,
    /// One permit per running store job; shutdown takes them all.
    jobs: Arc<Semaphore>,
    /// The same for `/healthz` and `/metrics`, which never wait for jobs.
    probes: Arc<Semaphore>,
    requests: AtomicU64,
    started: Instant,
    /// The signal that stopped the server (empty while it runs). Set when
    /// it arrives: store work not yet started is refused from then on.
    stopped_by: Arc<Mutex<String>>,
}

impl AppState {
    fn new(cfg: ServeConfig, listen: SocketAddr) -> AppState {
        AppState {
            listen,
            body_timeout: cfg.limits.header_timeout,
            paths: cfg.paths,
            address: cfg.store,
            secrets: cfg.secrets,
            store: Mutex::new(None),
            lock_wait: cfg.lock_wait,
            ingestion_lock: cfg.ingestion_lock,
            token: cfg.token,
            metrics: Metrics::new(),
            create_gate: Gate::new("create", 1),
            verify_gate: Gate::new("verify", 1),
            drill_gate: Gate::new("drill", 1),
            validate_gate: Gate::new("validate", VALIDATE_SLOTS),
            jobs: Arc::new(Semaphore::new(MAX_JOBS as usize)),
            probes: Arc::new(Semaphore::new(PROBE_JOBS as usize)),
            requests: AtomicU64::new(0),
            started: Instant::now(),
            stopped_by: Arc::new(Mutex::new(String::new())),
        }
    }

    /// The store, with fresh file handles for each piece of work (packs a
    /// gc deleted are never kept open). Its key is derived once, and again
    /// only when `config.json` changes (a store replaced under the same
    /// path). With `create`, a missing store is made (as `atosnap create`
    /// does). Blocking.
    fn store(&self, create: bool) -> Result<Store> {
        if let Some((seen, store)) = lock(&self.store).as_ref() {
            if store.read_object(&Object::Config).ok().as_ref() == Some(seen) {
                return Ok(store.reopened());
            }
        }
        let opened = if create {
            Store::open_or_init(&self.address, &self.secrets)?
        } else {
            Store::open(&self.address, &self.secrets)?
        };
        let fresh = opened.reopened();
        if let Ok(bytes) = opened.read_object(&Object::Config) {
            *lock(&self.store) = Some((bytes, opened));
        }
        Ok(fresh)
    }

    /// Runs `work` on the blocking pool. The job permit (and the gate
    /// permit, if any) stay held until `work` returns, even when the client
    /// has gone away.
    async fn blocking<T: Send + 'static>(
        &self,
        gate: Option<OwnedSemaphorePermit>,
        work: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
    ) -> std::result::Result<T, ApiError> {
        // SIGTERM lets running work finish, and starts none: a request
        // that waited at its gate, or for a job permit, while the server
        // began to stop (a second create queued behind the running one)
        // is turned away. Checked right before the work starts.
        let stopped_by = self.stopped_by.clone();
        run_blocking(&self.jobs, gate, move || {
            if !lock(&stopped_by).is_empty() {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is stopping; nothing was done",
                )
                .retry_later());
            }
            work()
        })
        .await
    }

    /// [`AppState::blocking`] for `/healthz` and `/metrics`: their own
    /// permits, so they answer while jobs queue.
    async fn probe<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
    ) -> std::result::Result<T, ApiError> {
        run_blocking(&self.probes, None, work).await
    }
}

/// Runs `work` on the blocking pool under a permit of `pool`.
async fn run_blocking<T: Send + 'static>(
    pool: &Arc<Semaphore>,
    gate: Option<OwnedSemaphorePermit>,
    work: impl FnOnce() -> std::result::Result<T, ApiError> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    let job = pool
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("shutting_down", "the server is stopping"))?;
    let handle = tokio::task::spawn_blocking(move || {
        let _job = job;
        let _gate = gate;
        work()
    });
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(ApiError::internal(
            "internal",
            format!("store work failed unexpectedly: {e}"),
        )),
    }
}

/// A few-at-a-time (usually one) execution of a kind of work within this
/// server.
struct Gate {
    what: &'static str,
    slots: usize,
    slot: Arc<Semaphore>,
    holder: Mutex<String>,
}

impl Gate {
    fn new(what: &'static str, slots: usize) -> Gate {
        Gate {
            what,
            slots,
            slot: Arc::new(Semaphore::new(slots)),
            holder: Mutex::new(String::new()),
        }
    }

    fn busy(&self) -> bool {
        self.slot.available_permits() == 0
    }

    /// Waits up to `wait` for a slot; then 409 naming the running work.
    async fn enter(&self, wait: Duration) -> Result<OwnedSemaphorePermit> {
        let acquired = match self.slot.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if wait.is_zero() => None,
            Err(_) => tokio::time::timeout(wait, self.slot.clone().acquire_owned())
                .await
                .ok()
                .and_then(|p| p.ok()),
        };
        match acquired {
            Some(permit) => {
                let who = if self.slots == 1 {
                    format!("a `{}` requested over HTTP", self.what)
                } else {
                    format!("{} `{}` requests over HTTP", self.slots, self.what)
                };
                *lock(&self.holder) = format!(
                    "{who} (this server, pid {}, the newest since {})",
                    std::process::id(),
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                Ok(permit)
            }
            None => Err(Error::Locked {
                holders: lock(&self.holder).clone(),
                waited_secs: wait.as_secs(),
            }),
        }
    }
}

/// Logs the phases of long work (the library never prints).
struct LogProgress(&'static str);

impl Progress for LogProgress {
    fn phase(&self, name: &str, total: Option<u64>) {
        tracing::info!(work = self.0, phase = name, total_bytes = total, "phase");
    }
}

// ---- router ---------------------------------------------------------------

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/backup", post(create_backup).get(list_backups))
        .route("/admin/backup/{stamp}/validate", get(validate_backup))
        .route("/admin/backup/{stamp}/drill", post(drill_backup))
        .route("/admin/verify", post(verify_store))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state, log_request))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found_route(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}

/// Logs every request and its outcome (never a header value), and counts it.
async fn log_request(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = st.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    let code = resp
        .extensions()
        .get::<api_error::ErrorCode>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    st.metrics.count_request(method.as_str(), &route, status);
    if status >= 500 {
        tracing::error!(id, %method, path = ?path, status, ms, code = %code, "request");
    } else if status >= 400 {
        tracing::warn!(id, %method, path = ?path, status, ms, code = %code, "request");
    } else {
        tracing::info!(id, %method, path = ?path, status, ms, "request");
    }
    resp
}

/// With a token configured, every route needs `Authorization: Bearer`;
/// without one, a browser's request for another site is refused (403).
async fn authorize(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.token.is_none() {
        if let Some(reason) = auth::cross_site_reason(req.headers(), st.listen) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                format!("refused: {reason} (a web page may not drive this server; call it directly, or set a token)"),
            )
            .into_response();
        }
    }
    if let Some(token) = &st.token {
        match req.headers().get(header::AUTHORIZATION) {
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_missing",
                    "this server needs `Authorization: Bearer <token>`",
                )
                .into_response()
            }
            Some(v) if !token.check_header(v.as_bytes()) => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_invalid",
                    "the bearer token is wrong",
                )
                .into_response()
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback_without_token() {
        let mut cfg = ServeConfig {
            listen: "0.0.0.0:8101".parse().unwrap(),
            token: None,
            paths: Paths::resolve_with_data_dir(None, None, None, None, std::path::Path::new(".")),
            store: StoreAddress::local("./backups"),
            secrets: Secrets::none(),
            lock_wait: Duration::from_secs(1),
            ingestion_lock: None,
            limits: ServeLimits::default(),
        };
        assert_eq!(check_config(&cfg).unwrap_err().code(), "serve_refused");
        cfg.token = Some(Token::from_secret("0123456789abcdef").unwrap());
        assert!(check_config(&cfg).is_ok());
        cfg.listen = "[::1]:8101".parse().unwrap();
        cfg.token = None;
        assert!(check_config(&cfg).is_ok());
    }

    #[tokio::test]
    async fn a_busy_gate_answers_locked_naming_the_holder() {
        let gate = Gate::new("create", 1);
        let _held = gate.enter(Duration::from_secs(1)).await.unwrap();
        assert!(gate.busy());
        let e = gate.enter(Duration::from_millis(0)).await.unwrap_err();
        assert_eq!(e.code(), "store_locked");
        assert!(
            e.to_string().contains("a `create` requested over HTTP"),
            "{e}"
        );
        assert_eq!(status_for(&e), StatusCode::CONFLICT);
        assert_eq!(
            ApiError::from(e).retry_after,
            Some(api_error::RETRY_AFTER_SECS)
        );
    }

    #[tokio::test]
    async fn the_validate_gate_admits_its_slots_and_refuses_one_more_at_once() {
        let gate = Gate::new("validate", VALIDATE_SLOTS);
        let held: Vec<_> = take_all_slots(&gate).await;
        assert_eq!(held.len(), VALIDATE_SLOTS);
        let e = gate.enter(Duration::ZERO).await.unwrap_err();
        assert!(
            e.to_string().contains("`validate` requests over HTTP"),
            "{e}"
        );
        drop(held);
        assert!(gate.enter(Duration::ZERO).await.is_ok());
    }

    async fn take_all_slots(gate: &Gate) -> Vec<OwnedSemaphorePermit> {
        let mut held = Vec::new();
        for _ in 0..VALIDATE_SLOTS {
            held.push(gate.enter(Duration::ZERO).await.unwrap());
        }
        held
    }

    #[test]
    fn the_default_header_timeout_is_the_spec_s() {
        let limits = ServeLimits::default();
        // SPEC §3: a whole request head within 60 s.
        assert_eq!(limits.header_timeout, Duration::from_secs(60));
    }
}
