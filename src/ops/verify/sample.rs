//! Which packs a sampled verify re-hashes (the others are checked
//! structurally): a random share (`--sample PERCENT`), one subset of a
//! stable partition (`--subset N/T`, restic's form: over the runs 1/T..T/T
//! every pack is read exactly once), or the packs re-hashed longest ago
//! (`--oldest PERCENT`, never-verified ones first, as the verify log says).

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::store::{audit_log, Store};

/// A sample of the packs to re-hash.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// This share of the packs, in percent (0 to 100), picked at random.
    Percent(f64),
    /// Subset `n` of `t` (1 <= n <= t): the packs whose id falls in it.
    Subset { n: u32, t: u32 },
    /// The packs re-hashed longest ago, until this share (more than 0, at
    /// most 100 percent) of the pack bytes is read.
    Oldest(f64),
}

/// One pack the sample may pick.
pub struct Candidate {
    /// Its number in the chunk index.
    pub pack: u32,
    pub id: Id,
    pub size: u64,
}

impl Sample {
    /// Parses `--subset N/T`.
    pub fn parse_subset(s: &str) -> std::result::Result<Sample, String> {
        let bad = || format!("{s:?}: expected N/T with 1 <= N <= T (e.g. 1/7)");
        let (n, t) = s.split_once('/').ok_or_else(bad)?;
        let (n, t) = (
            n.trim().parse::<u32>().map_err(|_| bad())?,
            t.trim().parse::<u32>().map_err(|_| bad())?,
        );
        let sample = Sample::Subset { n, t };
        sample.check().map_err(|_| bad())?;
        Ok(sample)
    }

    /// Parses `--oldest PERCENT`.
    pub fn parse_oldest(s: &str) -> std::result::Result<Sample, String> {
        let bad = || format!("{s:?}: expected a percentage above 0, at most 100");
        let p = s.trim().parse::<f64>().map_err(|_| bad())?;
        let sample = Sample::Oldest(p);
        sample.check().map_err(|_| bad())?;
        Ok(sample)
    }

    /// Refuses values out of range (a usage error naming the flag).
    pub fn check(&self) -> Result<()> {
        let fine = match *self {
            Sample::Percent(p) => (0.0..=100.0).contains(&p),
            Sample::Subset { n, t } => n >= 1 && n <= t,
            Sample::Oldest(p) => p > 0.0 && p <= 100.0,
        };
        if fine {
            return Ok(());
        }
        Err(Error::Usage(match self {
            Sample::Percent(p) => format!("--sample {p}: a percentage from 0 to 100"),
            Sample::Subset { n, t } => format!("--subset {n}/{t}: expected 1 <= N <= T"),
            Sample::Oldest(p) => format!("--oldest {p}: a percentage above 0, at most 100"),
        }))
    }

    pub fn spec(&self) -> String {
        match self {
            Sample::Percent(p) => format!("percent:{p}"),
            Sample::Subset { n, t } => format!("subset:{n}/{t}"),
            Sample::Oldest(p) => format!("oldest:{p}"),
        }
    }

    /// The packs of `candidates` to re-hash.
    pub fn select(&self, store: &Store, candidates: &[Candidate]) -> HashSet<u32> {
        match *self {
            Sample::Percent(pct) => {
                let n = candidates.len();
                let k = ((n as f64 * pct / 100.0).ceil() as usize).min(n);
                let mut rng = rand::rng();
                rand::seq::index::sample(&mut rng, n, k)
                    .into_iter()
                    .map(|i| candidates[i].pack)
                    .collect()
            }
            Sample::Subset { n, t } => candidates
                .iter()
                .filter(|c| subset_of(&c.id, t) == n)
                .map(|c| c.pack)
                .collect(),
            Sample::Oldest(pct) => {
                let hex: HashSet<String> = candidates.iter().map(|c| c.id.to_hex()).collect();
                let last = audit_log::packs_last_read(store, &hex);
                oldest_first(candidates, &last, pct)
            }
        }
    }
}

