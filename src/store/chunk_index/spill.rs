//! `SpillSorter`: the external sort of §1.5, used to make a segment from
//! records in any order (a refresh, a compaction; later gc's mark and
//! verify). Items are buffered up to a memory budget; each full buffer is
//! sorted, deduplicated and written as a run to a 0600 temp file; the runs
//! are then merged k-way into one sorted stream.
//!
//! Memory: the budget, plus one 64 KiB buffer and one item per run while
//! merging. More than [`MAX_FAN_IN`] runs are first merged into one run, so
//! the open files (and the merge buffers) stay bounded too.
//!
//! Duplicates (equal [`Spillable::Key`]) become one item: the one pushed
//! first, which [`Spillable::absorb`]s the later ones (by default it drops
//! them; verify's mark adds up their counts). The sort is stable and the
//! merge takes equal keys from the earlier run first.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::segment::IO_BUF;
use super::{IndexError, IndexRecord, TempFile, RECORD_LEN};
use crate::id::Id;
use crate::store::backend;

/// Runs merged at once; beyond this they are merged into one run first.
pub const MAX_FAN_IN: usize = 64;

/// A fixed-size item with a sort key.
pub trait Spillable: Sized {
    /// Encoded bytes of one item.
    const LEN: usize;
    type Key: Ord;
    fn key(&self) -> Self::Key;
    /// Writes exactly `LEN` bytes.
    fn encode(&self, out: &mut [u8]);
    /// Reads exactly `LEN` bytes.
    fn decode(b: &[u8]) -> Self;
    /// Takes in `later`, an item of the same key pushed after this one,
    /// before it is dropped: nothing by default (the first item stands).
    fn absorb(&mut self, _later: &Self) {}
    /// Whether which of the items of one key is kept, or absorbs the
    /// others, makes no difference (their absorbing adds up counts): each
    /// run is then sorted in place, without the stable sort's scratch
    /// (the standard library's is as large as the buffer, up to 8 MB).
    const ANY_FIRST: bool = false;
}

impl Spillable for IndexRecord {
    const LEN: usize = RECORD_LEN;
    type Key = (Id, u32);

    fn key(&self) -> (Id, u32) {
        IndexRecord::key(self)
    }

    fn encode(&self, out: &mut [u8]) {
        let mut b = [0u8; RECORD_LEN];
        IndexRecord::encode(self, &mut b);
        out.copy_from_slice(&b);
    }

    fn decode(b: &[u8]) -> IndexRecord {
        let mut a = [0u8; RECORD_LEN];
        a.copy_from_slice(b);
        IndexRecord::decode(&a)
    }
}

/// A run file, removed when dropped (the merge opens it first).
type Run = TempFile;

pub struct SpillSorter<T: Spillable> {
    dir: PathBuf,
    cap: usize,
    buf: Vec<T>,
    runs: Vec<Run>,
}

impl<T: Spillable> SpillSorter<T> {
    /// Spills runs into `dir` (which must exist), the buffer holding two
    /// thirds of `budget` bytes (at least one item per run). The buffer is
    /// reserved once and reused: it never grows by doubling past the
    /// budget. A stable sort (not [`Spillable::ANY_FIRST`]) takes scratch
    /// as large as the buffer while a run is sorted (the standard
    /// library's, up to 8 MB), so such a sorter peaks at about 4/3 of
    /// `budget`.
    pub fn new(dir: &Path, budget: usize) -> SpillSorter<T> {
        let item = std::mem::size_of::<T>().max(1);
        let cap = (budget / item * 2 / 3).max(1);
        SpillSorter {
            dir: dir.to_path_buf(),
            cap,
            buf: Vec::with_capacity(cap),
            runs: Vec::new(),
        }
    }

    /// Runs written so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    pub fn push(&mut self, item: T) -> Result<(), IndexError> {
        if self.buf.len() >= self.cap {
            self.spill()?;
        }
        self.buf.push(item);
        Ok(())
    }

    /// The sorted, deduplicated stream of everything pushed.
    pub fn finish(mut self) -> Result<Merged<T>, IndexError> {
        if self.runs.is_empty() {
            sort_dedup(&mut self.buf);
            let items = std::mem::take(&mut self.buf).into_iter();
            return Ok(Merged {
                source: Source::Memory(items),
            });
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        let runs = std::mem::take(&mut self.runs);
        Merger::open(runs).map(|m| Merged {
            source: Source::Runs(m),
        })
    }

    fn spill(&mut self) -> Result<(), IndexError> {
        sort_dedup(&mut self.buf);
        let run = write_run(&self.dir, self.buf.drain(..).map(Ok))?;
        self.runs.push(run);
        if self.runs.len() >= MAX_FAN_IN {
            let runs = std::mem::take(&mut self.runs);
            let merged = write_run(&self.dir, Merger::<T>::open(runs)?)?;
            self.runs.push(merged);
        }
        Ok(())
    }
}

