//! The binary's log on stderr, for every command: tracing events of the
//! library (a lock that could not be refreshed, a damaged cache entry, an S3
//! retry) and the CLI's own messages (the error that ended a command, a
//! wait for the store lock). Stdout only ever holds the one JSON document.
//!
//! `--log-format text` (default): `serve` writes timestamped lines (its
//! request log); other commands write `atosnap: warning: ...` lines.
//! `--log-format json`: one JSON object per line (`timestamp`, `level`,
//! `target`, `message` and the event's fields), for a log collector.
//!
//! Level: `ATOSNAP_LOG` (an env-filter directive such as `info` or
//! `atosnap=debug`) wins. Otherwise `serve` logs `info` (with `--quiet`:
//! warnings, plus the start and stop lines, which name the bound address),
//! and other commands log warnings and errors. `--quiet` silences progress
//! and info lines, never warnings: a warning asks the operator to act, and
//! `ATOSNAP_LOG=error` is there for whoever wants them gone.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the stderr log. `serve` says whether the command is `serve`
/// (whose text log keeps timestamps and logs `info` by default).
pub fn init(format: LogFormat, serve: bool, quiet: bool) {
    let default = match (serve, quiet) {
        (true, false) => "info",
        (true, true) => "warn,atosnap::serve::lifecycle=info",
        (false, _) => "warn",
    };
    let filter = EnvFilter::try_from_env("ATOSNAP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing::subscriber::set_global_default(subscriber(
        format,
        serve,
        filter,
        std::io::stderr,
        ansi,
    ));
}

/// The subscriber `init` installs, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    serve: bool,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    match (format, serve) {
        (LogFormat::Json, _) => Box::new(builder.with_ansi(false).event_format(JsonLines).finish()),
        (LogFormat::Text, true) => Box::new(builder.with_ansi(ansi).finish()),
        (LogFormat::Text, false) => Box::new(builder.with_ansi(false).event_format(Plain).finish()),
    }
}

/// An event's fields: the message and the structured ones.
#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Fields {
    fn of(event: &Event<'_>) -> Fields {
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields
    }

    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.rest.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
}

/// One JSON object per line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let fields = Fields::of(event);
        let mut doc = serde_json::Map::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        doc.insert("timestamp".into(), now.into());
        doc.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        doc.insert("target".into(), meta.target().into());
        doc.insert("message".into(), fields.message.into());
        for (k, v) in fields.rest {
            doc.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", serde_json::Value::Object(doc))
    }
}

/// `atosnap: warning: <message> (field=value ...)`, as the CLI has always
/// written its messages.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let fields = Fields::of(event);
        let label = match *event.metadata().level() {
            Level::WARN => "warning: ",
            _ => "",
        };
        write!(writer, "atosnap: {label}{}", fields.message)?;
        if !fields.rest.is_empty() {
            let rest: Vec<String> = fields
                .rest
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            write!(writer, " ({})", rest.join(", "))?;
        }
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atosnap::store::cache::ObjectCache;
    use std::sync::{Arc, Mutex};

    /// What a command logs while reading a damaged cache entry.
    fn log_of_damaged_cache_read(format: LogFormat) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let writer = move || Capture(sink.clone());
        let sub = subscriber(format, false, EnvFilter::new("warn"), writer, false);
        let dir = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(dir.path().to_path_buf());
        cache.put("packidx/ab/x", b"index bytes");
        let entry = dir.path().join("packidx/ab/x");
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&entry, bytes).unwrap();
        tracing::subscriber::with_default(sub, || assert_eq!(cache.get("packidx/ab/x"), None));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_damaged_cache_entry_is_logged_as_a_warning_line() {
        let text = log_of_damaged_cache_read(LogFormat::Text);
        assert!(
            text.starts_with("atosnap: warning: cache entry ") && text.contains("is damaged"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1, "{text}");

        let json = log_of_damaged_cache_read(LogFormat::Json);
        let lines: Vec<&str> = json.lines().collect();
        assert_eq!(lines.len(), 1, "{json}");
        let doc: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(doc["level"], "warn", "{doc}");
        assert_eq!(doc["target"], "atosnap::store::cache", "{doc}");
        assert!(
            doc["message"].as_str().unwrap().contains("is damaged"),
            "{doc}"
        );
        assert!(doc["timestamp"].as_str().is_some(), "{doc}");
    }

    #[test]
    fn structured_fields_are_kept() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let sub = subscriber(
            LogFormat::Json,
            true,
            EnvFilter::new("info"),
            move || Capture(sink.clone()),
            false,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::info!(status = 200u64, path = "/healthz", ok = true, "request")
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let doc: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            (&doc["message"], &doc["status"], &doc["path"], &doc["ok"]),
            (
                &serde_json::json!("request"),
                &serde_json::json!(200),
                &serde_json::json!("/healthz"),
                &serde_json::json!(true)
            )
        );
    }
}
