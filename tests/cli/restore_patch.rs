//! `restore` patching Chroma files in place (`src/ops/restore/patch.rs`):
//! a file that mostly holds the snapshot's blocks keeps its inode and gets
//! only what differs; one that mostly differs, or has other links, is
//! replaced whole; a restore killed once a patch is committed is finished
//! by the next one.

use crate::support::Runtime as Rt;
use crate::support::*;

const SEGMENT: &str = "e8763d70-0924-4389-9e69-cddb1f90792c";

fn seg(rt: &Rt, name: &str) -> std::path::PathBuf {
    rt.chroma().join(SEGMENT).join(name)
}

/// The snapshot's tree, as a clean restore into an empty folder leaves it.
fn reference(rt: &Rt, stamp: &str) -> std::collections::BTreeMap<Vec<u8>, Node> {
    let to = rt.path("reference");
    let _ = std::fs::remove_dir_all(&to);
    rt.ok(&["restore", stamp, "--to", to.to_str().unwrap()]);
    restorable_tree(&to.join("chroma"), &to.join("project-registry.json"))
}

#[test]
fn a_file_with_a_few_changed_blocks_is_patched_in_place() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let want = reference(&rt, &s1);
    let data = seg(&rt, "data_level0.bin");
    let size = std::fs::metadata(&data).unwrap().len();
    assert!(
        size > 8 * 4096,
        "the fixture's HNSW file has blocks: {size}"
    );
    flip_bit(&data, 4096 + 3);
    flip_bit(&data, 5 * 4096 + 9);
    // A longer file: the tail past the snapshot's size is cut off.
    let mut grown = std::fs::read(&data).unwrap();
    grown.extend_from_slice(&[7u8; 5000]);
    std::fs::write(&data, &grown).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let inode = ino(&data);
    let r = rt.restore_live(&s1);
    assert_eq!(r["chroma_files_written"], 1, "{r}");
    assert_eq!(r["chunks_fetched"], 2, "the two blocks only: {r}");
    assert_eq!(ino(&data), inode, "patched, not replaced");
    assert_same_tree!(rt.restorable(), want, "content, size, mode and mtime");
    assert!(files_named(&rt.runtime, ".atosnap-restore-").is_empty());
    rt.ok(&["verify"]);
}

#[test]
fn a_file_that_mostly_differs_or_has_other_links_is_replaced_whole() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let want = reference(&rt, &s1);
    let data = seg(&rt, "data_level0.bin");
    let size = std::fs::metadata(&data).unwrap().len() as usize;
    // Every block differs: a patch would write it all twice.
    std::fs::write(&data, vec![0x5au8; size]).unwrap();
    let inode = ino(&data);
    rt.restore_live(&s1);
    assert_ne!(ino(&data), inode, "renamed over");
    assert_same_tree!(rt.restorable(), want);

    // One block differs, but another name links to the same inode: a
    // patch would change that file too, so this one is replaced and the
    // other keeps its bytes.
    flip_bit(&data, 4096 + 1);
    let link = rt.path("elsewhere.bin");
    std::fs::hard_link(&data, &link).unwrap();
    let linked = std::fs::read(&link).unwrap();
    rt.restore_live(&s1);
    assert_ne!(ino(&data), ino(&link), "the link is left alone");
    assert_eq!(std::fs::read(&link).unwrap(), linked);
    assert_same_tree!(rt.restorable(), want);
}

#[test]
fn a_restore_killed_after_committing_a_patch_is_finished_by_the_next() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let want = reference(&rt, &s1);
    let data = seg(&rt, "data_level0.bin");
    flip_bit(&data, 2 * 4096 + 5);
    let changed = std::fs::read(&data).unwrap();
    let inode = ino(&data);
    let point = format!("restore:patch-committed:chroma/{SEGMENT}/data_level0.bin");
    let Out { code, stderr, .. } = rt.run_env(
        &["restore", &s1, "--confirm-service-stopped"],
        &[("ATOSNAP_FAILPOINT", point.as_str())],
    );
    assert_eq!(code, 137, "{point} was not reached: {stderr}");
    // Committed, not yet applied: the file as it was, its patch beside it.
    assert_eq!(std::fs::read(&data).unwrap(), changed);
    let patches = files_named(&rt.chroma().join(SEGMENT), ".atosnap-restore-");
    assert_eq!(patches.len(), 1, "{patches:?}");

    // A snapshot taken meanwhile is written but never reported as good:
    // it names the half-restored file, and a restore of it is refused.
    let c = rt.create(&["--chroma"]);
    assert_eq!(c["validated"], false, "{c}");
    let errors = strings(&c["validation_errors"]);
    let named = format!("restore_interrupted: chroma/{SEGMENT}/data_level0.bin: ");
    assert!(errors.iter().any(|e| e.starts_with(&named)), "{c}");
    let torn = c["stamp"].as_str().unwrap();
    assert_eq!(rt.run(&["validate", torn]).code, 3);
    let into = rt.dir.path().join("torn");
    let refused = rt.run(&["restore", torn, "--to", &into.to_string_lossy()]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    // The next restore of this tree finishes it before it plans: its
    // plan then finds the file already as the snapshot has it.
    let r = rt.restore_live(&s1);
    assert_eq!(r["chroma_files_written"], 0, "{r}");
    assert_eq!(r["chunks_fetched"].as_u64(), Some(0), "{r}");
    assert!(
        files_named(&rt.runtime, ".atosnap-restore-").is_empty(),
        "{r}"
    );
    assert_eq!(ino(&data), inode);
    assert_same_tree!(rt.restorable(), want);
}

