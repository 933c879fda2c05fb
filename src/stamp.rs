//! Snapshot stamps: UTC `YYYYMMDDTHHMMSSZ`, with a `-N` suffix (N >= 2) when
//! a second snapshot lands in the same second. Parsing is strict: a stamp is
//! the only user input that becomes a path, so anything else is refused
//! before it touches the filesystem.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use std::cmp::Ordering;
use std::fmt;

use crate::error::{Error, Result};

const FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A parsed snapshot stamp.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    time: DateTime<Utc>,
    seq: u32,
}

impl Stamp {
    /// The stamp for `time` (sub-second precision dropped) with sequence 1.
    pub fn at(time: DateTime<Utc>) -> Stamp {
        let secs = time.timestamp();
        let time = Utc.timestamp_opt(secs, 0).single().unwrap_or(time);
        Stamp { time, seq: 1 }
    }

    /// The same second, with sequence `seq` (1 means no suffix).
    pub fn with_seq(&self, seq: u32) -> Stamp {
        Stamp {
            time: self.time,
            seq: seq.max(1),
        }
    }

    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }

    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Parses a stamp, refusing anything that is not exactly the format.
    pub fn parse(s: &str) -> Result<Stamp> {
        let bad = |reason: &str| Error::InvalidStamp {
            stamp: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if !s.is_ascii() || s.contains('/') || s.contains('\\') || s.contains("..") {
            return Err(bad("not a stamp (path characters are not allowed)"));
        }
        let (base, seq) = match s.split_once('-') {
            Some((base, n)) => {
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
                    return Err(bad("the -N suffix must be a number >= 2"));
                }
                let seq: u32 = n.parse().map_err(|_| bad("suffix too large"))?;
                if seq < 2 {
                    return Err(bad("the -N suffix must be a number >= 2"));
                }
                (base, seq)
            }
            None => (s, 1),
        };
        if base.len() != 16 {
            return Err(bad("expected YYYYMMDDTHHMMSSZ"));
        }
        let naive = NaiveDateTime::parse_from_str(base, FORMAT)
            .map_err(|e| bad(&format!("expected YYYYMMDDTHHMMSSZ ({e})")))?;
        Ok(Stamp {
            time: Utc.from_utc_datetime(&naive),
            seq,
        })
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.time.format(FORMAT))?;
        if self.seq > 1 {
            write!(f, "-{}", self.seq)?;
        }
        Ok(())
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "20260411T120000Z",
            "20260411T120000Z-2",
            "19991231T235959Z-17",
        ] {
            assert_eq!(Stamp::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "../x",
            "x",
            "20260411T120000",
            "20260411T120000Z-1",
            "20260411T120000Z-",
            "20260411T120000Z-02",
            "20261311T120000Z",
            "20260411T120000Z/..",
            "20260411t120000z",
            " 20260411T120000Z",
        ] {
            let err = Stamp::parse(s).unwrap_err();
            assert_eq!(err.code(), "invalid_stamp", "{s:?}");
        }
    }

    #[test]
    fn orders_by_time_then_sequence() {
        let a = Stamp::parse("20260411T120000Z").unwrap();
        let b = Stamp::parse("20260411T120000Z-2").unwrap();
        let c = Stamp::parse("20260411T120001Z").unwrap();
        assert!(a < b && b < c);
    }
}
