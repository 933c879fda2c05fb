//! The routes' handlers and their request bodies: each parses its body,
//! takes its gate and runs one op on a blocking thread. Their events keep
//! the target `atosnap::serve` ([`LOG`]), as before the split.

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ops::create::{self, CreateOptions};
use crate::ops::{drill, list, verify};
use crate::stamp::Stamp;
use crate::store::Store;

use super::api_error::{self, ApiError};
use super::metrics::{self, StoreFacts};
use super::{AppState, LogProgress, BODY_LIMIT, DRAIN_LIMIT, LOG};

/// `POST /admin/backup`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    pub include_chroma: bool,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `POST /admin/verify`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[serde(default)]
    pub snapshots: Vec<String>,
}

/// `POST /admin/backup/{stamp}/drill` (no options yet).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {}

/// Reads a body of at most [`BODY_LIMIT`] bytes within `timeout`.
pub(super) async fn read_body(
    req: Request,
    timeout: Duration,
) -> std::result::Result<Vec<u8>, ApiError> {
    tokio::time::timeout(timeout, read_body_untimed(req))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            ))
        })
}

pub(super) async fn read_body_untimed(req: Request) -> std::result::Result<Vec<u8>, ApiError> {
    let too_large = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is {n} bytes; the limit is {BODY_LIMIT}"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > DRAIN_LIMIT as u64) {
        return Err(too_large(n.to_string()));
    }
    let mut body = req.into_body();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "body_unreadable",
                format!("the request body broke off: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > DRAIN_LIMIT {
                return Err(too_large(format!("over {DRAIN_LIMIT}")));
            }
            if total <= BODY_LIMIT {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > BODY_LIMIT {
        return Err(too_large(total.to_string()));
    }
    Ok(buf)
}

/// Parses an optional JSON body: empty means the defaults; anything else
/// must be a JSON object (serde would take `[true]` for the first field).
pub(super) fn parse_body<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> std::result::Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let kind = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(_)) => None,
        Ok(serde_json::Value::Array(_)) => Some("an array"),
        Ok(serde_json::Value::Null) => Some("null"),
        Ok(_) => Some("a scalar"),
        Err(e) => {
            return Err(ApiError::bad_request(
                "bad_json",
                format!("request body: {e}"),
            ))
        }
    };
    if let Some(kind) = kind {
        return Err(ApiError::bad_request(
            "body_not_object",
            format!("request body: expected a JSON object {{...}}, got {kind}"),
        ));
    }
    // From the bytes again, not the parsed value: a duplicate field stays
    // an error.
    match serde_json::from_slice::<T>(bytes) {
        Ok(v) => Ok(v),
        Err(e) => {
            let msg = e.to_string();
            let code = if msg.starts_with("unknown field") {
                "unknown_field"
            } else {
                "bad_json"
            };
            Err(ApiError::bad_request(code, format!("request body: {msg}")))
        }
    }
}

pub(super) async fn json_body<T: serde::de::DeserializeOwned + Default>(
    st: &AppState,
    req: Request,
) -> std::result::Result<T, ApiError> {
    parse_body(&read_body(req, st.body_timeout).await?)
}

/// The stamp of a URL, parsed strictly before anything touches the store.
pub(super) fn url_stamp(
    stamp: std::result::Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
) -> std::result::Result<Stamp, ApiError> {
    let UrlPath(raw) = stamp.map_err(|e| {
        ApiError::bad_request("invalid_stamp", format!("the stamp in the URL: {e}"))
    })?;
    Ok(Stamp::parse(&raw)?)
}

pub(super) fn to_doc<T: Serialize>(value: &T) -> std::result::Result<serde_json::Value, ApiError> {
    serde_json::to_value(value)
        .map_err(|e| ApiError::internal("error", format!("result encoding: {e}")))
}

pub(super) fn ok_json<T: Serialize>(value: &T) -> std::result::Result<Response, ApiError> {
    Ok(api_error::json_response(StatusCode::OK, &to_doc(value)?))
}

pub(super) fn require_snapshot(store: &Store, stamp: &Stamp) -> std::result::Result<(), ApiError> {
    if store.snapshot_exists(stamp)? {
        Ok(())
    } else {
        Err(Error::SnapshotMissing {
            stamp: stamp.to_string(),
        }
        .into())
    }
}

