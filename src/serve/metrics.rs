//! `GET /metrics`: the Prometheus / OpenMetrics text exposition, encoded by
//! prometheus-client (never hand-formatted).
//!
//! Store facts (snapshot count, newest snapshot, store bytes, the last
//! drill, verify and copies) are read from the store and its audit logs at
//! scrape time, so they agree with `list`, include work done by the CLI
//! (timers) and survive a restart. Durations are those of the work this
//! server ran.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `atosnap_store_up` | gauge | 1 when the store opened |
//! | `atosnap_snapshots` | gauge | snapshots listed (unparseable folders excluded) |
//! | `atosnap_unparseable_snapshots` | gauge | folders under `snapshots/` that are not stamps |
//! | `atosnap_last_snapshot_timestamp_seconds` | gauge | `created_at` of the newest snapshot (0: none) |
//! | `atosnap_last_snapshot_age_seconds` | gauge | now minus the above (absent: none) |
//! | `atosnap_store_bytes` | gauge | bytes under `objects/`, `snapshots/` and the audit logs |
//! | `atosnap_last_drill_success` | gauge | 1/0, the newest drill in the drill log (absent: never drilled) |
//! | `atosnap_last_drill_timestamp_seconds` | gauge | when it ran (0: never) |
//! | `atosnap_last_verify_success` | gauge | 1/0, the newest verify in the verify log (absent: never verified) |
//! | `atosnap_last_verify_timestamp_seconds` | gauge | when it ran (0: never) |
//! | `atosnap_copy_last_success_timestamp_seconds{to}` | gauge | the newest successful copy to each destination (copy log) |
//! | `atosnap_{create,verify,drill}_duration_seconds` | histogram | wall time of successful runs |
//! | `atosnap_http_requests_total` | counter | by method, route, status |

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ops::list::ListResult;
use crate::store::audit_log;
use crate::store::names::Log;
use crate::store::{Dir, Store};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