/// A restore killed between committing a patch and copying it, then the
/// service started again and writing that file in place: a later restore
/// drops the stale patch, and one refused (a damaged store) leaves what
/// the service wrote untouched. It once replayed the old patch over it
/// before validating anything.
#[test]
fn a_patch_overtaken_by_the_service_is_dropped_not_replayed() {
    use std::os::unix::fs::FileExt;
    let rt = Rt::fixture();
    rt.init_with_single_chunk_frames();
    let s1 = rt.create_stamp(&["--chroma"]);
    let data = seg(&rt, "data_level0.bin");
    flip_bit(&data, 2 * 4096 + 5);
    let point = format!("restore:patch-committed:chroma/{SEGMENT}/data_level0.bin");
    let args = [
        "restore",
        &s1,
        "--confirm-service-stopped",
        "--no-pre-snapshot",
    ];
    let Out { code, stderr, .. } = rt.run_env(&args, &[("ATOSNAP_FAILPOINT", point.as_str())]);
    assert_eq!(code, 137, "{point} was not reached: {stderr}");
    let service = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    service.write_all_at(&[0xAB; 4096], 2 * 4096).unwrap();
    drop(service);
    let live = std::fs::read(&data).unwrap();
    // A snapshot of it meanwhile is good: the file is whole (the service's
    // data), the patch only a leftover.
    let c = rt.create(&["--chroma"]);
    assert_eq!(c["validated"], true, "{c}");
    let warned = strings(&c["warnings"]);
    assert!(
        warned
            .iter()
            .any(|w| w.starts_with("stale restore patch: ")),
        "{c}"
    );
    // The registry must be fetched, and its chunk is damaged: refused.
    std::fs::write(rt.registry(), br#"{"projects": []}"#).unwrap();
    let id = rt.file_chunks(&s1, "project-registry.json")[0];
    let (pack, offset, len) = rt.chunk_location(&id);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[offset as usize..(offset + len) as usize].fill(0x5a);
    write_over(&pack, &bytes);
    let out = rt.run(&args);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        std::fs::read(&data).unwrap() == live,
        "a refused restore wrote the file"
    );
    assert!(
        files_named(&rt.chroma().join(SEGMENT), ".atosnap-restore-").is_empty(),
        "the stale patch is dropped"
    );
}

