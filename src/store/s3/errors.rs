//! S3 failures as `io::Error`s: OpenDAL's kinds mapped onto `io::ErrorKind`
//! and onto the [`BackendErrorKind`] callers ask (the one place that
//! classifies S3 errors), with credentials scrubbed from the messages.

use opendal::ErrorKind as OdKind;
use std::io;

use crate::store::backend::{tagged, BackendErrorKind};

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
        tagged(kind, backend_kind(&e, kind), msg)
    }

    /// Maps an `io::Error` met while streaming object `name`: an OpenDAL
    /// error the stream carried is mapped as [`Names::err`] maps it (a
    /// vanished object stays `NotFound`, a cut connection transient);
    /// anything else (a whole read refused as too large) keeps its kind and
    /// gets the object's name, as every S3 error message has it.
    pub(super) fn stream_err(&self, name: &str, e: io::Error) -> io::Error {
        let (kind, text) = (e.kind(), e.to_string());
        match e
            .into_inner()
            .map(|inner| inner.downcast::<opendal::Error>())
        {
            Some(Ok(od)) => self.err(name, *od),
            _ => io::Error::new(kind, format!("{}: {text}", self.display(name))),
        }
    }
}

/// What an OpenDAL error means to the store's callers: not there, worth
/// another try (OpenDAL's own `is_temporary`, throttling, an endpoint that
/// did not answer), or final.
fn backend_kind(e: &opendal::Error, io_kind: io::ErrorKind) -> BackendErrorKind {
    match e.kind() {
        _ if io_kind == io::ErrorKind::NotFound => BackendErrorKind::NotFound,
        OdKind::RateLimited => BackendErrorKind::Transient,
        _ if e.is_temporary() => BackendErrorKind::Transient,
        _ => BackendErrorKind::from_io(io_kind),
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

#[cfg(test)]
mod tests {
    use super::*;
    use opendal::Error as OdError;

    fn names() -> Names {
        Names {
            url: "s3://b/p".into(),
            bucket: "b".into(),
            endpoint: "http://127.0.0.1:1".into(),
        }
    }

    #[test]
    fn opendal_errors_say_not_found_transient_or_permanent() {
        use io::ErrorKind as Io;
        use BackendErrorKind::*;
        let e = OdError::new;
        #[rustfmt::skip]
        let cases = [
            (e(OdKind::NotFound, "no such key"), Io::NotFound, NotFound),
            (e(OdKind::ConfigInvalid, "NoSuchBucket"), Io::NotFound, NotFound),
            (e(OdKind::PermissionDenied, "403"), Io::PermissionDenied, Permanent),
            (e(OdKind::RateLimited, "slow down"), Io::Other, Transient),
            // OpenDAL's own judgement: a temporary failure (a 503) is worth
            // another try; the same failure marked persistent is not.
            (e(OdKind::Unexpected, "503").set_temporary(), Io::Other, Transient),
            (e(OdKind::Unexpected, "400").set_persistent(), Io::Other, Permanent),
            (e(OdKind::Unexpected, "operation timed out"), Io::TimedOut, Transient),
            (e(OdKind::Unexpected, "connect: refused"), Io::ConnectionRefused, Transient),
            (e(OdKind::ConditionNotMatch, "412"), Io::AlreadyExists, Permanent),
        ];
        for (od, io_kind, kind) in cases {
            let what = od.to_string();
            let err = names().err("objects/ab/x.pack", od);
            assert_eq!(
                (err.kind(), BackendErrorKind::of(&err)),
                (io_kind, kind),
                "{what}"
            );
        }
    }

    /// A stream's errors: the OpenDAL error inside is classed as a
    /// request's would be; another keeps its kind and gets the name.
    #[test]
    fn stream_errors_are_mapped_and_named() {
        let carried = |od: OdError| io::Error::other(od);
        let gone = names().stream_err("x", carried(OdError::new(OdKind::NotFound, "gone")));
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert_eq!(BackendErrorKind::of(&gone), BackendErrorKind::NotFound);
        assert_eq!(gone.to_string(), "s3://b/p/x: not found");
        let cut = OdError::new(OdKind::Unexpected, "connection reset").set_temporary();
        let cut = names().stream_err("x", carried(cut));
        assert_eq!(BackendErrorKind::of(&cut), BackendErrorKind::Transient);
        let big = io::Error::new(io::ErrorKind::InvalidData, "it is 9 bytes, more");
        let big = names().stream_err("manifest.bin", big);
        assert_eq!(big.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            big.to_string(),
            "s3://b/p/manifest.bin: it is 9 bytes, more"
        );
    }

    /// The message and the io kind are what they were before the kind was
    /// added: `Error::io` and the JSON output read them.
    #[test]
    fn the_message_is_unchanged() {
        let io = names().err(
            "objects/ab/x.pack",
            OdError::new(OdKind::NotFound, "no such key"),
        );
        assert_eq!(io.to_string(), "s3://b/p/objects/ab/x.pack: not found");
    }
}
