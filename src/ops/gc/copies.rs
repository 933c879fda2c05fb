//! The copies of live chunks: which entry of which pack holds each marked
//! id (a merge-join of every pack's entries, sorted by id on disk, with
//! the mark), and which copy is an id's *home* when it is stored in several
//! packs. Only a home copy is live to gc; choosing one reads it back first
//! ([`Copies::assign_homes`]).

use rayon::prelude::*;
use std::collections::BTreeMap;

use crate::error::Result;
use crate::id::Id;
use crate::ops::mark;
use crate::store::chunk_index::{SpillSorter, Spillable};
use crate::store::{ChunkFault, Object, Store};

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
    /// Copies that could not be read (the storage failed, not the data):
    /// every copy of their ids is kept.
    pub unreadable: u64,
    /// The first [`NAMED`] ids with a copy damaged or unread, named.
    pub warnings: Vec<String>,
}

/// Ids with damaged or unread copies named in warnings (the rest are
/// counted).
const NAMED: usize = 20;

/// What is wrong with a copy read back.
#[derive(Debug)]
pub(super) enum CopyFault {
    /// It does not decode, or does not hash to its id.
    Damaged(String),
    /// It could not be read: it may be sound.
    Unreadable(String),
}

/// An id's home, once its copies were tried.
enum Home {
    /// The copies in this pack: read back whole.
    In(u32),
    /// No copy read back whole, or one could not be read: all are kept.
    Every,
}

impl Copies {
    /// Each contested id's home is its copy in the first pack of `order`
    /// whose copy reads back and hashes to the id (every entry of that
    /// pack holding it). The home is checked because every other copy
    /// is dead to gc: a pack holding only those would be deleted, and a
    /// damaged home would leave no good copy (the other copies are what
    /// `verify --repair` could have used). When no copy checks out, or
    /// one cannot be read at all, every copy stays home and nothing
    /// holding one is deleted.
    pub fn assign_homes(&mut self, order: &[usize], check: &impl CheckCopies) -> HomeChecks {
        let mut rank = vec![0usize; order.len()];
        for (r, &p) in order.iter().enumerate() {
            rank[p] = r;
        }
        let groups = std::mem::take(&mut self.contested);
        // Each id's packs, best first.
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
        let mut home: Vec<Option<Home>> = (0..groups.len()).map(|_| None).collect();
        // The faulty copies met, per id: the pack and what is wrong.
        let mut faults: Vec<Vec<(u32, CopyFault)>> =
            (0..groups.len()).map(|_| Vec::new()).collect();
        loop {
            let pending: Vec<usize> = (0..groups.len()).filter(|&g| home[g].is_none()).collect();
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
            let mut found = check.faults(&probes);
            for (&g, probe) in pending.iter().zip(&probes) {
                match found.remove(probe) {
                    None => home[g] = Some(Home::In(probe.0)),
                    Some(fault) => {
                        let unread = matches!(fault, CopyFault::Unreadable(_));
                        faults[g].push((probe.0, fault));
                        tried[g] += 1;
                        if unread || tried[g] == candidates[g].len() {
                            home[g] = Some(Home::Every);
                        }
                    }
                }
            }
        }
        let mut out = HomeChecks::default();
        let mut unnamed = 0usize;
        for (g, (id, entries)) in groups.iter().enumerate() {
            let kept = match home[g] {
                Some(Home::In(p)) => Some(p),
                _ => None,
            };
            for &(p, ci) in entries.iter().filter(|(p, _)| kept.is_none_or(|k| k == *p)) {
                self.home[p as usize][ci as usize] = true;
            }
            if faults[g].is_empty() {
                continue;
            }
            out.count(&faults[g]);
            if out.warnings.len() < NAMED {
                let warning = say(id, &faults[g], kept, candidates[g].len(), check);
                out.warnings.push(warning);
            } else {
                unnamed += 1;
            }
        }
        if unnamed > 0 {
            out.warnings.push(format!(
                "{unnamed} more chunks stored twice have copies damaged or unread (run `atosnap verify`)"
            ));
        }
        out
    }
}

impl HomeChecks {
    /// Counts an id's faulty copies.
    fn count(&mut self, faults: &[(u32, CopyFault)]) {
        for (_, fault) in faults {
            match fault {
                CopyFault::Damaged(_) => self.damaged += 1,
                CopyFault::Unreadable(_) => self.unreadable += 1,
            }
        }
    }
}

