//! Store format 2: a file's chunk list is a tree of list blobs in the packs
//! and a manifest holds one root per file (docs/FORMAT.md "List blobs").
//! What it buys (a snapshot costs what changed), what it must never do
//! (read a hostile tree into a loop, lose a reachable list blob), and the
//! format-1 rule: read by every command, written by none, upgraded by
//! `copy` into a new store.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{self, copy_tree, Runtime as Env};
use atosnap::id::Id;
use atosnap::stamp::Stamp;
use atosnap::store::lists::{ListRef, Node};
use atosnap::store::manifest::{ChunkList, EntryKind};
use atosnap::store::packer::Packer;
use atosnap::store::ReadFrom;

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Bytes of every file under `root`.
fn tree_bytes(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Every file and folder under `root` with the blake3 of its bytes.
fn tree_hashes(root: &Path) -> BTreeMap<PathBuf, String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let hash = match e.file_type().is_file() {
                true => blake3::hash(&fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string(),
                false => "dir".into(),
            };
            (rel, hash)
        })
        .collect()
}

/// The files cache trusts no file changed within the last 2 s.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(2200));
}

/// The list root of `path` in snapshot `stamp`.
fn list_of(env: &Env, stamp: &str, path: &str) -> ListRef {
    let m = env.manifest(stamp);
    match &m.find(path).unwrap().file().unwrap().list {
        ChunkList::Tree(r) => *r,
        ChunkList::Ids(_) => panic!("{path} in {stamp} holds a format-1 list"),
    }
}

/// Replaces the list of `path` in snapshot `stamp` by `list`, with a valid
/// (unkeyed) checksum: what anyone who can write a plain store can forge.
fn forge_list(env: &Env, stamp: &str, path: &str, list: ListRef) {
    env.forge_manifest(stamp, |m| {
        for e in &mut m.entries {
            if let (true, EntryKind::File(f)) = (e.path == path.as_bytes(), &mut e.kind) {
                f.list = ChunkList::Tree(list);
            }
        }
    });
}

/// Stores `nodes` as list blobs of the (plain) store; their ids.
fn put_blobs(env: &Env, nodes: &[Vec<u8>]) -> Vec<Id> {
    let store = env.open_store();
    let mut index = store.load_index().unwrap();
    let mut packer = Packer::new(&store);
    let ids: Vec<Id> = nodes.iter().map(|b| store.sealer().chunk_id(b)).collect();
    for (id, b) in ids.iter().zip(nodes) {
        packer.add_raw(&mut index, *id, b).unwrap();
    }
    packer.flush(&mut index).unwrap();
    ids
}

/// A 5 MiB HNSW-like file: 1,280 fixed-block chunks, so its tree has an
/// interior root above two leaves.
fn add_big_bin(env: &Env) -> PathBuf {
    let seg = env.hnsw_bin().parent().unwrap().to_path_buf();
    let path = seg.join("big_level0.bin");
    fs::write(&path, support::pseudo_random(7, 5 << 20)).unwrap();
    path
}

fn chroma_rel(env: &Env, path: &Path) -> String {
    format!(
        "chroma/{}",
        path.strip_prefix(env.chroma()).unwrap().to_string_lossy()
    )
}

#[test]
fn a_no_change_snapshot_adds_under_64_kib() {
    let env = Env::fixture();
    add_big_bin(&env);
    settle();
    let first = env.create(&["--chroma"]);
    assert!(u(&first, "chunks_total") > 2_000, "{first}");
    let before = tree_bytes(&env.store);
    let second = env.create(&["--chroma"]);
    let grown = tree_bytes(&env.store) - before;
    assert!(grown < 64 << 10, "a no-change snapshot added {grown} bytes");
    assert_eq!(u(&second, "chunks_new"), 0, "{second}");
    assert_eq!(u(&second, "list_blobs_new"), 0, "{second}");
    assert_eq!(u(&second, "bytes_new_stored"), 0, "{second}");
    assert_eq!(u(&second, "chunks_total"), u(&first, "chunks_total"));
    assert_eq!(second["validated"], true, "{second}");
    let stamp = second["stamp"].as_str().unwrap();
    assert_eq!(env.run(&["validate", stamp]).code, 0);
}

/// How many files a snapshot holds.
fn file_count(env: &Env, created: &Value) -> u64 {
    let m = env.manifest(created["stamp"].as_str().unwrap());
    m.entries.iter().filter(|e| e.file().is_some()).count() as u64
}

/// Changes a file's ctime only (as SQLite's `fchown` of a `-wal` does when
/// it runs as root).
fn touch_ctime(path: &Path) {
    let mode = fs::metadata(path).unwrap().permissions();
    fs::set_permissions(path, mode).unwrap();
}

