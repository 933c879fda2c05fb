//! Property tests of restore through the library, on small random
//! runtimes: a tiny SQLite db, a registry, and a random Chroma tree
//! (contents, modes, mtimes, symlinks, empty folders, non-UTF-8 names).
//!
//! 1. create then `restore --to` gives back the identical tree;
//! 2. restoring into a directory full of arbitrary junk (files, folders,
//!    symlinks, some pointing outside, names clashing with the snapshot's
//!    in another kind) yields exactly the snapshot, keeps the directory's
//!    inode, never writes through a symlink, and a second run writes nothing;
//! 3. a block file on disk with random blocks changed and its length
//!    changed is restored exactly: patched in place (same inode) when at
//!    most half of its bytes must be written, replaced whole otherwise.

use crate::support::*;

use proptest::prelude::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atosnap::ops::create::{self, CreateOptions};
use atosnap::ops::restore::{self, ChromaChoice, RestoreOptions, RestoreResult};
use atosnap::progress::NoProgress;
use atosnap::store::{location::StoreAddress, InitOptions, Store};

#[derive(Clone, Debug)]
enum Spec {
    File { content: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Link { target: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Item {
    path: Vec<Vec<u8>>,
    spec: Spec,
    mtime: (i64, u32),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            prop_oneof![
                6 => b'a'..=b'c',
                2 => 0x80u8..=0xff,
                1 => Just(b' '),
                1 => Just(b'.'),
                1 => Just(b'-'),
            ],
            1..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut n, bin)| {
            if bin {
                n.extend_from_slice(b".bin");
            }
            n
        })
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn spec() -> impl Strategy<Value = Spec> {
    let content = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..2_000),
        1 => prop::collection::vec(any::<u8>(), 0..40_000),
        1 => (any::<u8>(), 0usize..70_000).prop_map(|(b, n)| vec![b; n]),
    ];
    prop_oneof![
        5 => (content, prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o640, 0o444, 0o700]))
            .prop_map(|(content, mode)| Spec::File { content, mode }),
        2 => prop::sample::select(vec![0o755u32, 0o700, 0o750, 0o775]).prop_map(|mode| Spec::Dir { mode }),
        2 => prop_oneof![
            name(),
            Just(b"../outside".to_vec()),
            Just(b"/nonexistent/target".to_vec()),
            Just(b"a/\xff\xfe/b".to_vec()),
        ]
        .prop_map(|target| Spec::Link { target }),
    ]
}

fn items(max: usize) -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(
        (
            prop::collection::vec(name(), 1..4),
            spec(),
            (1_000_000_000i64..2_000_000_000, 0u32..1_000_000_000),
        )
            .prop_map(|(path, spec, mtime)| Item { path, spec, mtime }),
        0..max,
    )
}

fn ft(m: (i64, u32)) -> filetime::FileTime {
    filetime::FileTime::from_unix_time(m.0, m.1)
}

/// Builds the items under `root` (which must exist). Items whose parent
/// path is taken by a non-folder, or whose path exists already, are skipped.
fn materialize(root: &Path, items: &[Item], root_mtime: (i64, u32)) {
    let mut dirs: Vec<(PathBuf, u32, (i64, u32))> = Vec::new();
    'items: for item in items {
        let mut p = root.to_path_buf();
        for comp in &item.path[..item.path.len() - 1] {
            p.push(OsStr::from_bytes(comp));
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => continue 'items,
                Err(_) => std::fs::create_dir(&p).unwrap(),
            }
        }
        p.push(OsStr::from_bytes(item.path.last().unwrap()));
        if std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        match &item.spec {
            Spec::File { content, mode } => {
                std::fs::write(&p, content).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                filetime::set_file_mtime(&p, ft(item.mtime)).unwrap();
            }
            Spec::Dir { mode } => {
                std::fs::create_dir(&p).unwrap();
                dirs.push((p, *mode, item.mtime));
            }
            Spec::Link { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).unwrap();
                filetime::set_symlink_file_times(&p, ft(item.mtime), ft(item.mtime)).unwrap();
            }
        }
    }
    // Folders last, deepest first, so their mtimes stay.
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (p, mode, mtime) in dirs {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        filetime::set_file_mtime(&p, ft(mtime)).unwrap();
    }
    filetime::set_file_mtime(root, ft(root_mtime)).unwrap();
}

