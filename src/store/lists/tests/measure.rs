//! The design's scenario measured (§1.4, "What a day costs"): a 4 GiB
//! fixed-block file (1,048,576 ids) with 1 % of its slots changed at random
//! each day, list bytes written per day. Ignored (it builds ~100 versions of
//! a million ids: about an hour in a debug build on a busy machine, a few
//! minutes with `CARGO_PROFILE_TEST_OPT_LEVEL=2`); run with
//! `cargo test --lib store::lists::tests::measure -- --ignored --nocapture`.
//! (compiled only for tests: a module of the `#[cfg(test)]` tests).

use super::*;

const SLOTS: u64 = 1 << 20;
const CHANGED: u64 = SLOTS / 100;

/// splitmix64: reproducible "random" slots without a dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Figures {
    first: u64,
    day1: u64,
    mean: f64,
    days: u64,
}

fn days(params: &ListParams, days: u64) -> Figures {
    let mut ids = distinct(SLOTS, 0);
    let mut mem = Mem::default();
    let cut = LeafCut::fixed(params);
    let first = build(&mut mem, params, cut, &ids, None);
    let mut list = first.list;
    let (mut rng, mut total, mut day1) = (1u64, 0u64, 0u64);
    for day in 1..=days {
        for n in 0..CHANGED {
            let slot = next(&mut rng) % SLOTS;
            ids[slot as usize] = id((day << 32) | n);
        }
        let out = build(&mut mem, params, cut, &ids, Some(&list));
        list = out.list;
        total += out.new_bytes;
        if day % 16 == 0 {
            keep_reachable(&mut mem, params, &list);
        }
        if day == 1 {
            day1 = out.new_bytes;
        }
    }
    assert_eq!(read_all(&mem, params, &list).unwrap(), ids);
    Figures {
        first: first.new_bytes,
        day1,
        mean: total as f64 / days as f64,
        days,
    }
}

/// Drops the blobs the newest version no longer reaches (what gc would),
/// so a run's memory stays near one version.
fn keep_reachable(mem: &mut Mem, params: &ListParams, list: &ListRef) {
    let mut live = std::collections::HashSet::new();
    let mut todo: Vec<Id> = list.root.into_iter().collect();
    while let Some(at) = todo.pop() {
        if !live.insert(at) {
            continue;
        }
        match Node::decode(&at, &mem.blobs[&at], params).unwrap() {
            Node::Interior { children, .. } => todo.extend(children.iter().map(|c| c.0)),
            Node::Delta(d) => todo.push(d.prev),
            Node::Full(_) => {}
        }
    }
    mem.blobs.retain(|id, _| live.contains(id));
}

#[test]
#[ignore = "a measurement (minutes in debug), not a check"]
fn measure_list_bytes() {
    let with = |leaf_slots: u32, node_slots: u32, max_chain: u8| ListParams {
        leaf_slots,
        node_slots,
        max_chain,
        ..ListParams::default()
    };
    // Without deltas every day costs the same: two days suffice. With
    // them, 65 days cover one chain cycle of max_chain = 64 (with leaves of
    // 1024 every leaf changes daily, so all of them reset on day 65).
    let runs = [
        ("F=16/64, full leaves only", with(16, 64, 0), 2),
        ("F=16/64, delta leaves", with(16, 64, 64), 65),
        ("F=64/64, full leaves only", with(64, 64, 0), 2),
        ("F=64/64, delta leaves", with(64, 64, 64), 65),
        ("F=1024/1024, full leaves only", with(1024, 1024, 0), 2),
        ("F=1024/1024, deltas (defaults)", with(1024, 1024, 64), 65),
    ];
    // ATOSNAP_LISTS_MEASURE=1,5 runs only those rows.
    let only: Option<Vec<usize>> = std::env::var("ATOSNAP_LISTS_MEASURE")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    println!("| lists | first snapshot | day 1 | mean/day | days |");
    println!("|---|---:|---:|---:|---:|");
    for (row, (name, params, n)) in runs.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&row)) {
            continue;
        }
        let f = days(&params, n);
        println!(
            "| {name} | {:.2} MB | {:.3} MB | {:.3} MB | {} |",
            f.first as f64 / 1e6,
            f.day1 as f64 / 1e6,
            f.mean / 1e6,
            f.days
        );
    }
}