/// The db comes from the files cache when neither it nor its WAL's frames
/// changed, even though opening it (as every capture does) changed the
/// WAL's ctime; a new frame in the WAL is read. The registry is always
/// read: every other file is from the cache in a no-change snapshot.
#[test]
fn the_db_is_not_read_again_when_only_its_wal_ctime_changed() {
    let env = Env::tiny();
    let db = env.db();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    let insert = |id: i64| {
        conn.execute(
            "INSERT INTO memories(id, content) VALUES (?1, 'in the wal')",
            [id],
        )
        .unwrap();
    };
    insert(5000);
    assert!(fs::metadata(&wal).unwrap().len() > 0);
    settle();
    let first = env.create(&["--chroma"]);
    let all_but_registry = file_count(&env, &first) - 1;
    touch_ctime(&wal);
    let second = env.create(&["--chroma"]);
    assert_eq!(u(&second, "files_from_cache"), all_but_registry, "{second}");

    // A new frame in the WAL: the db is read again, with the new row.
    insert(5001);
    settle();
    let third = env.create(&["--chroma"]);
    assert_eq!(
        u(&third, "files_from_cache"),
        all_but_registry - 1,
        "{third}"
    );
    let stamp = third["stamp"].as_str().unwrap();
    let to = env.dir.path().join("third");
    assert_eq!(
        env.run(&["restore", stamp, "--to", to.to_str().unwrap()])
            .code,
        0
    );
    let restored = rusqlite::Connection::open(to.join("atocore.db")).unwrap();
    let n: i64 = restored
        .query_row("SELECT count(*) FROM memories WHERE id >= 5000", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 2);

    // Checkpointed into the db, the WAL empty: an empty WAL counts as none,
    // whatever its ctime.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    assert_eq!(fs::metadata(&wal).unwrap().len(), 0);
    settle();
    env.create(&["--chroma"]);
    touch_ctime(&wal);
    let fifth = env.create(&["--chroma"]);
    assert_eq!(u(&fifth, "files_from_cache"), all_but_registry, "{fifth}");
    drop(conn);
}

#[test]
fn one_changed_page_writes_a_few_chunks_and_list_blobs() {
    let env = Env::fixture();
    settle();
    let first = env.create(&["--chroma"]);
    let db_list = list_of(&env, first["stamp"].as_str().unwrap(), "atocore.db");
    assert!(db_list.levels >= 1, "a db of over 1,024 pages: {db_list:?}");
    // One row rewritten in place: one page (and the WAL-mode header at most).
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let id: String = conn
        .query_row("SELECT id FROM memories LIMIT 1", [], |r| r.get(0))
        .unwrap();
    conn.execute(
        "UPDATE memories SET content = 'one page changed' WHERE id = ?1",
        [&id],
    )
    .unwrap();
    drop(conn);
    let second = env.create(&["--chroma"]);
    assert!(u(&second, "chunks_new") <= 4, "{second}");
    // A delta leaf (or two) and the interior root above it.
    let blobs = u(&second, "list_blobs_new");
    assert!((1..=4).contains(&blobs), "{second}");
    let stamp = second["stamp"].as_str().unwrap();
    assert_ne!(list_of(&env, stamp, "atocore.db").root, db_list.root);
    assert_eq!(env.run(&["validate", stamp]).code, 0);
    let diff = env.ok(&["diff", first["stamp"].as_str().unwrap(), stamp]);
    assert_eq!(diff["changed"].as_array().unwrap().len(), 1, "{diff}");
    assert_eq!(diff["changed"][0]["path"], "atocore.db");
}

#[test]
fn a_tree_listed_file_round_trips() {
    let env = Env::fixture();
    let big = add_big_bin(&env);
    let stamp = env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let rel = chroma_rel(&env, &big);
    let list = list_of(&env, &stamp, &rel);
    assert_eq!((list.chunks, list.levels), (1280, 1), "{list:?}");
    let to = env.path("to");
    env.ok(&["restore", &stamp, "--to", to.to_str().unwrap()]);
    assert_eq!(fs::read(to.join(&rel)).unwrap(), fs::read(&big).unwrap());
    let ls = env.ok(&["ls", &stamp, &rel, "--long"]);
    assert_eq!(ls["entries"][0]["chunks"], 1280, "{ls}");
}