struct Runtime {
    _dir: tempfile::TempDir,
    base: PathBuf,
    store: Store,
    db: PathBuf,
    registry: PathBuf,
    chroma: PathBuf,
    stamp: String,
}

fn db_rows(db: &Path) -> Vec<(i64, Vec<u8>)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// A random runtime, snapshotted with Chroma.
fn runtime(chroma_items: &[Item], rows: &[Vec<u8>], root_mtime: (i64, u32)) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let db = base.join("src/atocore.db");
    let registry = base.join("src/project-registry.json");
    let chroma = base.join("src/chroma");
    std::fs::create_dir_all(&chroma).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    for (k, v) in rows.iter().enumerate() {
        conn.execute("INSERT INTO t VALUES (?1, ?2)", (k as i64, v))
            .unwrap();
    }
    drop(conn);
    std::fs::write(&registry, br#"{"projects": [{"id": "p"}]}"#).unwrap();
    materialize(&chroma, chroma_items, root_mtime);
    let store = Store::init(
        &StoreAddress::local(base.join("store")),
        &InitOptions::default(),
    )
    .unwrap();
    let created = create::create(
        &store,
        &CreateOptions {
            db: db.clone(),
            registry: registry.clone(),
            chroma: Some(chroma.clone()),
            tags: vec![],
            at: None,
            lock_wait: Duration::from_secs(10),
            ingestion_lock: None,
        },
        &NoProgress,
    )
    .unwrap();
    assert!(
        created.validated,
        "snapshot not valid: {:?}",
        created.validation_errors
    );
    Runtime {
        _dir: dir,
        base,
        store,
        db,
        registry,
        chroma,
        stamp: created.stamp,
    }
}

fn restore_to(rt: &Runtime, out: &Path) -> RestoreResult {
    restore::restore(
        &rt.store,
        &RestoreOptions {
            stamp: rt.stamp.clone(),
            db: rt.db.clone(),
            registry: rt.registry.clone(),
            chroma_dir: rt.chroma.clone(),
            to: Some(out.to_path_buf()),
            confirm_service_stopped: false,
            pre_snapshot: false,
            chroma: ChromaChoice::Auto,
            lock_wait: Duration::from_secs(10),
        },
        &NoProgress,
    )
    .unwrap()
}