fn sort_dedup<T: Spillable>(v: &mut Vec<T>) {
    if T::ANY_FIRST {
        v.sort_unstable_by_key(|a| a.key());
    } else {
        v.sort_by_key(|a| a.key());
    }
    v.dedup_by(|later, first| {
        let same = later.key() == first.key();
        if same {
            first.absorb(later);
        }
        same
    });
}

fn write_run<T: Spillable>(
    dir: &Path,
    items: impl Iterator<Item = Result<T, IndexError>>,
) -> Result<Run, IndexError> {
    let run = Run {
        path: backend::temp_path_in(dir, "run"),
    };
    let file =
        backend::create_private_file(&run.path).map_err(IndexError::io("create", &run.path))?;
    let mut out = BufWriter::with_capacity(IO_BUF, file);
    let mut b = vec![0u8; T::LEN];
    for item in items {
        item?.encode(&mut b);
        out.write_all(&b)
            .map_err(IndexError::io("write", &run.path))?;
    }
    out.flush().map_err(IndexError::io("write", &run.path))?;
    Ok(run)
}

/// One run being read back.
struct RunReader {
    input: BufReader<File>,
    _run: Run,
}

impl RunReader {
    fn next<T: Spillable>(&mut self, b: &mut [u8]) -> Result<Option<T>, IndexError> {
        match self.input.read_exact(b) {
            Ok(()) => Ok(Some(T::decode(b))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(IndexError::io("read", &self._run.path)(e)),
        }
    }
}

/// The head of one run in the heap: smallest key first, then earliest run.
struct Head<T: Spillable> {
    item: T,
    run: usize,
}

impl<T: Spillable> Head<T> {
    fn order(&self, o: &Self) -> Ordering {
        self.item
            .key()
            .cmp(&o.item.key())
            .then(self.run.cmp(&o.run))
    }
}

impl<T: Spillable> PartialEq for Head<T> {
    fn eq(&self, o: &Self) -> bool {
        self.order(o) == Ordering::Equal
    }
}
impl<T: Spillable> Eq for Head<T> {}
impl<T: Spillable> PartialOrd for Head<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T: Spillable> Ord for Head<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        self.order(o)
    }
}

/// The k-way merge of runs, later duplicates absorbed into the first.
struct Merger<T: Spillable> {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Reverse<Head<T>>>,
    /// The smallest key's first item, held until the heap's smallest is
    /// another key (the next runs' duplicates are absorbed into it).
    pending: Option<T>,
    buf: Vec<u8>,
}

impl<T: Spillable> Merger<T> {
    fn open(runs: Vec<Run>) -> Result<Merger<T>, IndexError> {
        let mut m = Merger {
            readers: Vec::with_capacity(runs.len()),
            heap: BinaryHeap::with_capacity(runs.len()),
            pending: None,
            buf: vec![0u8; T::LEN],
        };
        for run in runs {
            let file = File::open(&run.path).map_err(IndexError::io("open", &run.path))?;
            m.readers.push(RunReader {
                input: BufReader::with_capacity(IO_BUF, file),
                _run: run,
            });
            m.refill(m.readers.len() - 1)?;
        }
        Ok(m)
    }

    fn refill(&mut self, run: usize) -> Result<(), IndexError> {
        if let Some(item) = self.readers[run].next(&mut self.buf)? {
            self.heap.push(Reverse(Head { item, run }));
        }
        Ok(())
    }

    fn next_item(&mut self) -> Result<Option<T>, IndexError> {
        while let Some(Reverse(head)) = self.heap.pop() {
            self.refill(head.run)?;
            match &mut self.pending {
                Some(first) if first.key() == head.item.key() => first.absorb(&head.item),
                _ => {
                    if let Some(done) = self.pending.replace(head.item) {
                        return Ok(Some(done));
                    }
                }
            }
        }
        Ok(self.pending.take())
    }
}

impl<T: Spillable> Iterator for Merger<T> {
    type Item = Result<T, IndexError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}

enum Source<T: Spillable> {
    Memory(std::vec::IntoIter<T>),
    Runs(Merger<T>),
}

/// The output of [`SpillSorter::finish`]: items in key order, each key
/// once. Its run files are removed when it is dropped.
pub struct Merged<T: Spillable> {
    source: Source<T>,
}

impl<T: Spillable> Iterator for Merged<T> {
    type Item = Result<T, IndexError>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Memory(items) => items.next().map(Ok),
            Source::Runs(m) => m.next(),
        }
    }
}