#[test]
fn a_missing_list_blob_fails_validate_and_restore_leaves_live_data_alone() {
    let env = Env::fixture();
    let stamp = env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let mut list = list_of(&env, &stamp, "atocore.db");
    let gone = Id::hash(b"a list blob the store never held");
    list.root = Some(gone);
    forge_list(&env, &stamp, "atocore.db", list);

    let out = env.run(&["validate", &stamp]);
    assert_eq!(out.code, 3, "{out:?}");
    let errors = out.strings("errors");
    assert!(
        errors.contains(&format!("chunk_missing:{}", gone.to_hex())),
        "{errors:?}"
    );
    let verify = env.run(&["verify"]);
    assert_eq!(verify.code, 3, "{verify:?}");
    assert!(
        verify.strings("missing").contains(&gone.to_hex()),
        "{verify:?}"
    );

    let live_db = fs::read(env.db()).unwrap();
    let live = env.restorable();
    let out = env.run(&["restore", &stamp, "--confirm-service-stopped"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains(&gone.to_hex()) || out.json.to_string().contains(&gone.to_hex()));
    assert_eq!(
        fs::read(env.db()).unwrap(),
        live_db,
        "the live db was touched"
    );
    assert_eq!(env.restorable(), live, "the live tree was touched");
}

#[test]
fn forged_list_nodes_are_refused_without_panic() {
    let env = Env::fixture();
    let stamp = env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let a = Id::hash(b"a");
    let leaf = Node::Full(vec![a, a, a]).encode();
    // An interior node whose child covers a thousand chunks but holds 3
    // (a count a 2.5 KB registry could have, so the manifest passes and
    // the nodes are what is refused; a count above the file's bytes is
    // refused with the manifest).
    let lying = |leaf: Id| {
        Node::Interior {
            level: 1,
            children: vec![(leaf, 1_000)],
        }
        .encode()
    };
    let leaf_id = put_blobs(&env, &[leaf])[0];
    let root = put_blobs(&env, &[lying(leaf_id)])[0];
    let bad_count = ListRef {
        root: Some(root),
        chunks: 1_000,
        levels: 1,
    };
    // A node of level 1 standing where level 3 belongs (and a root that
    // names itself one level up: a cycle through the level check).
    let wrong_level = ListRef {
        root: Some(root),
        chunks: 1_000,
        levels: 3,
    };
    for (what, list) in [("bad count", bad_count), ("wrong level", wrong_level)] {
        forge_list(&env, &stamp, "project-registry.json", list);
        let out = env.run(&["validate", &stamp]);
        assert_eq!(out.code, 3, "{what}: {out:?}");
        let errors = out.strings("errors").join(" ");
        assert!(
            errors.contains(&format!("chunk_corrupt:{}", leaf_id.to_hex()))
                || errors.contains(&format!("chunk_corrupt:{}", root.to_hex())),
            "{what}: {errors}"
        );
        let out = env.run(&["dump", &stamp, "project-registry.json"]);
        assert_eq!(out.code, 3, "{what}: {out:?}");
        let out = env.run(&["verify"]);
        assert_eq!(out.code, 3, "{what}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    }
}

#[test]
fn gc_keeps_every_reachable_list_blob_and_drops_the_others() {
    let env = Env::fixture();
    let big = add_big_bin(&env);
    let mut stamps = Vec::new();
    for day in 1..=4 {
        // One block of the big file changes a day: delta leaves chained
        // on the previous snapshots' leaves.
        let mut bytes = fs::read(&big).unwrap();
        bytes[day * 4096 + 1] ^= 0x5a;
        fs::write(&big, bytes).unwrap();
        stamps.push(env.create_on(&format!("2026-05-0{day}"), &["--chroma"]));
    }
    // The middle snapshots go: the last one's deltas patch their leaves.
    let dropped_root = list_of(&env, &stamps[2], &chroma_rel(&env, &big))
        .root
        .unwrap();
    let last = list_of(&env, &stamps[3], &chroma_rel(&env, &big));
    assert_eq!(last.levels, 1, "{last:?}");
    env.ok(&["forget", "--confirm", &stamps[1], &stamps[2]]);
    let reached_before: std::collections::BTreeSet<Id> = [&stamps[0], &stamps[3]]
        .iter()
        .flat_map(|s| env.reachable_ids(s))
        .collect();
    assert!(!reached_before.contains(&dropped_root));
    let stored_before = env
        .open_store()
        .load_index()
        .unwrap()
        .chunk_count()
        .unwrap() as u64;
    let gc = env.ok(&["gc", "--confirm"]);
    // gc's mark is exact: live is what the remaining trees reach (delta
    // chains through the forgotten snapshots' leaves included), dead the rest.
    assert_eq!(u(&gc, "chunks_live"), reached_before.len() as u64, "{gc}");
    assert_eq!(
        u(&gc, "chunks_dead"),
        stored_before - reached_before.len() as u64,
        "{gc}"
    );
    assert!(u(&gc, "chunks_dead") >= 2, "{gc}");
    for s in [&stamps[0], &stamps[3]] {
        let out = env.run(&["validate", s]);
        assert_eq!(out.code, 0, "{s} after gc: {out:?}");
    }
    let store = env.open_store();
    let index = store.load_index().unwrap();
    for id in &reached_before {
        assert!(index.contains(id).unwrap(), "reachable {id} dropped by gc");
    }
    assert_eq!(env.ok(&["verify"])["ok"], true);
}

// ---- format 1 ----------------------------------------------------------------

fn format1(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/format1")
        .join(kind)
}

fn password_file() -> PathBuf {
    format1("password")
}

#[test]
fn writes_to_a_format_1_store_are_refused_and_change_nothing() {
    let env = Env::tiny();
    copy_tree(&format1("plain"), &env.store);
    let before = tree_hashes(&env.store);
    let stamp = "20260102T000000Z";
    for args in [
        vec!["create", "--chroma"],
        vec!["gc", "--confirm"],
        vec!["tag", stamp, "--add", "x"],
        vec!["forget", "--confirm", stamp],
        vec!["cleanup", "--confirm"],
        vec!["verify", "--repair"],
        vec!["policy", "set", "--keep-last", "3"],
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert_eq!(out.error_code(), "store_format_read_only", "{args:?}");
        let message = out.json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("atosnap init --store NEW") && message.contains("copy"),
            "{args:?}: {message}"
        );
        assert_eq!(
            tree_hashes(&env.store),
            before,
            "{args:?} changed the store"
        );
    }
    // A copy into it is refused too (the source is a new format-2 store).
    let src = Env::tiny();
    src.create(&[]);
    let mut cmd = src.command();
    cmd.args(["copy", "--to", env.store.to_str().unwrap()]);
    let out = support::run_cmd(&mut cmd);
    assert_eq!(out.error_code(), "store_format_read_only", "{out:?}");
    assert_eq!(
        tree_hashes(&env.store),
        before,
        "copy --to changed the store"
    );
}

#[test]
fn copy_upgrades_format_1_stores_to_format_2() {
    for kind in ["plain", "repokey"] {
        let env = Env::tiny();
        copy_tree(&format1(kind), &env.store);
        let pw = password_file();
        let dest = env.path("v2");
        let with_pw = |store: &Path, args: &[&str]| -> Value {
            let mut cmd = env.bare_command();
            cmd.arg("--quiet")
                .arg("--store")
                .arg(store)
                .arg("--password-file")
                .arg(&pw)
                .args(args);
            let out = support::run_cmd(&mut cmd);
            assert_eq!(out.code, 0, "{kind} {args:?}: {out:?}");
            out.json
        };
        let mut init = env.bare_command();
        init.args(["--quiet", "init", "--store"]).arg(&dest);
        assert_eq!(support::run_cmd(&mut init).code, 0);
        let copied = with_pw(&env.store, &["copy", "--to", dest.to_str().unwrap()]);
        let stamps = support::strings(&copied["snapshots_copied"]);
        assert_eq!(stamps.len(), 3, "{copied}");
        let config: Value =
            serde_json::from_slice(&fs::read(dest.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["format_version"], 2);
        for s in &stamps {
            assert_eq!(
                with_pw(&dest, &["validate", s])["valid"],
                true,
                "{kind} {s}"
            );
            let src_ls = with_pw(&env.store, &["ls", s, "--long"]);
            let dst_ls = with_pw(&dest, &["ls", s, "--long"]);
            assert_eq!(src_ls["entries"], dst_ls["entries"], "{kind} ls {s}");
            for e in src_ls["entries"].as_array().unwrap() {
                if e["kind"] != "file" {
                    continue;
                }
                let path = e["path"].as_str().unwrap();
                let out = env.path("dumped");
                let dump =
                    |store: &Path| with_pw(store, &["dump", s, path, "-o", out.to_str().unwrap()]);
                assert_eq!(
                    dump(&env.store)["blake3"],
                    dump(&dest)["blake3"],
                    "{kind} dump {s} {path}"
                );
            }
            let m = atosnap::store::Store::open(
                &atosnap::store::location::StoreAddress::local(&dest),
                &atosnap::store::key::Secrets::none(),
            )
            .unwrap()
            .read_manifest(&Stamp::parse(s).unwrap(), ReadFrom::Cache)
            .unwrap();
            assert!(m
                .entries
                .iter()
                .filter_map(|e| e.file())
                .all(|f| matches!(f.list, ChunkList::Tree(_))));
        }
        for pair in stamps.windows(2) {
            let args = ["diff", &pair[0], &pair[1]];
            let a = with_pw(&env.store, &args);
            let b = with_pw(&dest, &args);
            for k in ["added", "removed", "changed", "unchanged_files"] {
                assert_eq!(a[k], b[k], "{kind} diff {pair:?} {k}");
            }
        }
        assert_eq!(with_pw(&dest, &["verify"])["ok"], true);
    }
}
