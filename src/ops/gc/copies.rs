//! The copies of live chunks: which entry of which pack holds each marked
//! id (a merge-join of every pack's entries, sorted by id on disk, with
//! the mark), and which copy is an id's *home* when it is stored in several
//! packs. Only a home copy is live to gc; choosing one reads it back first
//! ([`Copies::assign_homes`]).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::id::Id;
use crate::ops::mark;
use crate::store::chunk_index::{SpillSorter, Spillable};
use crate::store::{Object, Store};

/// A chunk entry of a pack's layout: the copies of every chunk, sorted by
/// id, to join with the marked stream.
pub(super) struct Copy {
    pub id: Id,
    pub pack: u32,
    pub chunk: u32,
}

impl Spillable for Copy {
    const LEN: usize = 40;
    type Key = (Id, u32, u32);

    fn key(&self) -> (Id, u32, u32) {
        (self.id, self.pack, self.chunk)
    }

    fn encode(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.id.0);
        out[32..36].copy_from_slice(&self.pack.to_le_bytes());
        out[36..40].copy_from_slice(&self.chunk.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Copy {
        let w = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Copy {
            id: <Id as Spillable>::decode(&b[..32]),
            pack: w(32),
            chunk: w(36),
        }
    }
}

/// The live copies of the marked ids, per pack: one flag per chunk entry
/// (a byte, not a 60-byte map entry per live chunk).
pub(super) struct Copies {
    /// `live[pack][chunk]`: the entry holds a live id (any copy).
    pub live: Vec<Vec<bool>>,
    /// `home[pack][chunk]`: the entry is its id's home copy.
    pub home: Vec<Vec<bool>>,
    /// Live ids stored in more than one pack (rare: raced writers, a
    /// killed gc): each with its entries, until [`Copies::assign_homes`]
    /// picks a home.
    contested: Vec<(Id, Vec<(u32, u32)>)>,
    /// Live ids in no pack.
    pub missing: u64,
}

/// What choosing the home copies of contested ids found.
#[derive(Debug, Default)]
pub(super) struct HomeChecks {
    /// Copies that would have been home but did not read back whole.
    pub damaged: u64,
    /// The first [`NAMED`] ids with a damaged copy, named.
    pub warnings: Vec<String>,
}

/// Ids with damaged copies named in warnings (the rest are counted).
const NAMED: usize = 20;

impl Copies {
    /// Each contested id's home is its copy in the first pack of `order`
    /// whose copy reads back and hashes to the id (every entry of that
    /// pack holding it). The home is checked because every other copy
    /// is dead to gc: a pack holding only those would be deleted, and a
    /// damaged home would leave no good copy (the other copies are what
    /// `verify --repair` could have used). When no copy checks out, every
    /// copy stays home and nothing holding one is deleted.
    pub fn assign_homes(&mut self, order: &[usize], check: &CopyCheck<'_>) -> HomeChecks {
        let mut rank = vec![0usize; order.len()];
        for (r, &p) in order.iter().enumerate() {
            rank[p] = r;
        }
        let groups = std::mem::take(&mut self.contested);
        // Each id's packs, best first, and the one being tried.
        let candidates: Vec<Vec<u32>> = groups
            .iter()
            .map(|(_, entries)| {
                let mut packs: Vec<u32> = entries.iter().map(|(p, _)| *p).collect();
                packs.sort_by_key(|p| (rank[*p as usize], *p));
                packs.dedup();
                packs
            })
            .collect();
        let mut tried = vec![0usize; groups.len()];
        let mut settled = vec![false; groups.len()];
        // The damaged copies met, per id: the pack and what is wrong.
        let mut damage: Vec<Vec<(u32, String)>> = vec![Vec::new(); groups.len()];
        loop {
            let pending: Vec<usize> = (0..groups.len())
                .filter(|&g| !settled[g] && tried[g] < candidates[g].len())
                .collect();
            if pending.is_empty() {
                break;
            }
            let probes: Vec<(u32, u32)> = pending
                .iter()
                .map(|&g| {
                    let pack = candidates[g][tried[g]];
                    let entries = &groups[g].1;
                    *entries
                        .iter()
                        .find(|(p, _)| *p == pack)
                        .unwrap_or(&entries[0])
                })
                .collect();
            let mut faults = check.faults(&probes);
            for (&g, probe) in pending.iter().zip(&probes) {
                match faults.remove(probe) {
                    None => settled[g] = true,
                    Some(why) => {
                        damage[g].push((probe.0, why));
                        tried[g] += 1;
                    }
                }
            }
        }
        let mut out = HomeChecks::default();
        for (g, (id, entries)) in groups.iter().enumerate() {
            let home = settled[g].then(|| candidates[g][tried[g]]);
            for &(p, ci) in entries.iter().filter(|(p, _)| home.is_none_or(|h| h == *p)) {
                self.home[p as usize][ci as usize] = true;
            }
            if damage[g].is_empty() {
                continue;
            }
            out.damaged += damage[g].len() as u64;
            let faults = (damage[g].iter())
                .map(|(p, why)| format!("its copy in {} {why}", check.name(*p)))
                .collect::<Vec<_>>()
                .join("; ");
            let warning = match home {
                Some(h) => format!(
                    "chunk {id}: {faults}; the copy in {} is kept instead (run `atosnap verify --repair`)",
                    check.name(h)
                ),
                None => format!(
                    "chunk {id}: none of its {} copies reads back whole ({faults}); gc keeps them all (run `atosnap verify`)",
                    candidates[g].len()
                ),
            };
            out.warnings.push(warning);
        }
        if out.warnings.len() > NAMED {
            let more = out.warnings.len() - NAMED;
            out.warnings.truncate(NAMED);
            out.warnings.push(format!(
                "{more} more chunks stored twice have damaged copies (run `atosnap verify`)"
            ));
        }
        out
    }
}

/// Reads copies back to check them (a pack's index, then each frame
/// holding a copy once).
pub(super) struct CopyCheck<'s> {
    store: &'s Store,
    /// Name and size of each pack, by its number in the plan.
    packs: Vec<(String, u64)>,
}

