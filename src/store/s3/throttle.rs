//! Bandwidth limits of a bucket's transfers (`--limit-upload` /
//! `--limit-download`, KiB/s): one pacer per direction, shared by every
//! thread of the backend (the background uploads included).
//!
//! Why not OpenDAL's `ThrottleLayer`: it throttles writes only, and lets a
//! whole write (an 8 MiB part) through at once as long as the burst
//! allows it, so a command sending a few MiB would not be slowed at all.
//! Here each transfer reserves its bytes in a schedule: it waits until
//! the bytes reserved before it have had their time at the limit, and
//! pushes the schedule on by its own. The rate is an average: a part is
//! still sent as fast as the network goes, but the next one waits.
//! Objects below [`SMALL`] (lock objects, markers, claims) are counted but
//! never wait, so a slow limit cannot starve a lock's heartbeat into
//! expiry.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// Transfers below this many bytes never wait (they are still counted).
pub const SMALL: u64 = 64 * 1024;
/// Size of the pieces a paced upload is fed to the writer in.
pub(super) const PIECE: usize = 256 * 1024;

/// The limits a caller asks for, in KiB/s (`None`: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferLimits {
    pub upload_kib: Option<u32>,
    pub download_kib: Option<u32>,
}

impl TransferLimits {
    pub fn is_set(&self) -> bool {
        self.upload_kib.is_some() || self.download_kib.is_some()
    }
}

/// Paces one direction at `bytes_per_sec` on average.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: f64,
    /// When the bytes reserved so far will have had their time.
    free_at: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(kib_per_sec: u32) -> Pacer {
        Pacer {
            bytes_per_sec: kib_per_sec.max(1) as f64 * 1024.0,
            free_at: Mutex::new(None),
        }
    }

    /// Reserves `n` bytes; returns how long the caller must wait before
    /// sending them: the schedule and this transfer's own share, so that
    /// the bytes sent so far never run ahead of the limit. A small object
    /// (`may_skip`, below [`SMALL`]) is counted but does not wait.
    fn reserve(&self, n: u64, now: Instant, may_skip: bool) -> Duration {
        let mut free_at = lock(&self.free_at);
        let start = free_at.map_or(now, |t| t.max(now));
        let end = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        *free_at = Some(end);
        if may_skip && n < SMALL {
            return Duration::ZERO;
        }
        end.saturating_duration_since(now)
    }

    /// Blocks the calling thread until `n` more bytes of one object may go
    /// (a small object does not wait).
    pub fn take(&self, n: u64) {
        self.wait(self.reserve(n, Instant::now(), true));
    }

    /// As [`Pacer::take`] for a piece of a stream: always paced.
    pub fn take_piece(&self, n: u64) {
        self.wait(self.reserve(n, Instant::now(), false));
    }

    fn wait(&self, wait: Duration) {
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// The pacers of a backend, one per limited direction.
#[derive(Clone, Debug, Default)]
pub struct Pacers {
    pub upload: Option<Arc<Pacer>>,
    pub download: Option<Arc<Pacer>>,
}

impl Pacers {
    pub fn new(limits: TransferLimits) -> Pacers {
        Pacers {
            upload: limits.upload_kib.map(|k| Arc::new(Pacer::new(k))),
            download: limits.download_kib.map(|k| Arc::new(Pacer::new(k))),
        }
    }

    /// Before sending an object of `n` bytes.
    pub fn upload(&self, n: u64) {
        if let Some(p) = &self.upload {
            p.take(n);
        }
    }

    /// Before sending a piece of `n` bytes of a streamed upload.
    pub fn upload_piece(&self, n: u64) {
        if let Some(p) = &self.upload {
            p.take_piece(n);
        }
    }

    /// After receiving `n` bytes (the next download waits for them).
    pub fn download(&self, n: u64) {
        if let Some(p) = &self.download {
            p.take(n);
        }
    }

    /// `reader` with every read counted as a download.
    pub fn reading<R: Read>(&self, reader: R) -> PacedRead<R> {
        PacedRead {
            inner: reader,
            pacer: self.download.clone(),
        }
    }
}

/// A stream whose reads are paced by the download limit.
pub struct PacedRead<R> {
    inner: R,
    pacer: Option<Arc<Pacer>>,
}

impl<R: Read> Read for PacedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = &self.pacer {
            // Small reads of a long stream add up: each is paced.
            p.take_piece(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_the_rate_and_small_ones_never_wait() {
        let p = Pacer::new(1024); // 1 MiB/s
        let t0 = Instant::now();
        // The first MiB waits its own second; the next one the second after.
        assert_eq!(p.reserve(1 << 20, t0, true), Duration::from_secs(1));
        assert_eq!(p.reserve(1 << 20, t0, true), Duration::from_secs(2));
        // A lock object is counted, never held back; a piece of a stream is.
        assert_eq!(p.reserve(300, t0, true), Duration::ZERO);
        assert!(p.reserve(300, t0, false) > Duration::from_secs(2));
        let after = p.reserve(SMALL, t0, true);
        assert!(after > Duration::from_secs(2), "{after:?}");
        // Time that passed is credited: nothing is owed later on.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.reserve(1 << 19, later, true), Duration::from_millis(500));
    }

    #[test]
    fn a_paced_stream_is_held_to_the_rate() {
        let pacers = Pacers::new(TransferLimits {
            upload_kib: None,
            download_kib: Some(1024),
        });
        let data = vec![0u8; 3 << 19]; // 1.5 MiB in 4 KiB reads
        let started = Instant::now();
        let mut r = pacers.reading(io::Cursor::new(data));
        let mut buf = [0u8; 4096];
        while r.read(&mut buf).unwrap() > 0 {}
        assert!(started.elapsed() >= Duration::from_millis(1400));
    }
}