/// The warning for `id` (at least one faulty copy): what is wrong with
/// which copy, and what was kept instead.
fn say(
    id: &Id,
    faults: &[(u32, CopyFault)],
    kept: Option<u32>,
    copies: usize,
    check: &impl CheckCopies,
) -> String {
    let said = (faults.iter())
        .map(|(pack, fault)| {
            let (CopyFault::Damaged(why) | CopyFault::Unreadable(why)) = fault;
            format!("its copy in {} {why}", check.name(*pack))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let last_unread = matches!(faults.last(), Some((_, CopyFault::Unreadable(_))));
    match kept {
        Some(k) => format!(
            "chunk {id}: {said}; the copy in {} is kept instead (run `atosnap verify --repair`)",
            check.name(k)
        ),
        None if last_unread => {
            format!("chunk {id}: {said}; every copy is kept (run gc again once the store reads)")
        }
        None => format!(
            "chunk {id}: none of its {copies} copies reads back whole ({said}); gc keeps them all (run `atosnap verify`)"
        ),
    }
}

/// What choosing homes needs to know of copies: which do not check out,
/// and what a pack is called.
pub(super) trait CheckCopies {
    /// The copies (pack, chunk entry) that do not read back and hash to
    /// their ids, each with what is wrong.
    fn faults(&self, copies: &[(u32, u32)]) -> BTreeMap<(u32, u32), CopyFault>;
    fn name(&self, pack: u32) -> &str;
}

/// Reads copies back to check them (a pack's index, then each frame
/// holding a copy once), a few packs at a time.
pub(super) struct CopyCheck<'s> {
    store: &'s Store,
    /// Name and size of each pack, by its number in the plan.
    packs: Vec<(String, u64)>,
}

impl CheckCopies for CopyCheck<'_> {
    fn faults(&self, copies: &[(u32, u32)]) -> BTreeMap<(u32, u32), CopyFault> {
        let mut sorted = copies.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let by_pack: Vec<&[(u32, u32)]> = sorted.chunk_by(|a, b| a.0 == b.0).collect();
        by_pack
            .par_iter()
            .map(|same_pack| self.pack_faults(same_pack))
            .reduce(BTreeMap::new, |mut a, b| {
                a.extend(b);
                a
            })
    }

    fn name(&self, pack: u32) -> &str {
        &self.packs[pack as usize].0
    }
}

