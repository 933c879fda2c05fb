//! Writing a restored file straight to disk (`O_DIRECT`) from a writer
//! thread, for the large files a restore writes whole and nothing reads
//! back soon (Chroma's bulk files).
//!
//! Why: through the page cache every byte is copied into a page the kernel
//! must first find. On a VM that hands free memory back to its host each
//! such page is a fault the host serves: the kernel's copy was 27 % of a
//! full restore's CPU (`copy_folio_from_iter_atomic`), where written
//! behind ([`crate::os::WriteBehind`]) the rayon thread also waited for
//! each window to reach the disk. Here the disk reads the bytes from a few
//! buffers of ours that are used again and again, and the waiting happens
//! on a thread of its own while both cores rebuild the next pieces.
//!
//! Only whole 4 KiB blocks go direct: a piece that starts or ends off a
//! block boundary is written through the page cache, as is everything when
//! the file system refuses `O_DIRECT` (tmpfs). A block is never written both
//! ways: a piece that ends off a boundary makes the next one start off one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{Scope, ScopedJoinHandle};

/// The block size direct writes are aligned to (offset, length, memory).
pub const BLOCK: usize = 4096;
/// Bytes per buffer: a piece of [`super::PIECE_BYTES`] plus the chunk
/// that ends it (pieces of 4 KiB chunks; a larger piece goes through the
/// page cache).
const BUF_BYTES: usize = super::PIECE_BYTES as usize + 64 * 1024;
/// Files smaller than this are written through the page cache: a thread
/// of their own would cost more than it saves.
pub const MIN_FILE: u64 = 16 << 20;

/// A piece's buffer: block-aligned, from the pool and back in the pool
/// when dropped (written, or given up on an error); or, for a piece
/// larger than [`BUF_BYTES`] (chunks cut by content can make one), a
/// buffer of its own.
pub struct PieceBuf {
    mem: Vec<u8>,
    start: usize,
    /// The pool it goes back to (None: its own).
    pool: Option<&'static Pool>,
}

impl PieceBuf {
    /// The first `len` bytes (at most what it was taken for).
    pub fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.mem[self.start..self.start + len]
    }

    fn slice(&self, len: usize) -> &[u8] {
        &self.mem[self.start..self.start + len]
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool {
            pool.put(std::mem::take(&mut self.mem));
        }
    }
}

/// Buffers made on first use, kept, handed out one at a time: a taker
/// waits while all are in use, until a writer thread drops one it wrote.
struct Pool {
    /// Buffers free, and how many were made.
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    returned: Condvar,
    limit: usize,
}

/// The process's pool: one buffer per rayon thread filling one, and two
/// on their way to the disk.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads() + 2))
}

impl Pool {
    fn new(limit: usize) -> Pool {
        Pool {
            free: Mutex::new((Vec::new(), 0)),
            returned: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn take(&'static self) -> PieceBuf {
        let mut state = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mem = loop {
            if let Some(mem) = state.0.pop() {
                break mem;
            }
            if state.1 < self.limit {
                state.1 += 1;
                break vec![0u8; BUF_BYTES + BLOCK];
            }
            state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
        };
        let start = mem.as_ptr().align_offset(BLOCK).min(BLOCK);
        PieceBuf {
            mem,
            start,
            pool: Some(self),
        }
    }

    fn put(&self, mem: Vec<u8>) {
        let mut state = self.free.lock().unwrap_or_else(|p| p.into_inner());
        state.0.push(mem);
        self.returned.notify_one();
    }
}

/// Whether a piece of `len` bytes at `offset` is whole blocks.
fn aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(BLOCK as u64) && len.is_multiple_of(BLOCK) && len > 0 && len <= BUF_BYTES
}

/// A buffer for a piece of `len` bytes: from the process's pool (waiting
/// while all are in use; a thread holds one at a time, and the writer
/// threads give theirs back as they write), or its own when larger.
pub fn take_buffer(len: usize) -> PieceBuf {
    if len <= BUF_BYTES {
        return pool().take();
    }
    PieceBuf {
        mem: vec![0u8; len],
        start: 0,
        pool: None,
    }
}

/// Whether `buf` can go direct for `len` bytes at `offset`.
pub fn can_go_direct(buf: &PieceBuf, offset: u64, len: usize) -> bool {
    buf.pool.is_some() && aligned(offset, len)
}

/// One write for the writer thread.
struct Write {
    buf: PieceBuf,
    len: usize,
    offset: u64,
}

/// The writer side of a file written direct: pieces are handed over with
/// [`DirectWriter::submit`]; [`DirectWriter::finish`] waits until every
/// one is written and says how it went.
pub struct DirectWriter<'s> {
    tx: mpsc::Sender<Write>,
    /// Set by the thread at its first error: later pieces are not queued.
    failed: Arc<AtomicBool>,
    thread: ScopedJoinHandle<'s, std::io::Result<()>>,
}

impl<'s> DirectWriter<'s> {
    /// Opens `out` a second time with `O_DIRECT` (through `/proc/self/fd`,
    /// so the same file whatever its name) and starts its writer thread in
    /// `scope`. None when the file system refuses `O_DIRECT`: the caller
    /// writes through the page cache.
    pub fn start<'e>(scope: &'s Scope<'s, 'e>, out: &'e File) -> Option<DirectWriter<'s>> {
        let direct = crate::os::reopen_direct(out)?;
        Some(DirectWriter::with(scope, direct, out))
    }

