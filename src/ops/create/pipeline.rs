//! The read and hash stages of create's pipeline (design §2.1): a file is
//! read, cut and hashed on a thread of its own, a batch ahead of the
//! caller, which dedups and hands the new chunks to the packer (whose
//! encoder threads compress frames, and whose publisher finishes packs).
//! So reading (a `read` syscall per batch, or SQLite's page reader),
//! cutting and hashing overlap with storing, and a few recycled buffers
//! bound the memory: [`BUFFERS`] batches.

use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc;

use crate::chunk::{Batcher, Strategy};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::store::seal::Sealer;

/// Batches in memory at once: one being read and hashed, one being
/// stored, one waiting between them.
const BUFFERS: usize = 3;

/// A batch read, cut and hashed: its bytes, chunk ranges and ids.
struct Hashed {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
    ids: Vec<Id>,
}

/// Reads `reader` (the file `path`) in batches of about `batch` bytes on a
/// reader thread that cuts them by `strategy` and hashes their chunks with
/// `sealer` in parallel, and calls `store` with each batch, its ranges and
/// its ids, in the file's order. Returns the bytes read, or the read error
/// (as `for_each_batch` does); an error from `store` stops the reader and
/// is returned.
pub(super) fn for_each_hashed<R: Read + Send>(
    reader: R,
    path: &Path,
    strategy: Strategy,
    batch: usize,
    sealer: &Sealer,
    mut store: impl FnMut(&[u8], &[Range<usize>], &[Id]) -> Result<()>,
) -> Result<io::Result<u64>> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Hashed>>(BUFFERS - 2);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("create-reader".into())
            .spawn_scoped(scope, move || {
                read_and_hash(reader, strategy, batch, sealer, full_tx, free_rx)
            })
            .map_err(|e| Error::io("start a reader thread for", path, e))?;
        let mut stored = Ok(());
        let mut read_error = None;
        for batch in full_rx.iter() {
            match batch {
                Ok(b) => {
                    stored = store(&b.buf, &b.ranges, &b.ids);
                    if stored.is_err() {
                        break;
                    }
                    // The reader may have stopped: a lost buffer is fine.
                    let _ = free_tx.send(b.buf);
                }
                Err(e) => read_error = Some(e),
            }
        }
        // Unblocks a reader waiting to send a batch or for a buffer.
        drop(full_rx);
        drop(free_tx);
        let total = worker.join().map_err(|_| Error::ReaderPanicked {
            path: path.to_path_buf(),
        })?;
        stored?;
        Ok(match read_error {
            Some(e) => Err(e),
            None => Ok(total),
        })
    })
}

/// The reader thread: fills recycled buffers (at most [`BUFFERS`] are
/// made), cuts and hashes them, and sends them on until the stream ends,
/// fails or the receiver is gone. Returns the bytes read.
fn read_and_hash<R: Read>(
    reader: R,
    strategy: Strategy,
    batch: usize,
    sealer: &Sealer,
    full: mpsc::SyncSender<io::Result<Hashed>>,
    free: mpsc::Receiver<Vec<u8>>,
) -> u64 {
    let mut batcher = Batcher::new(reader, strategy, batch);
    let mut made = 0;
    loop {
        let mut buf = match free.try_recv() {
            Ok(buf) => buf,
            Err(_) if made < BUFFERS => {
                made += 1;
                Vec::with_capacity(batcher.batch_bytes())
            }
            Err(_) => match free.recv() {
                Ok(buf) => buf,
                Err(_) => return batcher.total(),
            },
        };
        let sent = match batcher.next_into(&mut buf) {
            Ok(Some(ranges)) => {
                let ids = sealer.chunk_ids_in(&buf, &ranges);
                full.send(Ok(Hashed { buf, ranges, ids }))
            }
            Ok(None) => return batcher.total(),
            Err(e) => {
                let _ = full.send(Err(e));
                return batcher.total();
            }
        };
        if sent.is_err() {
            return batcher.total();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert_eq, proptest, ProptestConfig};
    use std::time::Duration;

    /// A reader that returns at most `step` bytes a call, and fails at
    /// `fail_at` when given.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        fail_at: Option<usize>,
        pos: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(io::Error::other("the disk went away"));
            }
            let n = out.len().min(self.step).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8
            })
            .collect()
    }

    const CDC: Strategy = Strategy::Cdc {
        min: 256,
        avg: 1024,
        max: 4096,
    };

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the read sizes and however slow the storing stage,
        /// chunks and ids arrive in the file's order, each id the hash of
        /// its chunk, and they make up the file.
        #[test]
        fn pipeline_preserves_order(
            len in 0usize..200_000,
            seed in any::<u64>(),
            step in 1usize..70_000,
            batch in 1usize..30_000,
            fixed in any::<bool>(),
            delays in proptest::collection::vec(0u64..3, 1..8),
        ) {
            let data = data(len, seed);
            let strategy = if fixed { Strategy::Fixed(4096) } else { CDC };
            let sealer = Sealer::Plain;
            let mut out = Vec::new();
            let mut ids = Vec::new();
            let mut n = 0;
            let reader = Trickle { data: &data, step, fail_at: None, pos: 0 };
            let total = for_each_hashed(reader, Path::new("f"), strategy, batch, &sealer, |buf, ranges, batch_ids| {
                std::thread::sleep(Duration::from_millis(delays[n % delays.len()]));
                n += 1;
                for (r, id) in ranges.iter().zip(batch_ids) {
                    out.extend_from_slice(&buf[r.clone()]);
                    ids.push(*id);
                    assert_eq!(*id, sealer.chunk_id(&buf[r.clone()]));
                }
                Ok(())
            }).unwrap().unwrap();
            prop_assert_eq!(total, len as u64);
            prop_assert_eq!(&out, &data);
            let mut expected = Vec::new();
            crate::chunk::for_each_batch(&data[..], strategy, 1 << 20, |buf, ranges| {
                expected.extend(ranges.iter().map(|r| sealer.chunk_id(&buf[r.clone()])));
                Ok(())
            }).unwrap().unwrap();
            prop_assert_eq!(ids, expected);
        }
    }

    #[test]
    fn a_read_error_is_returned_after_the_batches_before_it() {
        let data = data(100_000, 7);
        let reader = Trickle {
            data: &data,
            step: 10_000,
            fail_at: Some(50_000),
            pos: 0,
        };
        let mut seen = 0;
        let outcome = for_each_hashed(
            reader,
            Path::new("f"),
            CDC,
            16_384,
            &Sealer::Plain,
            |_, ranges, _| {
                seen += ranges.len();
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(outcome.unwrap_err().to_string(), "the disk went away");
        assert!(seen > 0);
    }

    #[test]
    fn a_storing_error_stops_the_reader_and_is_returned() {
        let data = data(4 << 20, 9);
        let mut calls = 0;
        let outcome = for_each_hashed(
            &data[..],
            Path::new("f"),
            CDC,
            16_384,
            &Sealer::Plain,
            |_, _, _| {
                calls += 1;
                Err(Error::Interrupted {
                    signal: "SIGINT".into(),
                })
            },
        );
        assert_eq!(outcome.unwrap_err().code(), "interrupted");
        assert_eq!(calls, 1);
    }
}
