//! The S3 backend against a real S3 server (Garage from `scripts/garage.sh`).
//! Skipped when `ATOSNAP_TEST_S3_BUCKET` is unset. Each test works under its
//! own random prefix.

use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atosnap::store::backend::{Backend, BackendErrorKind, WHOLE_READ_MAX};
use atosnap::store::s3::{S3Backend, S3Location};

use crate::support::files::dead_pid;
use crate::support::s3::{bucket, claim_in};

fn test_location(test: &str) -> Option<S3Location> {
    let bucket = bucket()?;
    let r: u64 = rand::random();
    Some(S3Location {
        bucket,
        prefix: format!("test/{test}-{r:016x}"),
        endpoint: None,
        region: None,
        limits: Default::default(),
    })
}

fn open(test: &str) -> Option<(S3Backend, tempfile::TempDir)> {
    let loc = test_location(test)?;
    let scratch = tempfile::tempdir().unwrap();
    let b = S3Backend::new(&loc, scratch.path().join("tmp")).unwrap();
    Some((b, scratch))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn s3_basic_operations() {
    let Some((b, _scratch)) = open("basic") else {
        return;
    };
    assert!(b.location().starts_with("s3://"));
    assert!(b
        .display_name("config.json")
        .to_string_lossy()
        .ends_with("/config.json"));
    assert!(!b.exists("config.json").unwrap());
    assert_eq!(
        b.size("config.json").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.read("config.json").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(b.list_files("").unwrap().is_empty());
    assert!(b.list_children("snapshots").unwrap().is_empty());

    b.write_once("config.json", b"{\"v\":1}").unwrap();
    assert!(b.exists("config.json").unwrap());
    assert_eq!(b.size("config.json").unwrap(), 7);
    assert_eq!(b.read("config.json").unwrap(), b"{\"v\":1}");
    assert_eq!(b.read_range("config.json", 2, 3).unwrap(), b"v\":");
    b.replace("config.json", b"{\"v\":2}").unwrap();
    assert_eq!(b.read("config.json").unwrap(), b"{\"v\":2}");

    b.write_once("keys/repokey.json", b"k").unwrap();
    b.write_once("snapshots/20260101T000000Z/backup-metadata.json", b"m")
        .unwrap();
    b.write_once("snapshots/20260101T000000Z/manifest.bin", b"mani")
        .unwrap();
    b.write_once("snapshots/20260102T000000Z/manifest.bin", b"x")
        .unwrap();
    let files = b.list_files("").unwrap();
    let names: Vec<&str> = files.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "keys/repokey.json",
            "snapshots/20260101T000000Z/backup-metadata.json",
            "snapshots/20260101T000000Z/manifest.bin",
            "snapshots/20260102T000000Z/manifest.bin",
        ]
    );
    let mani = &files[3];
    assert_eq!(mani.size, 4);
    let age = mani.modified.unwrap().elapsed().unwrap_or_default();
    assert!(age < Duration::from_secs(600), "{age:?}");
    let snaps = b.list_files("snapshots/20260101T000000Z").unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(
        b.list_children("snapshots").unwrap(),
        ["20260101T000000Z", "20260102T000000Z"]
    );
    assert_eq!(
        b.list_children("").unwrap(),
        ["config.json", "keys", "snapshots"]
    );
    assert_eq!(
        b.list_children("snapshots/20260101T000000Z").unwrap(),
        ["backup-metadata.json", "manifest.bin"]
    );
    // "snapshots/2026" is no folder: no prefix matches.
    assert!(b.list_files("snapshots/2026").unwrap().is_empty());

    let mut s = String::new();
    b.open_read("keys/repokey.json")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "k");

    b.delete("keys/repokey.json").unwrap();
    assert!(!b.exists("keys/repokey.json").unwrap());
    assert_eq!(
        b.delete("keys/repokey.json").unwrap_err().kind(),
        ErrorKind::NotFound
    );

    b.delete_dir("snapshots/20260101T000000Z").unwrap();
    assert_eq!(b.list_children("snapshots").unwrap(), ["20260102T000000Z"]);
    assert_eq!(
        b.delete_dir("snapshots/20260101T000000Z")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    b.write_once("objects/ab/p.pack", b"pack").unwrap();
    b.rename("objects/ab/p.pack", "quarantine/p.pack").unwrap();
    assert!(!b.exists("objects/ab/p.pack").unwrap());
    assert_eq!(b.read("quarantine/p.pack").unwrap(), b"pack");
    b.write_once("objects/ab/q.pack", b"q").unwrap();
    assert_eq!(
        b.rename("objects/ab/q.pack", "quarantine/p.pack")
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );

    for e in b.list_files("").unwrap() {
        b.delete(&e.name).unwrap();
    }
    assert!(b.list_files("").unwrap().is_empty());
}