    /// [`DirectWriter::start`] with the direct descriptor given.
    fn with<'e>(scope: &'s Scope<'s, 'e>, direct: File, out: &'e File) -> DirectWriter<'s> {
        let (tx, rx) = mpsc::channel::<Write>();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = scope.spawn(move || write_all(&direct, out, rx, &flag));
        DirectWriter { tx, failed, thread }
    }

    /// Hands over the first `len` bytes of `buf` for `offset` (both
    /// [`aligned`]). False once a write failed: the caller stops, and
    /// [`DirectWriter::finish`] says why.
    pub fn submit(&self, buf: PieceBuf, len: usize, offset: u64) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return false;
        }
        self.tx.send(Write { buf, len, offset }).is_ok()
    }

    /// Waits until every piece handed over is written; the first error.
    pub fn finish(self) -> std::io::Result<()> {
        drop(self.tx);
        self.thread.join().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the restore's writer thread panicked",
            ))
        })
    }
}

/// The writer thread: each piece written at its offset, its buffer back to
/// the pool. A write `O_DIRECT` refuses (EINVAL: an alignment this file
/// system does not take) is made through `buffered` instead, as are all
/// that follow. At the first other error the rest are only given back.
fn write_all(
    direct: &File,
    buffered: &File,
    rx: mpsc::Receiver<Write>,
    failed: &AtomicBool,
) -> std::io::Result<()> {
    let mut through_cache = false;
    let mut first_error = None;
    for w in rx {
        if first_error.is_none() {
            let bytes = w.buf.slice(w.len);
            let mut result = match through_cache {
                false => direct.write_all_at(bytes, w.offset),
                true => buffered.write_all_at(bytes, w.offset),
            };
            if !through_cache && matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
            {
                through_cache = true;
                result = buffered.write_all_at(bytes, w.offset);
            }
            if let Err(e) = result {
                failed.store(true, Ordering::Relaxed);
                first_error = Some(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 12) as u8)
            .collect()
    }

    #[test]
    fn whole_blocks_go_direct_and_the_rest_through_the_cache_into_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let out = std::fs::File::create(&path).unwrap();
        // Two aligned pieces, then a tail off the block boundary.
        let (a, b, tail) = (BLOCK * 300, BLOCK * 17, 1234);
        let want = pattern(a + b + tail, 7);
        std::thread::scope(|scope| {
            let writer = DirectWriter::start(scope, &out);
            assert_eq!(writer.is_some(), crate::os::reopen_direct(&out).is_some());
            for (at, len) in [(0, a), (a, b), (a + b, tail)] {
                let mut buf = take_buffer(len);
                buf.slice_mut(len).copy_from_slice(&want[at..at + len]);
                match &writer {
                    Some(w) if can_go_direct(&buf, at as u64, len) => {
                        assert!(w.submit(buf, len, at as u64));
                    }
                    _ => out.write_all_at(buf.slice(len), at as u64).unwrap(),
                }
            }
            if let Some(w) = writer {
                w.finish().unwrap();
            }
        });
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn pieces_off_the_block_grid_or_too_large_never_go_direct() {
        let pooled = take_buffer(BLOCK);
        assert!(can_go_direct(&pooled, 0, BLOCK));
        assert!(can_go_direct(&pooled, BLOCK as u64 * 9, BLOCK * 3));
        assert!(!can_go_direct(&pooled, 512, BLOCK));
        assert!(!can_go_direct(&pooled, 0, BLOCK + 1));
        assert!(!can_go_direct(&pooled, 0, 0));
        let own = take_buffer(BUF_BYTES + BLOCK);
        assert!(!can_go_direct(&own, 0, BUF_BYTES + BLOCK));
        let mut pooled = pooled;
        assert_eq!(
            pooled.slice_mut(BLOCK).as_ptr().align_offset(BLOCK),
            0,
            "a pooled buffer is block-aligned"
        );
    }

    #[test]
    fn a_write_that_fails_stops_the_rest_and_is_reported_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let out = std::fs::File::create(&path).unwrap();
        // A descriptor open only for reading: every write fails (EBADF).
        let read_only = std::fs::File::open(&path).unwrap();
        let err = std::thread::scope(|scope| {
            let w = DirectWriter::with(scope, read_only, &out);
            let mut refused = false;
            for k in 0..50u64 {
                let mut buf = take_buffer(BLOCK);
                buf.slice_mut(BLOCK).fill(1);
                if !w.submit(buf, BLOCK, k * BLOCK as u64) {
                    refused = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            assert!(
                refused,
                "pieces were still taken after the first write failed"
            );
            w.finish().unwrap_err()
        });
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_taker_waits_for_a_buffer_given_back_and_never_gets_more_than_the_limit() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(2)));
        let a = pool.take();
        let b = pool.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let c = pool.take();
            tx.send(c.mem.len()).unwrap();
        });
        let waited = rx.recv_timeout(std::time::Duration::from_millis(100));
        assert!(waited.is_err(), "a third buffer was made past the limit");
        drop(a);
        let got = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(got, BUF_BYTES + BLOCK);
        drop(b);
        assert_eq!(pool.free.lock().unwrap().1, 2, "buffers made");
    }
}
