//! The readers' small caches of decoded frames and of pack layouts: a
//! file's chunks read in order (validate, restore, drill, copy) decode
//! each format-2 frame once, not once per chunk, even when two threads
//! read chunks of one frame at the same moment (the second waits for the
//! first's decode instead of doing it again).
//!
//! A least-recently-used list of a few entries, each a cell filled once by
//! whoever asked first. Failures are handed to every waiter and then
//! dropped, so a transient read error is retried by the next reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Decoded frames kept per store handle: a frame holds at most
/// `frame_max_bytes` plus one chunk (1 MiB by default), so this is about
/// 8 MiB, enough for two readers and the frames of deduplicated chunks
/// interleaved with new ones.
pub const FRAMES_KEPT: usize = 8;
/// Pack layouts kept (a 32 MiB pack's is about 300 KB to 600 KB). A
/// restore of a day's snapshot reads each big file from two packs at once
/// (the first snapshot's and the day's), three files at a time: with 4
/// kept, nearly every frame decode read its pack's trailer again (323
/// trailer reads instead of 17 on the 130k runtime).
pub const LAYOUTS_KEPT: usize = 16;

type Cell<V> = Arc<OnceLock<V>>;

pub struct OnceLru<K, V> {
    slots: Mutex<VecDeque<(K, Cell<V>)>>,
    cap: AtomicUsize,
}

impl<K: PartialEq + Clone, V: Clone> OnceLru<K, V> {
    pub fn new(cap: usize) -> Self {
        OnceLru {
            slots: Mutex::new(VecDeque::with_capacity(cap + 1)),
            cap: AtomicUsize::new(cap.max(1)),
        }
    }

    /// Keeps at most `cap` values from now on (the oldest go first).
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        while slots.len() > cap.max(1) {
            slots.pop_front();
        }
    }

    /// The value for `key`: the cached one, or `load`'s (run by one
    /// caller while the others wait). A value `keep` refuses is returned
    /// but not kept.
    pub fn get_or_load(&self, key: &K, load: impl FnOnce() -> V, keep: impl Fn(&V) -> bool) -> V {
        let cell = self.cell(key);
        let value = cell.get_or_init(load).clone();
        if !keep(&value) {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.retain(|(_, c)| !Arc::ptr_eq(c, &cell));
        }
        value
    }

    /// The value for `key` when it is cached and loaded already (the LRU
    /// order is left as it is).
    pub fn peek(&self, key: &K) -> Option<V> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (_, cell) = slots.iter().find(|(k, _)| k == key)?;
        cell.get().cloned()
    }

    fn cell(&self, key: &K) -> Cell<V> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = slots.iter().position(|(k, _)| k == key) {
            if let Some(entry) = slots.remove(pos) {
                let cell = entry.1.clone();
                slots.push_back(entry);
                return cell;
            }
        }
        let cell: Cell<V> = Arc::new(OnceLock::new());
        slots.push_back((key.clone(), cell.clone()));
        while slots.len() > self.cap.load(Ordering::Relaxed) {
            slots.pop_front();
        }
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smaller_cap_drops_the_oldest_at_once_and_holds_after() {
        let lru: OnceLru<u32, u32> = OnceLru::new(4);
        for k in 0..4 {
            lru.get_or_load(&k, || k, |_| true);
        }
        lru.set_cap(2);
        let kept: Vec<u32> = (0..4).filter(|k| lru.peek(k).is_some()).collect();
        assert_eq!(kept, [2, 3]);
        lru.get_or_load(&9, || 9, |_| true);
        let kept: Vec<u32> = [2, 3, 9]
            .into_iter()
            .filter(|k| lru.peek(k).is_some())
            .collect();
        assert_eq!(kept, [3, 9]);
    }

    #[test]
    fn loads_once_per_key_evicts_the_oldest_and_drops_failures() {
        let lru: OnceLru<u32, Result<u32, String>> = OnceLru::new(2);
        let loads = AtomicUsize::new(0);
        let get = |k: u32, fail: bool| {
            lru.get_or_load(
                &k,
                || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    if fail {
                        Err("no".to_string())
                    } else {
                        Ok(k * 10)
                    }
                },
                Result::is_ok,
            )
        };
        assert_eq!(get(1, false), Ok(10));
        assert_eq!(get(1, false), Ok(10));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let _ = get(2, false);
        let _ = get(1, false); // 1 is now the newest
        let _ = get(3, false); // evicts 2
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        let _ = get(1, false);
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        let _ = get(2, false);
        assert_eq!(loads.load(Ordering::SeqCst), 4);
        assert!(get(7, true).is_err());
        assert_eq!(get(7, false), Ok(70), "a failure is not kept");
    }

    #[test]
    fn concurrent_readers_of_one_key_load_it_once() {
        let lru: OnceLru<u32, u32> = OnceLru::new(4);
        let loads = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    lru.get_or_load(
                        &5,
                        || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            5
                        },
                        |_| true,
                    )
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
