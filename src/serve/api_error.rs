//! The HTTP error document `{"error": {"code", "message"}}` and the one
//! place where library [`Error`]s become HTTP statuses.
//!
//! The status says what kind of failure it is (400 the request is wrong,
//! 401 not authorised, 404 nothing there, 409 the store is busy past
//! `--lock-wait` or the route's slots are taken, 413 body too large, 403 a
//! cross-site browser request, 408 a body too slow, 503 too many
//! connections, 500 the server failed; 409 and 503 carry `Retry-After`); the `code` is
//! the library's stable code, so a 500 still says `db_missing` or
//! `disk_full`. Every 5xx is logged with its cause chain.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// An error answer of the admin API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// The full cause chain, logged for 5xx (never sent).
    cause: Option<String>,
    /// Seconds for `Retry-After` (busy: try again later).
    pub retry_after: Option<u64>,
}

/// `Retry-After` of a busy answer: a short, fixed pause (the work in the
/// way may take minutes, but a caller that retries learns that cheaply).
pub const RETRY_AFTER_SECS: u64 = 5;

/// Marks a response as an error so the request log can name its code.
#[derive(Clone, Debug)]
pub struct ErrorCode(pub String);

/// The HTTP status of a library error. New variants default to 500, which
/// is logged with its cause; give them a 4xx here when the caller is at
/// fault.
pub fn status_for(e: &Error) -> StatusCode {
    match e {
        Error::Usage(_) | Error::InvalidStamp { .. } | Error::NotConfirmed => {
            StatusCode::BAD_REQUEST
        }
        Error::SnapshotMissing { .. }
        | Error::StoreMissing { .. }
        | Error::StoreMissingWithPassword { .. }
        | Error::NoSnapshots => StatusCode::NOT_FOUND,
        Error::Locked { .. } | Error::DbInUse { .. } | Error::DbHeldUnseen { .. } => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            cause: None,
            retry_after: None,
        }
    }

    /// The same error, answered with `Retry-After`.
    pub fn retry_later(mut self) -> ApiError {
        self.retry_after = Some(RETRY_AFTER_SECS);
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }

    pub fn not_found_route(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route {method} {path} (routes: POST/GET /admin/backup, GET /admin/backup/{{stamp}}/validate, POST /admin/backup/{{stamp}}/drill, POST /admin/verify, GET /healthz, GET /metrics)"
            ),
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause.push_str(": ");
            cause.push_str(&s.to_string());
            source = s.source();
        }
        ApiError {
            status: status_for(&e),
            code: e.code().to_string(),
            message: e.to_string(),
            cause: Some(cause),
            retry_after: matches!(e, Error::Locked { .. }).then_some(RETRY_AFTER_SECS),
        }
    }
}

/// The error document, as the CLI prints it.
pub fn error_doc(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message}})
}

/// A JSON response: the pretty document plus a newline, like the CLI.
pub fn json_response(status: StatusCode, doc: &serde_json::Value) -> Response {
    let mut body = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".to_string());
    body.push('\n');
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(
                status = self.status.as_u16(),
                code = %self.code,
                cause = %self.cause.as_deref().unwrap_or(&self.message),
                "request failed"
            );
        }
        let mut resp = json_response(self.status, &error_doc(&self.code, &self.message));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"atosnap\""),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_their_status() {
        let cases = [
            (
                Error::InvalidStamp {
                    stamp: "x".into(),
                    reason: "r".into(),
                },
                400,
            ),
            (Error::SnapshotMissing { stamp: "s".into() }, 404),
            (
                Error::Locked {
                    holders: "pid 1".into(),
                    waited_secs: 0,
                },
                409,
            ),
            (Error::DbMissing { path: "/x".into() }, 500),
            (
                Error::Encode {
                    detail: "boom".into(),
                },
                500,
            ),
        ];
        for (e, status) in cases {
            let code = e.code().to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), status, "{code}");
            assert_eq!(api.code, code);
        }
    }
}
