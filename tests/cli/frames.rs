//! Store format 2's packs (issue 15, docs/design/format2.md §1.3): a new
//! store writes `ATOPACK2` packs of zstd frames and every command reads
//! them; a damaged frame names every chunk in it; gc rewrites partly-live
//! frames; copy re-frames chunks, from format-1 stores too.

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use atosnap::id::Id;
use atosnap::store::key::Secrets;
use atosnap::store::location::StoreAddress;
use atosnap::store::{Object, Store};

use super::copy::{on, restored, stamps_of, validate_ok, verify_ok};
use crate::support::{copy_tree, run_cmd, strings, truncate, Out, Runtime as Env};

pub(super) const PW: &[(&str, &str)] = &[("ATOSNAP_PASSWORD", "frames")];

pub(super) fn run(env: &Env, store: &Path, args: &[&str], pw: &[(&str, &str)]) -> Out {
    let out = run_cmd(on(env, store).args(args).envs(pw.iter().copied()));
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    out
}

pub(super) fn ok(env: &Env, store: &Path, args: &[&str], pw: &[(&str, &str)]) -> Value {
    let out = run(env, store, args, pw);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out.json
}

pub(super) fn init(
    env: &Env,
    store: &Path,
    encrypted: bool,
) -> &'static [(&'static str, &'static str)] {
    if encrypted {
        ok(env, store, &["init", "--encryption", "repokey"], PW);
        PW
    } else {
        ok(env, store, &["init"], &[]);
        &[]
    }
}

fn packs(store: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(store.join("objects"))
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

fn assert_all_v2(store: &Path) {
    let all = packs(store);
    assert!(!all.is_empty());
    for p in all {
        let head = fs::read(&p).unwrap();
        assert_eq!(&head[..8], b"ATOPACK2", "{p:?}");
    }
}

/// The chunk ids of the frame holding `id`, its pack's object name and
/// the frame's (offset, stored length).
pub(super) fn frame_of(store: &Store, id: &Id) -> (Vec<Id>, String, u64, u64) {
    let index = store.load_index().unwrap();
    let loc = index.get(id).unwrap().expect("indexed");
    let info = index.pack(loc.pack).clone();
    let name = Object::Pack(info.id).name();
    let layout = store
        .read_pack_index(&Object::Pack(info.id), info.size)
        .unwrap();
    let fi = layout.frame_at(loc.frame_offset).unwrap();
    let f = layout.frames[fi];
    let ids = layout.frame_chunks(fi).iter().map(|c| c.id).collect();
    (ids, name, f.offset as u64, f.stored_len as u64)
}

/// Restores `stamp` into a folder and checks it holds the live Chroma
/// tree and registry, byte for byte.
pub(super) fn restore_to_matches_live(env: &Env, stamp: &str, pw: &[(&str, &str)], label: &str) {
    let to = env.dir.path().join(format!("restored-{label}"));
    ok(
        env,
        &env.store,
        &["restore", stamp, "--to", to.to_str().unwrap()],
        pw,
    );
    assert_eq!(
        crate::support::restorable_tree(&to.join("chroma"), &to.join("project-registry.json")),
        env.restorable()
    );
}

/// Runs verify over a store with one damaged frame (of chunk `ids`, in
/// pack `name`): exit 3, the pack named, and the chunks named corrupt all
/// of that frame (every one of them when the frame is sealed: it no
/// longer authenticates; in an unencrypted store zstd keeps no checksum,
/// so a flipped literal garbles the chunks it lands in, each named, and a
/// broken block names them all).
pub(super) fn verify_names_the_frame(
    env: &Env,
    pw: &[(&str, &str)],
    name: &str,
    ids: &[Id],
    encrypted: bool,
) {
    let out = run(env, &env.store, &["verify"], pw);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        strings(&out.json["damaged_objects"]).contains(&name.to_string()),
        "{out:?}"
    );
    let corrupt: BTreeSet<String> = strings(&out.json["corrupt"]).into_iter().collect();
    let frame: BTreeSet<String> = ids.iter().map(Id::to_hex).collect();
    assert!(
        !corrupt.is_empty() && corrupt.is_subset(&frame),
        "{corrupt:?}"
    );
    if encrypted {
        assert_eq!(corrupt, frame);
    }
}