// ---- handlers -------------------------------------------------------------

pub(super) async fn create_backup(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> std::result::Result<Response, ApiError> {
    let body: CreateRequest = json_body(&st, req).await?;
    // Refused before waiting at the gate or making a missing store.
    let tags = crate::ops::tag::new_tags("tags", &body.tags)?;
    let waited = Instant::now();
    let gate = st.create_gate.enter(st.lock_wait).await?;
    let opts = CreateOptions {
        db: st.paths.db.clone(),
        registry: st.paths.registry.clone(),
        chroma: body.include_chroma.then(|| st.paths.chroma_dir.clone()),
        tags,
        at: None,
        // The gate's wait counts against --lock-wait.
        lock_wait: st.lock_wait.saturating_sub(waited.elapsed()),
        ingestion_lock: st.ingestion_lock.clone(),
    };
    let started = Instant::now();
    let state = st.clone();
    let result = st
        .blocking(Some(gate), move || {
            // As the CLI: refuse a missing db before a store is created.
            crate::sources::sqlite::check_database(&opts.db)?;
            // With a password and no store this is `store_missing`.
            let store = state.store(true)?;
            Ok(create::create(&store, &opts, &LogProgress("create"))?)
        })
        .await?;
    st.metrics.observe_create(started.elapsed().as_secs_f64());
    tracing::info!(
        target: LOG,
        stamp = %result.stamp,
        validated = result.validated,
        chunks_new = result.chunks_new,
        bytes_new_stored = result.bytes_new_stored,
        "snapshot created"
    );
    ok_json(&result)
}

pub(super) async fn list_backups(
    State(st): State<Arc<AppState>>,
) -> std::result::Result<Response, ApiError> {
    let state = st.clone();
    let result = st
        .blocking(None, move || Ok(list::list(&state.store(false)?)?))
        .await?;
    ok_json(&result)
}

pub(super) async fn validate_backup(
    State(st): State<Arc<AppState>>,
    stamp: std::result::Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
) -> std::result::Result<Response, ApiError> {
    let stamp = url_stamp(stamp)?;
    // A monitor polling validate hears "busy" at once rather than piling up.
    let gate = st.validate_gate.enter(Duration::ZERO).await?;
    let state = st.clone();
    let report = st
        .blocking(Some(gate), move || {
            let store = state.store(false)?;
            require_snapshot(&store, &stamp)?;
            Ok(verify::validate(
                &store,
                &stamp.to_string(),
                state.lock_wait,
            )?)
        })
        .await?;
    if !report.exists {
        // Deleted between the check and the validation.
        return Err(Error::SnapshotMissing {
            stamp: report.stamp,
        }
        .into());
    }
    ok_json(&report)
}

pub(super) async fn drill_backup(
    State(st): State<Arc<AppState>>,
    stamp: std::result::Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> std::result::Result<Response, ApiError> {
    let stamp = url_stamp(stamp)?;
    let _options: DrillRequest = json_body(&st, req).await?;
    let gate = st.drill_gate.enter(st.lock_wait).await?;
    let state = st.clone();
    let started = Instant::now();
    let result = st
        .blocking(Some(gate), move || {
            let store = state.store(false)?;
            require_snapshot(&store, &stamp)?;
            // The outcome goes to the store's drill log, which is where
            // `atosnap_last_drill_success` reads it.
            Ok(drill::drill(
                &store,
                Some(&stamp.to_string()),
                state.lock_wait,
                &LogProgress("drill"),
            )?)
        })
        .await?;
    st.metrics.observe_drill(started.elapsed().as_secs_f64());
    tracing::info!(target: LOG, stamp = %result.stamp, ok = result.ok, "drill finished");
    ok_json(&result)
}

pub(super) async fn verify_store(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> std::result::Result<Response, ApiError> {
    let body: VerifyRequest = json_body(&st, req).await?;
    let stamps = body
        .snapshots
        .iter()
        .map(|s| Stamp::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let gate = st.verify_gate.enter(st.lock_wait).await?;
    let state = st.clone();
    let started = Instant::now();
    let report = st
        .blocking(Some(gate), move || {
            let store = state.store(false)?;
            for stamp in &stamps {
                require_snapshot(&store, stamp)?;
            }
            let opts = verify::VerifyOptions {
                snapshots: stamps.iter().map(Stamp::to_string).collect(),
                ..verify::VerifyOptions::new(state.lock_wait)
            };
            Ok(verify::verify(&store, &opts)?)
        })
        .await?;
    st.metrics.observe_verify(started.elapsed().as_secs_f64());
    tracing::info!(target: LOG, ok = report.ok, "verify finished");
    ok_json(&report)
}

/// `GET /healthz`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub store: String,
    pub snapshots: u64,
    pub unparseable: u64,
    pub newest_stamp: Option<String>,
    pub newest_created_at: Option<String>,
    pub newest_age_seconds: Option<u64>,
    pub create_running: bool,
    pub uptime_seconds: u64,
}

/// Store, newest stamp and its age; 503 when the store cannot be opened.
pub(super) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let create_running = st.create_gate.busy();
    let uptime_seconds = st.started.elapsed().as_secs();
    let state = st.clone();
    let health = st
        .probe(move || {
            let store = state.store(false)?;
            let listing = store.list_snapshots()?;
            let newest = listing.stamps.last().cloned();
            let created_at = newest.as_ref().map(|s| {
                store
                    .read_metadata(s)
                    .ok()
                    .and_then(|m| m.get("created_at")?.as_str().map(str::to_string))
                    .unwrap_or_else(|| s.time().to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            });
            let age = created_at
                .as_deref()
                .and_then(metrics::unix_seconds)
                .map(|t| (chrono::Utc::now().timestamp() as f64 - t).max(0.0) as u64);
            Ok(Health {
                status: "ok".into(),
                store: state.address.display(),
                snapshots: listing.stamps.len() as u64,
                unparseable: listing.unparseable.len() as u64,
                newest_stamp: newest.map(|s| s.to_string()),
                newest_created_at: created_at,
                newest_age_seconds: age,
                create_running,
                uptime_seconds,
            })
        })
        .await;
    match health {
        Ok(h) => ok_json(&h).unwrap_or_else(IntoResponse::into_response),
        Err(mut e) => {
            // Unhealthy, whatever the cause.
            e.status = StatusCode::SERVICE_UNAVAILABLE;
            e.into_response()
        }
    }
}

pub(super) async fn metrics_text(
    State(st): State<Arc<AppState>>,
) -> std::result::Result<Response, ApiError> {
    let state = st.clone();
    let facts = st
        .probe(move || {
            let gathered = state.store(false).and_then(|store| {
                let listing = list::list(&store)?;
                StoreFacts::gather(&store, &listing)
            });
            Ok(match gathered {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(target: LOG, code = e.code(), error = %e, "metrics: store unreadable");
                    None
                }
            })
        })
        .await?;
    let text = st.metrics.render(facts)?;
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        Body::from(text),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_optional_and_strict() {
        let b: CreateRequest = parse_body(b"").unwrap();
        assert!(!b.include_chroma && b.tags.is_empty());
        // Not an object: `[true]` must not become include_chroma: true.
        for body in [&b"[true]"[..], b" null ", b"true", b"\"x\"", b"[]"] {
            let e = parse_body::<CreateRequest>(body).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code.as_str()),
                (400, "body_not_object")
            );
        }
        let e = parse_body::<CreateRequest>(br#"{"tags": [], "tags": ["a"]}"#).unwrap_err();
        assert_eq!(e.code, "bad_json");
        let b: CreateRequest = parse_body(br#"{"include_chroma": true, "tags": ["a"]}"#).unwrap();
        assert!(b.include_chroma && b.tags == ["a"]);
        let e = parse_body::<CreateRequest>(br#"{"include_chroma": true, "x": 1}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "unknown_field"));
        let e = parse_body::<CreateRequest>(b"{not json").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "bad_json"));
        let e = parse_body::<CreateRequest>(br#"{"include_chroma": "yes"}"#).unwrap_err();
        assert_eq!(e.code, "bad_json");
        let e = parse_body::<DrillRequest>(br#"{"x": 1}"#).unwrap_err();
        assert_eq!(e.code, "unknown_field");
    }
}