/// Two names of one inode (hard links) whose snapshot modes differ: the
/// file is replaced, which unlinks it, instead of its mode being set
/// through the shared inode (the last name set won, exit 0 with the tree
/// not the snapshot's, and every run again).
#[test]
fn a_matching_file_with_other_links_gets_its_own_mode_and_mtime() {
    use std::os::unix::fs::PermissionsExt;
    let rt = Rt::fixture();
    let (header, copy) = (seg(&rt, "header.bin"), seg(&rt, "copy.bin"));
    std::fs::copy(&header, &copy).unwrap();
    std::fs::set_permissions(&header, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s1 = rt.create_stamp(&["--chroma"]);
    let want = reference(&rt, &s1);
    std::fs::remove_file(&copy).unwrap();
    std::fs::hard_link(&header, &copy).unwrap();
    rt.restore_live(&s1);
    assert_same_tree!(rt.restorable(), want);
    let again = rt.restore_live(&s1);
    assert_eq!(again["chroma_files_written"], 0, "{again}");
}

/// A disk without room for whole staging copies: a Chroma file that can
/// be patched counts only what differs (hashed before anything is
/// staged), and its patch is kept even when it holds most of the file.
/// Below even that, the refusal names the smaller figure.
#[test]
fn a_tight_disk_stages_patches_of_what_differs_only() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let want = reference(&rt, &s1);
    let data = seg(&rt, "data_level0.bin");
    let db = std::fs::metadata(rt.db()).unwrap().len();
    let registry = std::fs::metadata(rt.registry()).unwrap().len();
    let size = std::fs::metadata(&data).unwrap().len();
    // Three blocks in four differ, past the half where a roomy disk
    // stages the file whole.
    let mut bytes = std::fs::read(&data).unwrap();
    let blocks = bytes.len() / 4096;
    for b in (0..blocks).filter(|b| b % 4 != 0) {
        bytes[b * 4096] ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();
    let differing = (blocks - blocks.div_ceil(4)) as u64 * 4096;
    // A small file that wholly differs: its patch would take more blocks
    // than the file, so it counts (and is staged) as a whole copy.
    let lengths = seg(&rt, "length.bin");
    let small = std::fs::metadata(&lengths).unwrap().len();
    assert!(!small.is_multiple_of(4096), "{small}");
    std::fs::write(&lengths, vec![0xa5u8; small as usize]).unwrap();
    let with_margin = |n: u64| n + n / 20;
    let whole = with_margin(db + registry + size + small);
    let patched = with_margin(db + registry + differing + small);
    assert!(patched < whole);

    // Less than even the patch needs: refused, nothing written.
    let inode = ino(&data);
    let small_inode = ino(&lengths);
    let short = (patched - 1).to_string();
    let args = [
        "restore",
        &s1,
        "--confirm-service-stopped",
        "--no-pre-snapshot",
    ];
    let Out { json, code, .. } = rt.run_env(&args, &[("ATOSNAP_TEST_FREE_BYTES", &short)]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["error"]["code"], "restore_no_space", "{json}");
    let msg = json["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("{patched} bytes needed")), "{msg}");
    assert_eq!(std::fs::read(&data).unwrap(), bytes, "untouched");
    assert!(files_named(&rt.runtime, ".atosnap-restore-").is_empty());

    // Room for the patch, not for a whole copy: patched in place.
    let room = (whole - 1).to_string();
    let Out { json, code, .. } = rt.run_env(&args, &[("ATOSNAP_TEST_FREE_BYTES", &room)]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(ino(&data), inode, "patched, not replaced");
    assert_ne!(ino(&lengths), small_inode, "the small file is replaced");
    assert_same_tree!(rt.restorable(), want);
    assert!(files_named(&rt.runtime, ".atosnap-restore-").is_empty());

    // With room for a whole copy the same change is staged whole.
    std::fs::write(&data, &bytes).unwrap();
    rt.restore_live(&s1);
    assert_ne!(ino(&data), inode, "renamed over");
    assert_same_tree!(rt.restorable(), want);
}

/// A read-only Chroma file, restored by a user who may not write it: it
/// is replaced whole (the folder allows the rename), never patched. A
/// patch was once committed before the target was opened, failed there,
/// and stayed behind for every later restore to fail on again.
#[test]
fn a_read_only_file_is_replaced_whole_by_a_user_who_may_not_write_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(unpriv) = unprivileged() else {
        eprintln!("skipped: running as root without setpriv");
        return;
    };
    let rt = Rt::fixture();
    let data = seg(&rt, "data_level0.bin");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o444)).unwrap();
    let s1 = rt.create_stamp(&["--chroma"]);
    open_up(rt.dir.path());
    let to = rt.path("to");
    let restore = || {
        let mut cmd = std::process::Command::new(unpriv.get_program());
        cmd.args(unpriv.get_args());
        for v in ENV_VARS {
            cmd.env_remove(v);
        }
        cmd.env("ATOSNAP_CACHE_DIR", rt.path("cache-nobody"))
            .current_dir(rt.dir.path())
            .args(["--quiet", "--store"])
            .arg(&rt.store)
            .args(["restore", &s1, "--to"])
            .arg(&to);
        run_cmd(&mut cmd)
    };
    let first = restore();
    assert_eq!(first.code, 0, "{first:?}");
    let restored = to.join("chroma").join(SEGMENT).join("data_level0.bin");
    assert_eq!(std::fs::metadata(&restored).unwrap().mode() & 0o7777, 0o444);
    // One block differs: a writable file would be patched in place.
    flip_bit(&restored, 4096 + 3);
    let inode = std::fs::metadata(&restored).unwrap().ino();
    let second = restore();
    assert_eq!(second.code, 0, "{second:?}");
    assert_ne!(
        std::fs::metadata(&restored).unwrap().ino(),
        inode,
        "replaced whole"
    );
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&data).unwrap()
    );
    assert_eq!(
        files_named(&to, ".atosnap-restore-"),
        Vec::<std::path::PathBuf>::new()
    );
}