/// With the live HNSW file changed (so the restore needs the store's
/// chunks of it), a live restore of `stamp` from a damaged store is
/// refused (exit 3) and the live file is left as it was.
pub(super) fn a_live_restore_is_refused(env: &Env, stamp: &str, pw: &[(&str, &str)]) {
    let hnsw = env.hnsw_bin();
    fs::write(&hnsw, b"changed live").unwrap();
    let out = run(
        env,
        &env.store,
        &["restore", stamp, "--confirm-service-stopped"],
        pw,
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(fs::read(&hnsw).unwrap(), b"changed live", "live untouched");
}

#[test]
fn new_stores_write_format2_packs_and_round_trip_plain_and_repokey() {
    for encrypted in [false, true] {
        let env = Env::fixture();
        let pw = init(&env, &env.store, encrypted);
        let config: Value =
            serde_json::from_slice(&fs::read(env.store.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["format_version"], 2);
        assert_eq!(config["frames"]["max_chunks"], 256);
        assert_eq!(config["frames"]["max_bytes"], 1 << 20);
        assert_eq!(config["compression"]["level"], 3);
        let s1 = ok(&env, &env.store, &["create", "--chroma"], pw)["stamp"]
            .as_str()
            .unwrap()
            .to_string();
        assert_all_v2(&env.store);
        if !encrypted {
            // Frames hold many chunks: far fewer frames than chunks.
            let store = env.open_store();
            let index = store.load_index().unwrap();
            let p = index.packs()[0].clone();
            let layout = store.read_pack_index(&Object::Pack(p.id), p.size).unwrap();
            assert!(layout.frames.len() * 4 < layout.chunks.len(), "{layout:?}");
        }
        validate_ok(&env, &env.store, &s1, pw);
        verify_ok(&env, &env.store, pw);
        // Restored files are the live ones, byte for byte.
        restore_to_matches_live(&env, &s1, pw, &encrypted.to_string());
        // The restore the copy helpers make agrees too (db included).
        let tree = restored(&env, &env.store, &s1, pw);
        assert!(tree.contains_key("chroma"), "{tree:?}");
    }
}

#[test]
fn a_flipped_frame_byte_names_the_chunks_of_the_frame_and_restore_refuses() {
    for encrypted in [false, true] {
        let env = Env::fixture();
        let pw = init(&env, &env.store, encrypted);
        let s1 = ok(&env, &env.store, &["create", "--chroma"], pw)["stamp"]
            .as_str()
            .unwrap()
            .to_string();
        let secrets = if encrypted {
            Secrets::from_password("frames")
        } else {
            Secrets::none()
        };
        let store = Store::open(&StoreAddress::local(&env.store), &secrets).unwrap();
        // A page of the db, in a zstd frame of several chunks.
        let manifest = store
            .read_manifest(
                &atosnap::stamp::Stamp::parse(&s1).unwrap(),
                atosnap::store::ReadFrom::Cache,
            )
            .unwrap();
        let index = store.load_index().unwrap();
        let id = store
            .file_chunk_ids(&index, manifest.db().unwrap())
            .unwrap()[1];
        let (ids, name, offset, len) = frame_of(&store, &id);
        drop(store);
        assert!(ids.len() > 1, "a frame of several chunks");
        crate::support::flip_bit(&env.store.join(&name), offset + len / 2);

        verify_names_the_frame(&env, pw, &name, &ids, encrypted);

        let out = run(&env, &env.store, &["validate", &s1], pw);
        assert_eq!(out.code, 3, "{out:?}");
        assert!(out.stdout.contains("chunk_corrupt:"), "{out:?}");

        // The live files differ from the snapshot, so the restore needs
        // the damaged frame (chunks the live files already hold are
        // taken from them, not from the store).
        fs::write(env.db(), b"changed live db").unwrap();
        let db_before = fs::read(env.db()).unwrap();
        a_live_restore_is_refused(&env, &s1, pw);
        assert_eq!(fs::read(env.db()).unwrap(), db_before);
    }
}

#[test]
fn a_truncated_v2_pack_is_damaged_not_a_panic() {
    let env = Env::fixture();
    init(&env, &env.store, false);
    let s1 = env.create_stamp(&["--chroma"]);
    for p in packs(&env.store) {
        let len = fs::metadata(&p).unwrap().len();
        truncate(&p, len / 2);
    }
    let out = run(&env, &env.store, &["verify"], &[]);
    assert_eq!(out.code, 3, "{out:?}");
    let named = strings(&out.json["damaged_objects"]).len()
        + out.json["unreadable"].as_object().map_or(0, |m| m.len());
    assert!(named > 0, "{out:?}");
    let out = run(&env, &env.store, &["validate", &s1], &[]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn gc_after_forget_rewrites_partly_live_frames_and_keeps_every_snapshot() {
    let env = Env::tiny();
    init(&env, &env.store, false);
    let big = env.chroma().join("seg/data_level0.bin");
    fs::write(&big, crate::support::pseudo_random(7, 512 * 1024)).unwrap();
    let s1 = env.create_stamp(&["--chroma"]);
    // The big file's chunks shared frames with the files captured around
    // it; after it changes and s1 goes, those frames are partly live.
    fs::write(&big, crate::support::pseudo_random(8, 512 * 1024)).unwrap();
    let s2 = env.create_stamp(&["--chroma"]);
    // forget's dry run prices the rewrite; --confirm runs gc.
    let dry = ok(&env, &env.store, &["forget", &s1], &[]);
    assert!(dry["bytes_reclaimable"].as_u64().unwrap() > 0, "{dry}");
    let done = ok(&env, &env.store, &["forget", &s1, "--confirm"], &[]);
    let gc = &done["gc"];
    assert!(!strings(&gc["rewritten_packs"]).is_empty(), "{done}");
    assert!(!strings(&gc["written_packs"]).is_empty(), "{done}");
    assert_all_v2(&env.store);
    validate_ok(&env, &env.store, &s2, &[]);
    let v = verify_ok(&env, &env.store, &[]);
    assert_eq!(v["reclaimable_bytes"], 0, "{v}");
    let again = ok(&env, &env.store, &["gc"], &[]);
    assert!(strings(&again["would_rewrite_packs"]).is_empty(), "{again}");
    assert!(strings(&again["would_delete_packs"]).is_empty(), "{again}");
}

#[test]
fn copy_reframes_between_v2_stores_and_from_a_format1_store() {
    // v2 -> v2 (plain -> repokey, so every chunk is re-hashed too).
    let env = Env::fixture();
    init(&env, &env.store, false);
    let s1 = env.create_stamp(&["--chroma"]);
    let dest = env.dir.path().join("dest");
    init(&env, &dest, true);
    let mut cmd = on(&env, &env.store);
    cmd.args(["copy", "--to"])
        .arg(&dest)
        .envs([("ATOSNAP_TO_PASSWORD", "frames")].iter().copied());
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    assert_all_v2(&dest);
    validate_ok(&env, &dest, &s1, PW);
    assert_eq!(
        restored(&env, &dest, &s1, PW),
        restored(&env, &env.store, &s1, &[])
    );

    // The format-1 fixture into a new (format-2) store: its chunks are
    // re-framed at the destination.
    let v1 = env.dir.path().join("v1");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/format1/plain"),
        &v1,
    );
    let up = env.dir.path().join("up");
    init(&env, &up, false);
    let mut cmd = on(&env, &v1);
    cmd.args(["copy", "--to"]).arg(&up);
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    assert_all_v2(&up);
    let stamps = stamps_of(&env, &v1, &[]);
    assert_eq!(stamps_of(&env, &up, &[]), stamps);
    for s in &stamps {
        validate_ok(&env, &up, s, &[]);
        assert_eq!(restored(&env, &up, s, &[]), restored(&env, &v1, s, &[]));
    }
    verify_ok(&env, &up, &[]);
}

/// A pack that the background publisher cannot publish (here `objects/`
/// is a file, so no pack folder can be made) fails the create, naming
/// the pack, and no snapshot is published; once the store is whole again
/// the next create succeeds. Small packs make the failure land while the
/// capture is still reading (the pipeline's writer stage, not the final
/// flush).
#[test]
fn a_pack_that_cannot_be_published_fails_create_naming_it_and_no_snapshot_is_left() {
    let env = Env::fixture();
    env.init_with_pack_size(64 * 1024);
    let objects = env.store.join("objects");
    let _ = fs::remove_dir_all(&objects);
    fs::write(&objects, b"not a folder").unwrap();
    let r = env.run(&["create", "--chroma"]);
    assert_ne!(r.code, 0, "{}", r.json);
    let message = r.json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("publish pack")
            && message.contains("objects/")
            && message.contains(".pack"),
        "{}",
        r.json
    );
    fs::remove_file(&objects).unwrap();
    fs::create_dir(&objects).unwrap();
    assert_eq!(env.ok(&["list"])["snapshots"], serde_json::json!([]));
    let created = env.ok(&["create", "--chroma"]);
    assert_eq!(created["validated"], true, "{created}");
    env.assert_healthy();
}

/// List blobs get frames of their own: the frame holding a file's list
/// root holds list blobs only, never chunk data (which a reader of the
/// tree would otherwise decode along with every blob). A file's blobs
/// are stored while its chunks are, so they would else be strewn over
/// the chunk frames.
#[test]
fn list_blobs_are_framed_apart_from_chunk_data() {
    let env = Env::fixture();
    env.ok(&["init"]);
    let stamp = env.ok(&["create", "--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let m = env.manifest(&stamp);
    let files: Vec<String> = m
        .entries
        .iter()
        .filter(|e| e.file().is_some_and(|f| f.size > 0))
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    let chunks: BTreeSet<Id> = files
        .iter()
        .flat_map(|f| env.file_chunks(&stamp, f))
        .collect();
    let store = env.open_store();
    for f in &files {
        let root = env.list_root(&stamp, f);
        let (ids, ..) = frame_of(&store, &root);
        let data: Vec<&Id> = ids.iter().filter(|id| chunks.contains(id)).collect();
        assert!(
            data.is_empty(),
            "{f}: its root's frame holds chunks {data:?}"
        );
    }
}

/// The chunk ids, in order, of the file at `path` in snapshot `stamp`.
pub(super) fn chunk_ids_of(store: &Store, stamp: &str, path: &[u8]) -> Vec<Id> {
    let manifest = store
        .read_manifest(
            &atosnap::stamp::Stamp::parse(stamp).unwrap(),
            atosnap::store::ReadFrom::Cache,
        )
        .unwrap();
    let entry = manifest.entries.iter().find(|e| e.path == path).unwrap();
    let index = store.load_index().unwrap();
    store.file_chunk_ids(&index, entry.file().unwrap()).unwrap()
}

/// Reads the stored bytes of a frame (as `frame_of` names it).
fn frame_bytes(store_dir: &Path, name: &str, offset: u64, len: u64) -> Vec<u8> {
    let pack = fs::read(store_dir.join(name)).unwrap();
    pack[offset as usize..(offset + len) as usize].to_vec()
}

#[test]
fn gc_moves_a_wholly_live_frame_as_it_is_stored() {
    // A repokey store: a re-encoded frame gets a new nonce, so equal bytes
    // prove the frame was moved, not decoded and sealed again.
    let env = Env::tiny();
    let pw = init(&env, &env.store, true);
    let config_path = env.store.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["frames"]["max_chunks"] = Value::from(8);
    fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    // 64 blocks: 8 frames of 8; three quarters change, so after s1 goes
    // its pack is sparse, and the frame of block 0 is wholly live.
    let big = env.chroma().join("seg/data_level0.bin");
    fs::write(&big, crate::support::pseudo_random(7, 256 * 1024)).unwrap();
    let s1 = ok(&env, &env.store, &["create", "--chroma"], pw)["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = fs::read(&big).unwrap();
    bytes[64 * 1024..].copy_from_slice(&crate::support::pseudo_random(8, 192 * 1024));
    fs::write(&big, bytes).unwrap();
    let s2 = ok(&env, &env.store, &["create", "--chroma"], pw)["stamp"]
        .as_str()
        .unwrap()
        .to_string();

    let open = || {
        Store::open(
            &StoreAddress::local(&env.store),
            &Secrets::from_password("frames"),
        )
        .unwrap()
    };
    let first_block = chunk_ids_of(&open(), &s2, b"chroma/seg/data_level0.bin")[0];
    let (ids, name, offset, len) = frame_of(&open(), &first_block);
    let before = frame_bytes(&env.store, &name, offset, len);

    let done = ok(&env, &env.store, &["forget", &s1, "--confirm"], pw);
    assert!(
        !strings(&done["gc"]["rewritten_packs"]).is_empty(),
        "{done}"
    );
    assert!(!env.store.join(&name).exists(), "the sparse pack is gone");
    let (ids_after, name_after, offset_after, len_after) = frame_of(&open(), &first_block);
    assert_ne!(name_after, name);
    assert_eq!(ids_after, ids, "the same chunks in the same frame");
    assert_eq!(
        frame_bytes(&env.store, &name_after, offset_after, len_after),
        before,
        "the frame's stored bytes moved unchanged"
    );
    validate_ok(&env, &env.store, &s2, pw);
    verify_ok(&env, &env.store, pw);
}

/// The stored bytes of every frame of every pack of a store.
fn all_frames(dir: &Path, secrets: &Secrets) -> BTreeSet<Vec<u8>> {
    let store = Store::open(&StoreAddress::local(dir), secrets).unwrap();
    let index = store.load_index().unwrap();
    let mut out = BTreeSet::new();
    for p in index.packs() {
        let name = Object::Pack(p.id).name();
        let layout = store.read_pack_index(&Object::Pack(p.id), p.size).unwrap();
        for f in &layout.frames {
            out.insert(frame_bytes(
                dir,
                &name,
                f.offset as u64,
                f.stored_len as u64,
            ));
        }
    }
    out
}

#[test]
fn copy_between_stores_of_one_key_moves_frames_as_they_are_stored() {
    let env = Env::fixture();
    let pw = init(&env, &env.store, true);
    // 512 blocks: whole frames of this one file (frames close at 256
    // chunks or 1 MiB), as a large HNSW file makes them.
    let big = env.chroma().join("seg/data_level0.bin");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    fs::write(&big, crate::support::pseudo_random(11, 2 << 20)).unwrap();
    let s1 = ok(&env, &env.store, &["create", "--chroma"], pw)["stamp"]
        .as_str()
        .unwrap()
        .to_string();
    // A second store under the same master key and parameters (its
    // config and key file cloned): chunks keep their ids and seals.
    let dest = env.dir.path().join("dest");
    fs::create_dir_all(dest.join("keys")).unwrap();
    fs::copy(env.store.join("config.json"), dest.join("config.json")).unwrap();
    fs::copy(
        env.store.join("keys/repokey.json"),
        dest.join("keys/repokey.json"),
    )
    .unwrap();
    let mut cmd = on(&env, &env.store);
    cmd.args(["copy", "--to"])
        .arg(&dest)
        .envs(pw.iter().copied())
        .envs([("ATOSNAP_TO_PASSWORD", "frames")].iter().copied());
    let out = run_cmd(&mut cmd);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["chunk_ids_rewritten"], false, "{out:?}");
    validate_ok(&env, &dest, &s1, PW);
    verify_ok(&env, &dest, PW);
    assert_eq!(
        restored(&env, &dest, &s1, PW),
        restored(&env, &env.store, &s1, PW)
    );
    // Sealed with fresh nonces, a re-encoded frame would differ: the big
    // file's frames arrived as the source stores them. (Frames that mix
    // files are re-framed: a copy of some snapshots sends no other one's
    // chunks.)
    let secrets = Secrets::from_password("frames");
    let store = Store::open(&StoreAddress::local(&env.store), &secrets).unwrap();
    let middle = chunk_ids_of(&store, &s1, b"chroma/seg/data_level0.bin")[256];
    let (_, name, offset, len) = frame_of(&store, &middle);
    drop(store);
    let moved = frame_bytes(&env.store, &name, offset, len);
    assert!(all_frames(&dest, &secrets).contains(&moved));
}