/// What the store says at scrape time.
#[derive(Clone, Debug, Default)]
pub struct StoreFacts {
    pub snapshots: u64,
    pub unparseable: u64,
    /// Unix seconds of the newest snapshot's `created_at`.
    pub last_snapshot: Option<f64>,
    pub store_bytes: u64,
    /// The newest drill: ok, and when (unix seconds, if parseable).
    pub last_drill: Option<(bool, Option<f64>)>,
    /// The newest verify (any scope), likewise.
    pub last_verify: Option<(bool, Option<f64>)>,
    /// Per destination address, when the newest successful copy ran.
    pub copies: Vec<(String, f64)>,
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_seconds(rfc3339: &str) -> Option<f64> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

impl StoreFacts {
    /// Facts from a `list` result plus the store's size.
    pub fn gather(store: &Store, listing: &ListResult) -> Result<StoreFacts> {
        let newest = listing.snapshots.last().map(|e| {
            unix_seconds(&e.created_at)
                .or_else(|| {
                    crate::stamp::Stamp::parse(&e.stamp)
                        .ok()
                        .map(|s| s.time().timestamp() as f64)
                })
                .unwrap_or(0.0)
        });
        let last_drill = listing
            .snapshots
            .iter()
            .filter_map(|e| e.last_drill.as_ref())
            .max_by(|a, b| a.at.cmp(&b.at))
            .map(|d| (d.ok, unix_seconds(&d.at)));
        let last_verify = audit_log::newest_verify(store).map(|v| (v.ok, unix_seconds(&v.at)));
        let copies = audit_log::last_copies(store)
            .into_values()
            .filter_map(|c| unix_seconds(&c.at).map(|t| (c.to, t)))
            .collect();
        Ok(StoreFacts {
            snapshots: listing.snapshots.len() as u64,
            unparseable: listing.unparseable.len() as u64,
            last_snapshot: newest,
            store_bytes: store_bytes(store)?,
            last_drill,
            last_verify,
            copies,
        })
    }
}

/// Bytes the store holds: packs, snapshots and the audit logs (temp files
/// and locks excluded).
pub fn store_bytes(store: &Store) -> Result<u64> {
    let mut total = 0;
    let logs = Log::ALL.map(Dir::Log);
    for dir in [Dir::Packs, Dir::Snapshots].into_iter().chain(logs) {
        let files = store
            .list_dir(dir)
            .map_err(|e| Error::io("list", store.display_dir(dir), e))?;
        total += files.iter().map(|f| f.size).sum::<u64>();
    }
    Ok(total)
}

#[derive(Debug)]
struct Inner {
    create_seconds: Histogram,
    verify_seconds: Histogram,
    drill_seconds: Histogram,
    requests: Family<RequestLabels, Counter>,
    /// Set for the duration of one encoding (under `render`'s lock).
    facts: Mutex<Option<(StoreFacts, DateTime<Utc>)>>,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
    registry: Mutex<Registry>,
}

fn durations() -> Histogram {
    // 0.1 s .. ~55 min.
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let inner = Arc::new(Inner {
            create_seconds: durations(),
            verify_seconds: durations(),
            drill_seconds: durations(),
            requests: Family::default(),
            facts: Mutex::new(None),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(inner.clone()));
        Metrics {
            inner,
            registry: Mutex::new(registry),
        }
    }

    pub fn observe_create(&self, seconds: f64) {
        self.inner.create_seconds.observe(seconds);
    }

    pub fn observe_drill(&self, seconds: f64) {
        self.inner.drill_seconds.observe(seconds);
    }

    pub fn observe_verify(&self, seconds: f64) {
        self.inner.verify_seconds.observe(seconds);
    }

    /// Counts a request. Every label takes a bounded set of values: the
    /// method a client sends is any token it likes (and is counted before
    /// the token check), so one outside the standard ones counts as
    /// `other`, lest anyone reaching the port add series without end.
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ];
        let method = KNOWN.iter().find(|m| **m == method).unwrap_or(&"other");
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// The exposition text; `facts` is None when the store could not be
    /// read (then `atosnap_store_up` is 0 and the store gauges are absent).
    pub fn render(&self, facts: Option<StoreFacts>) -> Result<String> {
        let registry = lock(&self.registry);
        *lock(&self.inner.facts) = facts.map(|f| (f, Utc::now()));
        let mut out = String::new();
        let encoded = prometheus_client::encoding::text::encode(&mut out, &registry);
        *lock(&self.inner.facts) = None;
        encoded.map_err(|e| Error::Encode {
            detail: format!("metrics encoding failed: {e}"),
        })?;
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// `atosnap_copy_last_success_timestamp_seconds{to="..."}`, one sample per
/// destination (the label value escaped by the encoder).
fn copy_gauges(enc: &mut DescriptorEncoder, copies: &[(String, f64)]) -> std::fmt::Result {
    if copies.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(
        "atosnap_copy_last_success_timestamp_seconds",
        "When the newest successful copy to each destination ran, unix seconds",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (to, t) in copies {
        let labels = [("to", to.as_str())];
        ConstGauge::new(*t).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Inner {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let facts = lock(&self.facts).clone();
        gauge(
            &mut enc,
            "atosnap_store_up",
            "1 when the store could be opened and listed",
            if facts.is_some() { 1.0 } else { 0.0 },
        )?;
        if let Some((f, now)) = &facts {
            gauge(
                &mut enc,
                "atosnap_snapshots",
                "Snapshots in the store (as listed)",
                f.snapshots as f64,
            )?;
            gauge(
                &mut enc,
                "atosnap_unparseable_snapshots",
                "Folders under snapshots/ that are not stamps",
                f.unparseable as f64,
            )?;
            gauge(
                &mut enc,
                "atosnap_last_snapshot_timestamp_seconds",
                "Creation time of the newest snapshot, unix seconds (0: no snapshot)",
                f.last_snapshot.unwrap_or(0.0),
            )?;
            if let Some(t) = f.last_snapshot {
                let now = now.timestamp_millis() as f64 / 1000.0;
                gauge(
                    &mut enc,
                    "atosnap_last_snapshot_age_seconds",
                    "Age of the newest snapshot",
                    (now - t).max(0.0),
                )?;
            }
            gauge(
                &mut enc,
                "atosnap_store_bytes",
                "Bytes under objects/, snapshots/ and drills/",
                f.store_bytes as f64,
            )?;
            if let Some((ok, _)) = f.last_drill {
                gauge(
                    &mut enc,
                    "atosnap_last_drill_success",
                    "1 when the newest drill in the drill log passed, 0 when it failed",
                    if ok { 1.0 } else { 0.0 },
                )?;
            }
            gauge(
                &mut enc,
                "atosnap_last_drill_timestamp_seconds",
                "When the newest drill ran, unix seconds (0: never)",
                f.last_drill.and_then(|(_, t)| t).unwrap_or(0.0),
            )?;
            if let Some((ok, _)) = f.last_verify {
                gauge(
                    &mut enc,
                    "atosnap_last_verify_success",
                    "1 when the newest verify in the verify log found the store ok, 0 when not",
                    if ok { 1.0 } else { 0.0 },
                )?;
            }
            gauge(
                &mut enc,
                "atosnap_last_verify_timestamp_seconds",
                "When the newest verify ran, unix seconds (0: never)",
                f.last_verify.and_then(|(_, t)| t).unwrap_or(0.0),
            )?;
            copy_gauges(&mut enc, &f.copies)?;
        }
        for (name, help, h) in [
            (
                "atosnap_create_duration_seconds",
                "Wall time of snapshots taken by this server",
                &self.create_seconds,
            ),
            (
                "atosnap_verify_duration_seconds",
                "Wall time of verifies run by this server",
                &self.verify_seconds,
            ),
            (
                "atosnap_drill_duration_seconds",
                "Wall time of drills run by this server",
                &self.drill_seconds,
            ),
        ] {
            let m = enc.encode_descriptor(name, help, None, h.metric_type())?;
            h.encode(m)?;
        }
        let m = enc.encode_descriptor(
            "atosnap_http_requests",
            "HTTP requests answered, by method, route and status",
            None,
            self.requests.metric_type(),
        )?;
        self.requests.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_store_facts_and_durations() {
        let m = Metrics::new();
        m.observe_create(1.5);
        m.observe_verify(0.2);
        m.count_request("GET", "/healthz", 200);
        let text = m
            .render(Some(StoreFacts {
                snapshots: 3,
                unparseable: 1,
                last_snapshot: Some(1_700_000_000.0),
                store_bytes: 1234,
                last_drill: Some((false, Some(1_700_000_100.0))),
                last_verify: Some((true, Some(1_700_000_200.0))),
                copies: vec![("/mnt/off \"site\"\\x".into(), 1_700_000_300.0)],
            }))
            .unwrap();
        for line in [
            "atosnap_store_up 1",
            "atosnap_snapshots 3",
            "atosnap_unparseable_snapshots 1",
            "atosnap_last_snapshot_timestamp_seconds 1700000000",
            "atosnap_store_bytes 1234",
            "atosnap_last_drill_success 0",
            "atosnap_last_verify_success 1",
            "atosnap_last_verify_timestamp_seconds 1700000200",
            "atosnap_copy_last_success_timestamp_seconds{to=\"/mnt/off \\\"site\\\"\\\\x\"} 1700000300",
            "atosnap_create_duration_seconds_count 1",
            "atosnap_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} missing in\n{text}"
            );
        }
        let down = m.render(None).unwrap();
        assert!(down.contains("atosnap_store_up 0"));
        assert!(!down.contains("atosnap_snapshots "));
    }
}