impl<'s> CopyCheck<'s> {
    pub fn new(store: &'s Store, packs: Vec<(String, u64)>) -> CopyCheck<'s> {
        CopyCheck { store, packs }
    }

    fn name(&self, pack: u32) -> &str {
        &self.packs[pack as usize].0
    }

    /// The copies (pack, chunk entry) that do not read back and hash to
    /// their ids, each with what is wrong.
    fn faults(&self, copies: &[(u32, u32)]) -> BTreeMap<(u32, u32), String> {
        let mut sorted = copies.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut faults = BTreeMap::new();
        for same_pack in sorted.chunk_by(|a, b| a.0 == b.0) {
            let pack = same_pack[0].0;
            let (name, size) = &self.packs[pack as usize];
            let object = Object::Listed(name.clone());
            let layout = match self.store.read_pack_index(&object, *size) {
                Ok(layout) => layout,
                Err(detail) => {
                    for c in same_pack {
                        faults.insert(
                            *c,
                            format!("is in a pack whose index no longer reads ({detail})"),
                        );
                    }
                    continue;
                }
            };
            // Frames by first chunk, to find the one holding an entry.
            let mut frames: Vec<usize> = (0..layout.frames.len()).collect();
            frames.sort_by_key(|&fi| layout.frames[fi].first_chunk);
            let frame_of = |ci: u32| {
                let at = frames.partition_point(|&fi| layout.frames[fi].first_chunk <= ci);
                let fi = *frames.get(at.checked_sub(1)?)?;
                let f = &layout.frames[fi];
                (ci < f.first_chunk + f.n_chunks).then_some(fi)
            };
            let mut by_frame: BTreeMap<Option<usize>, Vec<u32>> = BTreeMap::new();
            for &(_, ci) in same_pack {
                by_frame.entry(frame_of(ci)).or_default().push(ci);
            }
            for (fi, chunks) in by_frame {
                let Some(fi) = fi else {
                    for ci in chunks {
                        faults.insert((pack, ci), "is in no frame of its pack".to_string());
                    }
                    continue;
                };
                let f = &layout.frames[fi];
                let frame = self
                    .store
                    .read_object_range(&object, f.offset as u64, f.stored_len as usize)
                    .map_err(|e| format!("does not read ({e})"))
                    .and_then(|stored| {
                        self.store
                            .decode_frame(&layout, fi, stored)
                            .map_err(|e| format!("does not decode ({e})"))
                    });
                for ci in chunks {
                    let fault = match &frame {
                        Err(why) => Some(why.clone()),
                        Ok(frame) => match frame.chunk((ci - f.first_chunk) as usize) {
                            Some(Ok(_)) => None,
                            _ => Some("does not match its hash".to_string()),
                        },
                    };
                    if let Some(why) = fault {
                        faults.insert((pack, ci), why);
                    }
                }
            }
        }
        faults
    }
}

/// Merge-joins the marked ids (sorted, each once) with every pack's chunk
/// entries sorted by id (`counts`: each pack's number of entries).
pub(super) fn join_copies(
    counts: &[usize],
    sorter: SpillSorter<Copy>,
    live: mark::Marked<Id>,
) -> Result<Copies> {
    let flags = || -> Vec<Vec<bool>> { counts.iter().map(|&n| vec![false; n]).collect() };
    let mut out = Copies {
        live: flags(),
        home: flags(),
        contested: Vec::new(),
        missing: 0,
    };
    let mut entries = sorter.finish()?.peekable();
    let mut group: Vec<(u32, u32)> = Vec::new();
    for id in live {
        let id = id?;
        group.clear();
        // Entries of ids that are not live are passed over.
        while let Some(next) = entries.peek() {
            match next {
                Ok(c) if c.id < id => {
                    entries.next();
                }
                Ok(c) if c.id == id => {
                    group.push((c.pack, c.chunk));
                    entries.next();
                }
                Ok(_) => break,
                Err(_) => {
                    if let Some(Err(e)) = entries.next() {
                        return Err(e.into());
                    }
                }
            }
        }
        match group.as_slice() {
            [] => out.missing += 1,
            [(first, _), rest @ ..] => {
                for &(p, ci) in &group {
                    out.live[p as usize][ci as usize] = true;
                }
                if rest.iter().all(|(p, _)| p == first) {
                    for &(p, ci) in &group {
                        out.home[p as usize][ci as usize] = true;
                    }
                } else {
                    out.contested.push((id, group.clone()));
                }
            }
        }
    }
    Ok(out)
}