fn non_dirs(t: &std::collections::BTreeMap<Vec<u8>, Node>) -> u64 {
    t.values()
        .filter(|n| !matches!(n, Node::Dir { .. }))
        .count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn create_then_restore_to_gives_an_identical_tree(
        chroma in items(24),
        rows in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..40),
        root_mtime in (1_000_000_000i64..2_000_000_000, 0u32..1_000_000_000),
    ) {
        let rt = runtime(&chroma, &rows, root_mtime);
        let want = tree(&rt.chroma);
        let out = rt.base.join("out");
        let r = restore_to(&rt, &out);
        prop_assert!(r.restored_integrity_ok);
        prop_assert!(r.chroma_restored);
        let got = tree(&out.join("chroma"));
        let d = tree_diff(&want, &got);
        prop_assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
        prop_assert_eq!(r.chroma_files_written, non_dirs(&want));
        prop_assert_eq!(r.chroma_files_removed, 0);
        prop_assert_eq!(
            std::fs::read(out.join("project-registry.json")).unwrap(),
            std::fs::read(&rt.registry).unwrap()
        );
        prop_assert_eq!(db_rows(&out.join("atocore.db")), db_rows(&rt.db));
    }

    #[test]
    fn restore_into_junk_yields_exactly_the_snapshot_and_keeps_the_dir(
        chroma in items(16),
        junk in items(24),
        root_mtime in (1_000_000_000i64..2_000_000_000, 0u32..1_000_000_000),
    ) {
        let rt = runtime(&chroma, &[b"row".to_vec()], root_mtime);
        let want = tree(&rt.chroma);
        let out = rt.base.join("out");
        let target = out.join("chroma");
        std::fs::create_dir_all(&target).unwrap();
        // Outside the target, reachable through junk symlinks placed where
        // the snapshot has folders: restore must never write through them.
        let sentinel = rt.base.join("sentinel");
        std::fs::create_dir(&sentinel).unwrap();
        std::fs::write(sentinel.join("keep"), b"keep").unwrap();
        for item in &chroma {
            let top = target.join(OsStr::from_bytes(&item.path[0]));
            if item.path.len() > 1 && std::fs::symlink_metadata(&top).is_err() {
                std::os::unix::fs::symlink(&sentinel, &top).unwrap();
            }
        }
        materialize(&target, &junk, (1_500_000_000, 0));
        let sentinel_before = tree(&sentinel);
        let inode = ino(&target);

        let r = restore_to(&rt, &out);
        prop_assert!(r.restored_integrity_ok);
        let got = tree(&target);
        let d = tree_diff(&want, &got);
        prop_assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
        prop_assert_eq!(ino(&target), inode, "the directory was replaced");
        let sd = tree_diff(&sentinel_before, &tree(&sentinel));
        prop_assert!(sd.is_empty(), "wrote outside the target:\n{}", sd.join("\n"));
        prop_assert_eq!(r.chroma_files_written + r.chroma_files_unchanged, non_dirs(&want));

        // Same restore again: nothing to do, same state.
        let again = restore_to(&rt, &out);
        prop_assert_eq!(again.chroma_files_written, 0);
        prop_assert_eq!(again.chroma_files_removed, 0);
        prop_assert_eq!(again.chroma_files_unchanged, non_dirs(&want));
        let d = tree_diff(&want, &tree(&target));
        prop_assert!(d.is_empty(), "second restore changed:\n{}", d.join("\n"));
    }

    #[test]
    fn a_block_file_with_changed_blocks_is_restored_exactly_in_place_or_whole(
        base in prop::collection::vec(any::<u8>(), 1..24 * 4096),
        changed in prop::collection::vec((0usize..24, any::<u8>()), 0..24),
        new_len in prop::option::of(0usize..26 * 4096),
    ) {
        let items = [Item {
            path: vec![b"seg".to_vec(), b"data_level0.bin".to_vec()],
            spec: Spec::File { content: base.clone(), mode: 0o640 },
            mtime: (1_600_000_000, 5),
        }];
        let rt = runtime(&items, &[b"row".to_vec()], (1_500_000_000, 0));
        let want = tree(&rt.chroma);
        let out = rt.base.join("out");
        restore_to(&rt, &out);
        let file = out.join("chroma/seg/data_level0.bin");
        let mut disk = base.clone();
        for (block, x) in &changed {
            let at = block * 4096 + (*x as usize % 4096);
            if at < disk.len() {
                disk[at] = !disk[at];
            }
        }
        disk.resize(new_len.unwrap_or(base.len()), 0x33);
        std::fs::write(&file, &disk).unwrap();
        filetime::set_file_mtime(&file, ft((1_700_000_000, 0))).unwrap();
        let inode = ino(&file);
        // The snapshot's 4 KiB chunks the disk does not hold in place.
        let to_write: usize = base
            .chunks(4096)
            .enumerate()
            .filter(|(i, c)| disk.get(i * 4096..i * 4096 + c.len()) != Some(*c))
            .map(|(_, c)| c.len())
            .sum();

        let r = restore_to(&rt, &out);
        prop_assert!(r.restored_integrity_ok);
        let d = tree_diff(&want, &tree(&out.join("chroma")));
        prop_assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
        let patched = to_write * 2 <= base.len();
        prop_assert_eq!(ino(&file) == inode, patched, "{} of {} bytes to write", to_write, base.len());
        let leftovers = walkdir::WalkDir::new(&out).into_iter().flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".atosnap-restore-"))
            .count();
        prop_assert_eq!(leftovers, 0);
    }
}
