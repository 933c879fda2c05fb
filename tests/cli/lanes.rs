//! Frame codec 3, zstd over byte lanes (docs/FORMAT.md, "Frame codecs"):
//! a store that declares `frames.lanes` stores HNSW floats in lanes and
//! every command reads them back; damage in a lanes frame is named like
//! any frame's; a store made before the codec never gets a lanes frame,
//! neither from `create` nor moved in by `copy`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;

use atosnap::store::key::Secrets;
use atosnap::store::location::StoreAddress;
use atosnap::store::pack2::Codec;
use atosnap::store::{Object, Store};

use super::copy::{on, restored, validate_ok, verify_ok};
use super::frames::{
    a_live_restore_is_refused, chunk_ids_of, frame_of, init, ok, restore_to_matches_live,
    verify_names_the_frame,
};
use crate::support::{run_cmd, Runtime as Env};

/// Frames per codec over every pack of the store.
fn codecs(dir: &Path, secrets: &Secrets) -> BTreeMap<u8, usize> {
    let store = Store::open(&StoreAddress::local(dir), secrets).unwrap();
    let index = store.load_index().unwrap();
    let mut out = BTreeMap::new();
    for p in index.packs() {
        let layout = store.read_pack_index(&Object::Pack(p.id), p.size).unwrap();
        for f in &layout.frames {
            *out.entry(f.codec as u8).or_insert(0) += 1;
        }
    }
    out
}

fn lanes_frames(dir: &Path, secrets: &Secrets) -> usize {
    codecs(dir, secrets)
        .get(&(Codec::ZstdLanes as u8))
        .copied()
        .unwrap_or(0)
}

fn stamp_of(v: &Value) -> String {
    v["stamp"].as_str().unwrap().to_string()
}

/// The HNSW file's path in the snapshot, as the manifest names it.
fn hnsw_path(env: &Env) -> Vec<u8> {
    let rel = env.hnsw_bin();
    let rel = rel.strip_prefix(env.chroma()).unwrap();
    format!("chroma/{}", rel.display()).into_bytes()
}

#[test]
fn hnsw_floats_are_stored_in_lanes_and_every_reader_gets_them_back() {
    for encrypted in [false, true] {
        let env = Env::fixture();
        let pw = init(&env, &env.store, encrypted);
        let config: Value =
            serde_json::from_slice(&fs::read(env.store.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["frames"]["lanes"], true, "{config}");
        let s1 = stamp_of(&ok(&env, &env.store, &["create", "--chroma"], pw));
        let secrets = if encrypted {
            Secrets::from_password("frames")
        } else {
            Secrets::none()
        };
        let by_codec = codecs(&env.store, &secrets);
        assert!(lanes_frames(&env.store, &secrets) > 0, "{by_codec:?}");
        assert!(
            by_codec.get(&(Codec::Zstd as u8)).is_some_and(|&n| n > 0),
            "SQLite pages stay plain zstd: {by_codec:?}"
        );

        validate_ok(&env, &env.store, &s1, pw);
        verify_ok(&env, &env.store, pw);
        restore_to_matches_live(&env, &s1, pw, &encrypted.to_string());

        // A flipped byte in the frame of an HNSW block: named like any
        // frame's damage, and no restore takes it.
        let store = Store::open(&StoreAddress::local(&env.store), &secrets).unwrap();
        // One from the middle: the file's first frame may begin with the
        // end of another file.
        let blocks = chunk_ids_of(&store, &s1, &hnsw_path(&env));
        let id = blocks[blocks.len() / 2];
        let index = store.load_index().unwrap();
        let loc = index.get(&id).unwrap().unwrap();
        assert_eq!(loc.codec(), Codec::ZstdLanes, "the HNSW block's frame");
        drop(index);
        let (ids, name, offset, len) = frame_of(&store, &id);
        drop(store);
        crate::support::flip_bit(&env.store.join(&name), offset + len / 3);
        verify_names_the_frame(&env, pw, &name, &ids, encrypted);
        a_live_restore_is_refused(&env, &s1, pw);
    }
}

/// Makes the store at `dir` look like one made before the codec: its
/// config without `frames.lanes`.
fn forget_lanes(dir: &Path) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["frames"].as_object_mut().unwrap().remove("lanes");
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

#[test]
fn a_store_made_before_lanes_never_gets_a_lanes_frame() {
    let env = Env::fixture();
    init(&env, &env.store, false);
    forget_lanes(&env.store);
    let s1 = stamp_of(&ok(&env, &env.store, &["create", "--chroma"], &[]));
    assert_eq!(lanes_frames(&env.store, &Secrets::none()), 0);
    let config = fs::read_to_string(env.store.join("config.json")).unwrap();
    assert!(!config.contains("lanes"), "left as it was: {config}");

    // New vectors (each float halved: still floats, all new blocks) in a
    // lanes store of the same (unkeyed) chunk ids: copy from it into the
    // old store re-encodes their frames; into a lanes store they move.
    let hnsw = env.hnsw_bin();
    let halved: Vec<u8> = fs::read(&hnsw)
        .unwrap()
        .chunks(4)
        .flat_map(|w| match <[u8; 4]>::try_from(w) {
            Ok(w) => (f32::from_le_bytes(w) * 0.5).to_le_bytes().to_vec(),
            Err(_) => w.to_vec(),
        })
        .collect();
    fs::write(&hnsw, halved).unwrap();
    let lanes = env.dir.path().join("lanes");
    ok(&env, &lanes, &["init"], &[]);
    let s2 = stamp_of(&ok(
        &env,
        &lanes,
        &["create", "--chroma", "--at", "2030-01-01T00:00:00Z"],
        &[],
    ));
    assert!(lanes_frames(&lanes, &Secrets::none()) > 0);
    let copy = |from: &Path, to: &Path| {
        let mut cmd = on(&env, from);
        cmd.args(["copy", "--to"]).arg(to);
        let out = run_cmd(&mut cmd);
        assert_eq!(out.code, 0, "{out:?}");
    };
    copy(&lanes, &env.store);
    assert_eq!(lanes_frames(&env.store, &Secrets::none()), 0);
    validate_ok(&env, &env.store, &s2, &[]);
    verify_ok(&env, &env.store, &[]);
    assert_eq!(
        restored(&env, &env.store, &s2, &[]),
        restored(&env, &lanes, &s2, &[])
    );

    let fresh = env.dir.path().join("fresh");
    ok(&env, &fresh, &["init"], &[]);
    copy(&lanes, &fresh);
    assert!(lanes_frames(&fresh, &Secrets::none()) > 0);
    verify_ok(&env, &fresh, &[]);
    // And the old store's own snapshot is still what it was.
    validate_ok(&env, &env.store, &s1, &[]);
}
