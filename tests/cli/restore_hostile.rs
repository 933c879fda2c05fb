//! Restores that are refused or raced: a refused restore leaves the disk
//! as it found it, and a file swapped under a running restore lends it
//! nothing.

use crate::support::Runtime as Rt;
use crate::support::*;
use std::os::unix::fs::PermissionsExt;

const SEGMENT: &str = "e8763d70-0924-4389-9e69-cddb1f90792c";

fn seg(rt: &Rt, name: &str) -> std::path::PathBuf {
    rt.chroma().join(SEGMENT).join(name)
}

/// A live restore of `stamp` (no pre-restore snapshot), held at the pause
/// point `point` while `act` changes the tree under it.
fn live_restore_paused_at(
    rt: &Rt,
    stamp: &str,
    point: &str,
    act: impl FnOnce(&std::process::Child),
) -> Out {
    let args = [
        "restore",
        stamp,
        "--confirm-service-stopped",
        "--no-pre-snapshot",
    ];
    rt.paused_at(point, &args, act)
}

/// A restore refused by validation leaves the disk as it found it: no
/// folder it created on the way stays behind (`--to` into a folder that
/// does not exist yet, and a live runtime whose `data/` folder is gone).
#[test]
fn a_refused_restore_leaves_no_folder_it_created() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    rt.corrupt_packs();

    let parent = rt.path("drills");
    let to = parent.join("today").join("target");
    let Out { json, code, .. } = rt.run(&["restore", &s1, "--to", to.to_str().unwrap()]);
    assert_eq!(code, 3, "{json}");
    assert_eq!(json["error"]["code"], "validation_failed");
    assert!(!parent.exists(), "{} was left", parent.display());
    // The same with a relative path (the command runs in the temp dir).
    let Out { json, code, .. } = rt.run(&["restore", &s1, "--to", "drills/today"]);
    assert_eq!(code, 3, "{json}");
    assert!(!parent.exists(), "{} was left", parent.display());

    // A live restore into a runtime that lost its data folder (db and
    // Chroma both live under it).
    let data = rt.db().parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&data).unwrap();
    let before = tree(&rt.runtime);
    let Out { json, code, .. } = rt.run(&["restore", &s1, "--confirm-service-stopped"]);
    assert_eq!(code, 3, "{json}");
    assert_eq!(json["error"]["code"], "validation_failed");
    assert!(!data.exists(), "{} was left", data.display());
    assert_same_tree!(tree(&rt.runtime), before, "nothing else changed");
    assert_eq!(rt.stamps(), vec![s1], "no pre-restore snapshot");
}

/// `--to` a relative folder that does not exist yet: made, as before.
#[test]
fn a_restore_to_a_new_relative_folder_makes_it() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let r = rt.ok(&["restore", &s1, "--to", "drills/today"]);
    assert_eq!(r["chroma_files_written"], 6, "{r}");
    assert!(rt.path("drills/today/atocore.db").is_file());
    assert!(rt.path("drills/today/chroma").is_dir());
}

/// A file the restore leaves alone but whose mode it sets back, swapped
/// for a symlink after the restore looked at it: the mode must not reach
/// the file the link names (a restore runs as root in a tree its service's
/// user can write). The restore stops, naming the file; run again, it
/// converges.
#[test]
fn a_file_swapped_for_a_symlink_before_its_mode_is_set_lends_it_to_nothing() {
    let rt = Rt::fixture();
    let header = seg(&rt, "header.bin");
    std::fs::set_permissions(&header, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s1 = rt.create_stamp(&["--chroma"]);
    std::fs::set_permissions(&header, std::fs::Permissions::from_mode(0o600)).unwrap();
    let outside = rt.path("outside-secret");
    std::fs::write(&outside, b"not the restore's").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();

    let point = format!("restore:before-meta:chroma/{SEGMENT}/header.bin");
    let Out { json, code, .. } = live_restore_paused_at(&rt, &s1, &point, |_| {
        std::fs::rename(&header, rt.path("header.moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &header).unwrap();
    });
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "the snapshot's mode reached the link's target");
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["error"]["code"], "target_invalid");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("header.bin"),
        "{json}"
    );

    // Run again, the link is replaced by the snapshot's file.
    rt.restore_live(&s1);
    let m = std::fs::symlink_metadata(&header).unwrap();
    assert!(m.is_file());
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the restore's");
}

/// A folder swapped for a symlink after the restore checked it: the file
/// the restore removes in it is removed from the folder it checked, never
/// from the one the link names.
#[test]
fn a_folder_swapped_for_a_symlink_before_a_removal_sends_it_nowhere_else() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let extra = seg(&rt, "not-in-the-snapshot.bin");
    std::fs::write(&extra, b"made after the snapshot").unwrap();
    let outside = rt.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(
        outside.join("not-in-the-snapshot.bin"),
        b"not the restore's",
    )
    .unwrap();

    let point = format!("restore:before-remove:{}", extra.display());
    let moved = rt.path("segment.moved");
    let Out { json, code, .. } = live_restore_paused_at(&rt, &s1, &point, |_| {
        std::fs::rename(rt.chroma().join(SEGMENT), &moved).unwrap();
        std::os::unix::fs::symlink(&outside, rt.chroma().join(SEGMENT)).unwrap();
    });
    assert_eq!(
        std::fs::read(outside.join("not-in-the-snapshot.bin")).unwrap(),
        b"not the restore's",
        "removed through the link: {json}"
    );
    assert!(
        !moved.join("not-in-the-snapshot.bin").exists(),
        "removed from the folder checked"
    );
    // What follows in the swapped folder is refused, naming it.
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["error"]["code"], "target_invalid");
    assert!(
        json["error"]["message"].as_str().unwrap().contains(SEGMENT),
        "{json}"
    );

    // Run again, the link is replaced by the snapshot's folder.
    rt.restore_live(&s1);
    assert!(std::fs::symlink_metadata(rt.chroma().join(SEGMENT))
        .unwrap()
        .is_dir());
    assert!(outside.join("not-in-the-snapshot.bin").exists());
}

/// The last refusal comes at install, when a file to patch changed after
/// it was staged against: the folders the restore made for staging (here
/// the registry's, gone from the runtime) are taken back then too.
#[test]
fn a_restore_refused_at_install_takes_back_its_folders() {
    let rt = Rt::fixture();
    let s1 = rt.create_stamp(&["--chroma"]);
    let data = seg(&rt, "data_level0.bin");
    flip_bit(&data, 4096 + 3);
    let config = rt.registry().parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&config).unwrap();

    let Out { json, code, .. } = live_restore_paused_at(&rt, &s1, "restore:after-stage", |_| {
        assert!(config.is_dir(), "made for the registry's staging");
        flip_bit(&data, 9 * 4096 + 1);
    });
    assert_eq!(code, 1, "{json}");
    assert!(!config.exists(), "{} was left: {json}", config.display());
    assert!(files_named(&rt.runtime, ".atosnap-restore-").is_empty());
}
