//! S3 failures as `io::Error`s: OpenDAL's kinds mapped onto `io::ErrorKind`
//! (the one place that classifies S3 errors), with credentials scrubbed
//! from the messages.

use opendal::ErrorKind as OdKind;
use std::io;

/// The endpoint could not be reached at all (as opposed to an answer).
pub(super) fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
    )
}

/// What error messages need to name things (shared with upload threads).
pub(super) struct Names {
    pub(super) url: String,
    pub(super) bucket: String,
    pub(super) endpoint: String,
}

impl Names {
    pub(super) fn display(&self, name: &str) -> String {
        if name.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{}", self.url, name)
        }
    }

    /// Maps an OpenDAL error on object `name` to an `io::Error`.
    pub(super) fn err(&self, name: &str, e: opendal::Error) -> io::Error {
        let detail = scrub(&error_chain(&e));
        let lower = detail.to_ascii_lowercase();
        let what = self.display(name);
        let (kind, msg) = match e.kind() {
            OdKind::NotFound => (io::ErrorKind::NotFound, format!("{what}: not found")),
            OdKind::ConfigInvalid if detail.contains("NoSuchBucket") => (
                io::ErrorKind::NotFound,
                format!("bucket {} does not exist at {}", self.bucket, self.endpoint),
            ),
            OdKind::PermissionDenied => (
                io::ErrorKind::PermissionDenied,
                format!("credentials refused by {}: {detail}", self.endpoint),
            ),
            _ if lower.contains("load signing credential")
                || (lower.contains("credential") && lower.contains("no valid")) =>
            {
                (
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "no S3 credentials for {}: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials ({detail})",
                        self.endpoint
                    ),
                )
            }
            OdKind::ConditionNotMatch => (
                io::ErrorKind::AlreadyExists,
                format!("{what}: already exists"),
            ),
            OdKind::Unsupported => (io::ErrorKind::Unsupported, format!("{what}: {detail}")),
            _ if lower.contains("timeout") || lower.contains("timed out") => (
                io::ErrorKind::TimedOut,
                format!("S3 endpoint {} timed out ({what}): {detail}", self.endpoint),
            ),
            _ if lower.contains("send http request") || lower.contains("connect") => (
                io::ErrorKind::ConnectionRefused,
                format!(
                    "cannot reach S3 endpoint {} ({what}): {detail}",
                    self.endpoint
                ),
            ),
            _ => (io::ErrorKind::Other, format!("{what}: {detail}")),
        };
        io::Error::new(kind, msg)
    }
}

/// The error and its sources, one line.
pub(super) fn error_chain(e: &opendal::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// Removes the secret key from a message, should it ever appear there.
pub(super) fn scrub(msg: &str) -> String {
    match std::env::var("AWS_SECRET_ACCESS_KEY") {
        Ok(sk) if sk.len() >= 4 => msg.replace(&sk, "<redacted>"),
        _ => msg.to_string(),
    }
}