/// A snapshot folder's two files as writer `i` writes them.
fn snapshot_files(i: u8) -> [(&'static str, Vec<u8>); 2] {
    [
        ("backup-metadata.json", vec![b'm', i]),
        ("manifest.bin", vec![b'x', i]),
    ]
}

/// Two threads publish `dir` at the same moment, writer 0 and writer 1:
/// who won.
fn two_writers_race(b: &Arc<S3Backend>, dir: &str) -> Vec<(u8, bool)> {
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2u8)
        .map(|i| {
            let (b, barrier, dir) = (b.clone(), barrier.clone(), dir.to_string());
            std::thread::spawn(move || {
                barrier.wait();
                (i, b.write_dir_once(&dir, &snapshot_files(i)).unwrap())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// `dir` holds writer `w`'s files, both of them.
fn assert_files_of(b: &S3Backend, dir: &str, w: u8) {
    for (name, data) in snapshot_files(w) {
        assert_eq!(
            b.read(&format!("{dir}/{name}")).unwrap(),
            data,
            "{dir}/{name}"
        );
    }
}

#[test]
fn s3_write_dir_once_claim_race() {
    let Some((b, _scratch)) = open("claim") else {
        return;
    };
    let b = Arc::new(b);
    let dir = "snapshots/20260101T000000Z";
    for round in 0..3 {
        let dir = format!("{dir}-{round}");
        let results = two_writers_race(&b, &dir);
        let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let w = winners[0];
        assert_files_of(&b, &dir, w);
        // And a later writer is refused.
        assert!(!b
            .write_dir_once(&dir, &[("manifest.bin", b"late".to_vec())])
            .unwrap());
        b.delete_dir(&dir).unwrap();
    }
}

/// A writer that may no longer commit (its lock lapsed while it uploaded
/// and claimed) is asked right before the commit file, after the files
/// before it are written: it publishes nothing and deletes nothing (the
/// folder may have been taken over meanwhile); its claim and summary are
/// a writer's leftovers, cleared by the next writer once it is gone.
#[test]
fn s3_write_dir_once_asks_right_before_the_commit() {
    let Some((b, _scratch)) = open("late-check") else {
        return;
    };
    let dir = "snapshots/20260102T000000Z";
    let files = snapshot_files(0);
    let seen_summary = std::cell::Cell::new(None);
    let refused = b.write_dir_once_checked(dir, &files, &|| {
        seen_summary.set(Some(
            b.exists(&format!("{dir}/backup-metadata.json")).unwrap(),
        ));
        Err(std::io::Error::other("the lock lapsed"))
    });
    assert_eq!(refused.unwrap_err().to_string(), "the lock lapsed");
    assert_eq!(seen_summary.get(), Some(true), "asked after the summary");
    assert!(!b.exists(&format!("{dir}/manifest.bin")).unwrap());
    let left: Vec<String> = b
        .list_files(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let claims: Vec<&String> = left.iter().filter(|n| n.contains(".claim-")).collect();
    assert_eq!(
        claims.len(),
        1,
        "the claim stays, naming this process: {left:?}"
    );
    // While this process runs, its folder is not taken over.
    assert!(!b.write_dir_once(dir, &snapshot_files(1)).unwrap());
    b.delete_dir(dir).unwrap();
}

/// The leftovers of a writer of this host that died between its claim
/// and its commit are cleared and the folder published; a folder whose
/// claim names a live process is left to it.
#[test]
fn s3_write_dir_once_clears_a_dead_writers_leftovers_only() {
    let Some((b, _scratch)) = open("leftovers") else {
        return;
    };
    let dead = dead_pid();
    let files = [
        ("backup-metadata.json", b"new meta".to_vec()),
        ("manifest.bin", b"new manifest".to_vec()),
    ];
    let dir = "snapshots/20260101T000000Z";
    let dead_claim = claim_in(dir, dead, 0xaa);
    b.write_once(&dead_claim, b"claim").unwrap();
    b.write_once(&format!("{dir}/backup-metadata.json"), b"old")
        .unwrap();
    assert!(b.write_dir_once(dir, &files).unwrap());
    let names: Vec<String> = b
        .list_files(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            format!("{dir}/backup-metadata.json"),
            format!("{dir}/manifest.bin")
        ],
        "the dead claim and the claim of the publish are gone"
    );
    assert_eq!(
        b.read(&format!("{dir}/backup-metadata.json")).unwrap(),
        b"new meta"
    );

    let dir = "snapshots/20260101T000001Z";
    let live_claim = claim_in(dir, std::process::id(), 0xbb);
    b.write_once(&live_claim, b"claim").unwrap();
    b.write_once(&format!("{dir}/backup-metadata.json"), b"at work")
        .unwrap();
    assert!(!b.write_dir_once(dir, &files).unwrap());
    assert_eq!(
        b.read(&format!("{dir}/backup-metadata.json")).unwrap(),
        b"at work"
    );
    assert!(b.exists(&live_claim).unwrap());
    assert!(!b.exists(&format!("{dir}/manifest.bin")).unwrap());
    for e in b.list_files("snapshots").unwrap() {
        b.delete(&e.name).unwrap();
    }
}

/// Two takers race for a folder a dead writer of this host left without
/// its commit: exactly one publishes, and its files are whole (neither
/// taker deletes what the other wrote).
#[test]
fn s3_write_dir_once_two_takers_of_a_dead_writers_folder() {
    let Some((b, _scratch)) = open("takers") else {
        return;
    };
    let b = Arc::new(b);
    let dead = dead_pid();
    for round in 0..3u8 {
        let dir = format!("snapshots/20260102T000000Z-{round}");
        b.write_once(&claim_in(&dir, dead, 0xcc), b"claim").unwrap();
        b.write_once(&format!("{dir}/backup-metadata.json"), b"old")
            .unwrap();
        let results = two_writers_race(&b, &dir);
        let winners: Vec<u8> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert!(winners.len() <= 1, "round {round}: {results:?}");
        // Both may have stepped back (each saw the other's claim five
        // times): then a third try takes the folder alone.
        let w = match winners.first() {
            Some(&w) => w,
            None => {
                let files = [
                    ("backup-metadata.json", vec![b'm', 9]),
                    ("manifest.bin", vec![b'x', 9]),
                ];
                assert!(b.write_dir_once(&dir, &files).unwrap(), "round {round}");
                9
            }
        };
        assert_files_of(&b, &dir, w);
        b.delete_dir(&dir).unwrap();
    }
}

/// A whole read is bounded as a local store's is: an object over the
/// bound is refused (by its size, naming it), one within is read exactly,
/// a missing one is still `NotFound`.
#[test]
fn s3_a_whole_read_over_its_bound_is_refused() {
    let Some((b, _scratch)) = open("bounded") else {
        return;
    };
    let name = "snapshots/20260101T000000Z/manifest.bin";
    let data = pattern(1000, 3);
    b.write_once(name, &data).unwrap();
    let err = b.read_at_most(name, 512).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    let (msg, shown) = (err.to_string(), b.display_name(name));
    for part in [
        &*shown.to_string_lossy(),
        "it is 1000 bytes",
        "more than any object atosnap reads whole (512)",
        "not one it wrote",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert_eq!(BackendErrorKind::of(&err), BackendErrorKind::Permanent);
    for max in [999, 1000, 1001, WHOLE_READ_MAX] {
        let got = b.read_at_most(name, max);
        if max < 1000 {
            assert!(got.is_err(), "{max}");
        } else {
            assert!(got.unwrap() == data, "{max}");
        }
    }
    assert!(b.read(name).unwrap() == data);
    b.write_once("empty", b"").unwrap();
    assert!(b.read_at_most("empty", 0).unwrap().is_empty());
    let missing = b
        .read_at_most("snapshots/none/manifest.bin", 512)
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(BackendErrorKind::of(&missing), BackendErrorKind::NotFound);
}

/// `read` itself holds to `WHOLE_READ_MAX`: an object one byte over it
/// (zeros from a sparse file, which Garage stores compressed) is refused
/// unread, where it was once downloaded into memory whole.
#[test]
fn s3_read_refuses_an_object_over_whole_read_max() {
    let Some((b, scratch)) = open("huge") else {
        return;
    };
    let name = "snapshots/20260101T000000Z/manifest.bin";
    let local = scratch.path().join("huge");
    std::fs::File::create(&local)
        .unwrap()
        .set_len(WHOLE_READ_MAX + 1)
        .unwrap();
    b.put_file(name, &local).unwrap();
    b.barrier().unwrap();
    assert_eq!(b.size(name).unwrap(), WHOLE_READ_MAX + 1);
    let err = b.read(name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    let limit = format!("more than any object atosnap reads whole ({WHOLE_READ_MAX})");
    assert!(err.to_string().contains(&limit), "{err}");
    b.delete(name).unwrap();
}

#[test]
fn s3_put_file_and_barrier() {
    let Some((b, _scratch)) = open("putfile") else {
        return;
    };
    let tmp = b.tmp_dir();
    let sizes = [10usize, 3 << 20, 20 << 20, 9 << 20, 1];
    let mut locals = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let local = tmp.join(format!("pack-{i}"));
        std::fs::write(&local, pattern(*size, i as u8)).unwrap();
        b.put_file(&format!("objects/{i:02}/p{i}.pack"), &local)
            .unwrap();
        locals.push(local);
    }
    b.barrier().unwrap();
    for (i, size) in sizes.iter().enumerate() {
        assert!(!locals[i].exists(), "local file {i} not removed");
        let name = format!("objects/{i:02}/p{i}.pack");
        assert_eq!(b.size(&name).unwrap(), *size as u64);
        let mut got = Vec::new();
        b.open_read(&name).unwrap().read_to_end(&mut got).unwrap();
        assert!(got == pattern(*size, i as u8), "content of {name}");
    }
    // A failed upload is reported by every later barrier and delete.
    b.put_file("objects/zz/missing.pack", &tmp.join("no-such-file"))
        .unwrap();
    let first = b.barrier().unwrap_err().to_string();
    assert_eq!(b.barrier().unwrap_err().to_string(), first);
    assert_eq!(
        b.delete("objects/00/p0.pack").unwrap_err().to_string(),
        first
    );
    assert_eq!(b.size("objects/00/p0.pack").unwrap(), 10, "not deleted");
}

/// A name as a pack's (the blake3 of `data`), so the backend treats the
/// object as content-addressed.
fn pack_name_of(data: &[u8]) -> String {
    let hex = blake3::hash(data).to_hex().to_string();
    format!("objects/{}/{hex}.pack", &hex[..2])
}

fn two_writers(test: &str) -> Option<(S3Backend, S3Backend, tempfile::TempDir)> {
    let loc = test_location(test)?;
    let scratch = tempfile::tempdir().unwrap();
    let a = S3Backend::new(&loc, scratch.path().join("a")).unwrap();
    let b = S3Backend::new(&loc, scratch.path().join("b")).unwrap();
    Some((a, b, scratch))
}

/// Two writers of the same new data upload the same pack (same bytes,
/// same name) in multipart uploads at once; S3 cancels one of them
/// (`NoSuchUpload`), and the writer whose upload was cancelled finds the
/// other's object and carries on.
#[test]
fn s3_two_writers_uploading_one_pack_both_succeed() {
    let Some((a, b, scratch)) = two_writers("same-pack") else {
        return;
    };
    for round in 0..8u8 {
        let data = pattern(20 << 20, round);
        let name = pack_name_of(&data);
        let (la, lb) = (scratch.path().join("la"), scratch.path().join("lb"));
        std::fs::write(&la, &data).unwrap();
        std::fs::write(&lb, &data).unwrap();
        std::thread::scope(|s| {
            let ta = s.spawn(|| a.put_file(&name, &la).and_then(|_| a.barrier()));
            let tb = s.spawn(|| b.put_file(&name, &lb).and_then(|_| b.barrier()));
            ta.join().unwrap().unwrap();
            tb.join().unwrap().unwrap();
        });
        assert_eq!(a.size(&name).unwrap(), data.len() as u64);
        let mut got = Vec::new();
        b.open_read(&name).unwrap().read_to_end(&mut got).unwrap();
        assert!(got == data, "round {round}: content of {name}");
    }
}

/// A pack already in the bucket with its size and trailer is not uploaded
/// again (its Last-Modified stays); one with other bytes is replaced.
#[test]
fn s3_an_existing_pack_is_not_uploaded_again() {
    let Some((b, scratch)) = open("existing-pack") else {
        return;
    };
    let data = pattern(9 << 20, 3);
    let name = pack_name_of(&data);
    let local = scratch.path().join("local");
    std::fs::write(&local, &data).unwrap();
    b.put_file(&name, &local).unwrap();
    b.barrier().unwrap();
    let modified = |b: &S3Backend| {
        b.list_files("objects")
            .unwrap()
            .into_iter()
            .find(|e| e.name == name)
            .unwrap()
            .modified
            .unwrap()
    };
    let first = modified(&b);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&local, &data).unwrap();
    b.put_file(&name, &local).unwrap();
    b.barrier().unwrap();
    assert_eq!(modified(&b), first, "uploaded again");
    assert!(!local.exists(), "the local file goes either way");

    // Damage under the name (same size, another tail): replaced.
    let mut bad = data.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    b.write_once(&name, &bad).unwrap();
    std::fs::write(&local, &data).unwrap();
    b.put_file(&name, &local).unwrap();
    b.barrier().unwrap();
    let mut got = Vec::new();
    b.open_read(&name).unwrap().read_to_end(&mut got).unwrap();
    assert!(got == data, "the damaged object was replaced");
}

#[test]
fn s3_spooled_read_range() {
    let Some((b, scratch)) = open("spool") else {
        return;
    };
    let data = pattern(12 << 20, 7);
    b.write_once("objects/aa/big.pack", &data).unwrap();
    b.write_once("snapshots/x/manifest.bin", &data[..100_000])
        .unwrap();
    let b = Arc::new(b);
    let threads: Vec<_> = (0..4usize)
        .map(|t| {
            let (b, data) = (b.clone(), data.clone());
            std::thread::spawn(move || {
                for k in 0..50usize {
                    let off = (t * 7919 + k * 250_007) % (data.len() - 70_000);
                    let len = 1 + (k * 1237) % 65_536;
                    let got = b
                        .read_range("objects/aa/big.pack", off as u64, len)
                        .unwrap();
                    assert!(got == data[off..off + len], "t{t} k{k}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The end, and past the end.
    let n = data.len();
    assert_eq!(
        b.read_range("objects/aa/big.pack", (n - 10) as u64, 10)
            .unwrap(),
        data[n - 10..]
    );
    assert!(b
        .read_range("objects/aa/big.pack", (n - 10) as u64, 11)
        .is_err());
    // Not a pack: a ranged GET.
    assert_eq!(
        b.read_range("snapshots/x/manifest.bin", 99_990, 10)
            .unwrap(),
        data[99_990..100_000]
    );
    // One spooled copy, under the scratch folder, gone on drop.
    let spooled: Vec<_> = walk(scratch.path());
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    b.delete("objects/aa/big.pack").unwrap();
    b.delete("snapshots/x/manifest.bin").unwrap();
    drop(b);
    assert!(walk(scratch.path()).is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn s3_missing_bucket_is_a_clear_error() {
    let Some(mut loc) = test_location("nobucket") else {
        return;
    };
    loc.bucket = "atosnap-no-such-bucket".into();
    let scratch = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let e = S3Backend::new(&loc, scratch.path().to_path_buf())
        .err()
        .expect("a missing bucket must fail");
    eprintln!("{e}");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string()
            .contains("bucket atosnap-no-such-bucket does not exist at http"),
        "{e}"
    );
}

#[test]
fn s3_unreachable_endpoint_fails_in_bounded_time() {
    let Some(mut loc) = test_location("unreachable") else {
        return;
    };
    loc.endpoint = Some("http://127.0.0.1:1".into());
    let scratch = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let e = S3Backend::new(&loc, scratch.path().to_path_buf())
        .err()
        .expect("an unreachable endpoint must fail");
    eprintln!("{e}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}