/// The subset (1..=t) a pack belongs to, from its id (a hash, so the
/// subsets are even) alone: stable across runs and stores.
pub fn subset_of(id: &Id, t: u32) -> u32 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&id.0[..8]);
    (u64::from_be_bytes(head) % u64::from(t.max(1))) as u32 + 1
}

/// The packs re-hashed longest ago (`last`: when, by hex id; never first,
/// then oldest, ties by id) until `pct` percent of their bytes is reached:
/// so `ceil(100 / pct)` runs read every pack present throughout.
fn oldest_first(
    candidates: &[Candidate],
    last: &HashMap<String, String>,
    pct: f64,
) -> HashSet<u32> {
    let mut order: Vec<(Option<&String>, String, &Candidate)> = candidates
        .iter()
        .map(|c| {
            let hex = c.id.to_hex();
            (last.get(&hex), hex, c)
        })
        .collect();
    order.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let total: u64 = candidates.iter().map(|c| c.size).sum();
    let budget = total as f64 * pct / 100.0;
    let mut read = 0u64;
    let mut out = HashSet::new();
    for (_, _, c) in order {
        if read as f64 >= budget {
            break;
        }
        read += c.size;
        out.insert(c.pack);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(i: u32, byte: u8, size: u64) -> Candidate {
        Candidate {
            pack: i,
            id: Id([byte; 32]),
            size,
        }
    }

    proptest! {
        /// Over the runs 1/T..T/T every pack is picked exactly once.
        #[test]
        fn subsets_partition_the_packs(ids in proptest::collection::hash_set(any::<[u8; 32]>(), 0..200), t in 1u32..40) {
            for id in &ids {
                let hits = (1..=t).filter(|&n| subset_of(&Id(*id), t) == n).count();
                prop_assert_eq!(hits, 1);
            }
            let cands: Vec<Candidate> = ids.iter().enumerate()
                .map(|(i, id)| Candidate { pack: i as u32, id: Id(*id), size: 1 })
                .collect();
            let mut seen: Vec<u32> = Vec::new();
            for n in 1..=t {
                let picked: Vec<u32> = cands.iter().filter(|c| subset_of(&c.id, t) == n).map(|c| c.pack).collect();
                seen.extend(picked);
            }
            seen.sort();
            prop_assert_eq!(seen, (0..ids.len() as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn flag_values_are_checked() {
        assert_eq!(
            Sample::parse_subset("2/3"),
            Ok(Sample::Subset { n: 2, t: 3 })
        );
        for bad in ["0/3", "4/3", "x", "1/0", "1/", "/3", "-1/3"] {
            assert!(Sample::parse_subset(bad).is_err(), "{bad}");
        }
        assert_eq!(Sample::parse_oldest("10"), Ok(Sample::Oldest(10.0)));
        for bad in ["0", "101", "-5", "x", "NaN"] {
            assert!(Sample::parse_oldest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oldest_reads_never_verified_then_oldest_until_the_share() {
        let c = [
            cand(0, 1, 10),
            cand(1, 2, 10),
            cand(2, 3, 10),
            cand(3, 4, 10),
        ];
        let mut last = HashMap::new();
        last.insert(Id([1; 32]).to_hex(), "2026-01-02T00:00:00.000Z".to_string());
        last.insert(Id([2; 32]).to_hex(), "2026-01-01T00:00:00.000Z".to_string());
        last.insert(Id([4; 32]).to_hex(), "2026-01-03T00:00:00.000Z".to_string());
        // 50 %: the never-verified pack 2, then the oldest, pack 1.
        assert_eq!(oldest_first(&c, &last, 50.0), HashSet::from([2, 1]));
        // 100 %: everything.
        assert_eq!(oldest_first(&c, &last, 100.0).len(), 4);
        // A share below one pack still reads one.
        assert_eq!(oldest_first(&c, &last, 1.0), HashSet::from([2]));
    }
}