impl<'s> CopyCheck<'s> {
    pub fn new(store: &'s Store, packs: Vec<(String, u64)>) -> CopyCheck<'s> {
        CopyCheck { store, packs }
    }

    /// [`CopyCheck::faults`] of copies in one pack.
    fn pack_faults(&self, same_pack: &[(u32, u32)]) -> BTreeMap<(u32, u32), CopyFault> {
        let mut faults = BTreeMap::new();
        let pack = same_pack[0].0;
        let (name, size) = &self.packs[pack as usize];
        let object = Object::Listed(name.clone());
        // The plan read this index a moment ago: failing now, it is the
        // storage that failed.
        let layout = match self.store.read_pack_index(&object, *size) {
            Ok(layout) => layout,
            Err(detail) => {
                for c in same_pack {
                    let why =
                        format!("could not be read: its pack's index does not read ({detail})");
                    faults.insert(*c, CopyFault::Unreadable(why));
                }
                return faults;
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
                    let why = "is in no frame of its pack".to_string();
                    faults.insert((pack, ci), CopyFault::Damaged(why));
                }
                continue;
            };
            let f = &layout.frames[fi];
            let frame =
                match self
                    .store
                    .read_object_range(&object, f.offset as u64, f.stored_len as usize)
                {
                    Err(e) => Err(
                        match ChunkFault::of_read_error(self.store.display(&object), &e) {
                            ChunkFault::Unreadable { .. } => {
                                CopyFault::Unreadable(format!("could not be read ({e})"))
                            }
                            ChunkFault::Missing => CopyFault::Damaged("is gone".to_string()),
                            ChunkFault::Corrupt(why) => {
                                CopyFault::Damaged(format!("is damaged: {why}"))
                            }
                        },
                    ),
                    Ok(stored) => self
                        .store
                        .decode_frame(&layout, fi, stored)
                        .map_err(|e| CopyFault::Damaged(format!("does not decode ({e})"))),
                };
            for ci in chunks {
                let fault = match &frame {
                    Err(CopyFault::Unreadable(why)) => CopyFault::Unreadable(why.clone()),
                    Err(CopyFault::Damaged(why)) => CopyFault::Damaged(why.clone()),
                    Ok(frame) => match frame.chunk((ci - f.first_chunk) as usize) {
                        Some(Ok(_)) => continue,
                        _ => CopyFault::Damaged("does not match its hash".to_string()),
                    },
                };
                faults.insert((pack, ci), fault);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Copies that fail as told (by pack), counting what was checked.
    struct Fake {
        damaged: Vec<u32>,
        unreadable: Vec<u32>,
        checked: RefCell<Vec<(u32, u32)>>,
        names: Vec<String>,
    }

    impl Fake {
        fn new(damaged: &[u32], unreadable: &[u32]) -> Fake {
            Fake {
                damaged: damaged.to_vec(),
                unreadable: unreadable.to_vec(),
                checked: RefCell::new(Vec::new()),
                names: (0..4).map(|p| format!("pack{p}")).collect(),
            }
        }
    }

    impl CheckCopies for Fake {
        fn faults(&self, copies: &[(u32, u32)]) -> BTreeMap<(u32, u32), CopyFault> {
            self.checked.borrow_mut().extend_from_slice(copies);
            let fault = |c: &(u32, u32)| {
                if self.damaged.contains(&c.0) {
                    Some(CopyFault::Damaged("does not match its hash".into()))
                } else if self.unreadable.contains(&c.0) {
                    Some(CopyFault::Unreadable(
                        "could not be read (timed out)".into(),
                    ))
                } else {
                    None
                }
            };
            copies
                .iter()
                .filter_map(|c| Some((*c, fault(c)?)))
                .collect()
        }

        fn name(&self, pack: u32) -> &str {
            &self.names[pack as usize]
        }
    }

    /// One id stored in packs 0, 1 and 2 (entry 5 of each; pack 1 holds
    /// it twice, entries 5 and 6), packs ranked 2, 0, 1, 3.
    fn one_contested() -> Copies {
        let flags = || vec![vec![false; 8]; 4];
        Copies {
            live: flags(),
            home: flags(),
            contested: vec![(Id::hash(b"c"), vec![(0, 5), (1, 5), (1, 6), (2, 5)])],
            missing: 0,
        }
    }

    const ORDER: [usize; 4] = [2, 0, 1, 3];

    fn homes(c: &Copies) -> Vec<(usize, usize)> {
        (0..4)
            .flat_map(|p| (0..8).map(move |ci| (p, ci)))
            .filter(|&(p, ci)| c.home[p][ci])
            .collect()
    }

    #[test]
    fn a_sound_first_choice_is_home_and_read_once() {
        let mut c = one_contested();
        let fake = Fake::new(&[], &[]);
        let found = c.assign_homes(&ORDER, &fake);
        assert_eq!(homes(&c), [(2, 5)]);
        assert_eq!((found.damaged, found.unreadable), (0, 0));
        assert!(found.warnings.is_empty());
        assert_eq!(*fake.checked.borrow(), [(2, 5)]);
    }

    #[test]
    fn a_damaged_first_choice_gives_way_to_the_next_sound_copy() {
        let mut c = one_contested();
        let fake = Fake::new(&[2], &[]);
        let found = c.assign_homes(&ORDER, &fake);
        assert_eq!(homes(&c), [(0, 5)]);
        assert_eq!((found.damaged, found.unreadable), (1, 0));
        assert!(
            found.warnings[0].contains("its copy in pack2 does not match its hash")
                && found.warnings[0].contains("the copy in pack0 is kept instead"),
            "{:?}",
            found.warnings
        );
        // Both entries of a pack holding it twice stay home.
        let mut c = one_contested();
        c.assign_homes(&ORDER, &Fake::new(&[2, 0], &[]));
        assert_eq!(homes(&c), [(1, 5), (1, 6)]);
    }

    #[test]
    fn when_no_copy_checks_out_or_one_cannot_be_read_every_copy_stays() {
        let mut c = one_contested();
        let found = c.assign_homes(&ORDER, &Fake::new(&[0, 1, 2], &[]));
        assert_eq!(homes(&c), [(0, 5), (1, 5), (1, 6), (2, 5)]);
        assert_eq!(found.damaged, 3);
        assert!(found.warnings[0].contains("none of its 3 copies reads back whole"));

        // An unread copy may be sound: nothing is given up for it, and
        // the copies after it are not tried.
        let mut c = one_contested();
        let fake = Fake::new(&[], &[2]);
        let found = c.assign_homes(&ORDER, &fake);
        assert_eq!(homes(&c), [(0, 5), (1, 5), (1, 6), (2, 5)]);
        assert_eq!((found.damaged, found.unreadable), (0, 1));
        assert!(
            found.warnings[0].contains("every copy is kept"),
            "{:?}",
            found.warnings
        );
        assert_eq!(*fake.checked.borrow(), [(2, 5)]);
    }

    #[test]
    fn warnings_name_twenty_ids_and_count_the_rest() {
        let flags = || vec![vec![false; 30]; 2];
        let mut c = Copies {
            live: flags(),
            home: flags(),
            contested: (0..30u32)
                .map(|i| (Id::hash(&i.to_le_bytes()), vec![(0, i), (1, i)]))
                .collect(),
            missing: 0,
        };
        let found = c.assign_homes(&[0, 1], &Fake::new(&[0], &[]));
        assert_eq!(found.damaged, 30);
        assert_eq!(found.warnings.len(), NAMED + 1);
        assert!(found.warnings[NAMED].starts_with("10 more chunks"));
    }
}
