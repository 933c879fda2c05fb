//! Issue 14, black-box through the binary: a tampered unencrypted store
//! (its manifest checksum is an unkeyed blake3, so anyone who can write
//! the store can re-encode one) and a careless `--to` reach nothing
//! outside the restore target and never the live runtime.

use crate::support::{Out, Runtime as Env};
use std::fs;
use std::path::Path;

use atosnap::store::manifest::{Entry, EntryKind};

fn stamp_of(env: &Env) -> String {
    env.create(&["--chroma"])["stamp"]
        .as_str()
        .unwrap()
        .to_string()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    names.sort();
    names
}

/// Every path below `root` with its kind and content (links not followed).
fn digest(root: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .map(|e| {
            let what = if e.file_type().is_file() {
                blake3::hash(&fs::read(e.path()).unwrap())
                    .to_hex()
                    .to_string()
            } else {
                format!("{:?}", e.file_type())
            };
            (e.path().display().to_string(), what)
        })
        .collect();
    out.sort();
    out
}

/// Runs `cmd` with `source` bind-mounted on `target`, in a user and mount
/// namespace of its own (`unshare -rm`); None where none can be made.
fn in_mount_namespace(source: &Path, target: &Path, cmd: &std::process::Command) -> Option<Out> {
    let prelude = "mount --bind \"$1\" \"$2\" &&";
    crate::support::run_unshared(&["-rm"], prelude, &[source, target], cmd)
}

fn no_panic(out: &Out) {
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---- item 1: a manifest declaring entries below a symlink ----------------------

#[test]
fn entries_below_a_declared_symlink_are_refused_and_nothing_is_written_outside() {
    let env = Env::tiny();
    let s1 = stamp_of(&env);
    let outside = env.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    env.forge_manifest(&s1, |m| {
        let registry = m.registry().unwrap().clone();
        m.entries.push(Entry {
            path: b"chroma/x".to_vec(),
            kind: EntryKind::Symlink {
                target: outside.as_os_str().as_encoded_bytes().to_vec(),
            },
            mode: 0o777,
            mtime_ns: 0,
        });
        m.entries.push(Entry {
            path: b"chroma/x/evil".to_vec(),
            kind: EntryKind::File(registry),
            mode: 0o644,
            mtime_ns: 0,
        });
    });
    // The link is already on disk in the target, as the forger wants.
    let to = env.dir.path().join("to");
    fs::create_dir_all(to.join("chroma")).unwrap();
    std::os::unix::fs::symlink(&outside, to.join("chroma/x")).unwrap();

    let out = env.run(&["restore", &s1, "--to", to.to_str().unwrap()]);
    no_panic(&out);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.error_code(), "manifest_corrupt", "{out:?}");
    let msg = out.json["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("chroma/x/evil") && msg.contains("symlink"),
        "{msg}"
    );
    assert_eq!(listing(&outside), vec![outside.display().to_string()]);

    // A drill of it fails (damage), writing nothing outside either.
    let out = env.run(&["drill", &s1]);
    no_panic(&out);
    assert_eq!(out.json["ok"], false, "{out:?}");
    assert!(format!("{}", out.json["errors"]).contains("manifest_corrupt"));
    assert_eq!(listing(&outside), vec![outside.display().to_string()]);
}

#[test]
fn a_symlink_where_the_snapshot_has_a_folder_is_replaced_not_written_through() {
    let env = Env::tiny();
    let s1 = stamp_of(&env);
    // The live `seg` folder swapped for a link to a copy elsewhere, whose
    // files then change.
    let outside = env.dir.path().join("outside-seg");
    fs::rename(env.chroma().join("seg"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, env.chroma().join("seg")).unwrap();
    fs::write(outside.join("index_metadata.pickle"), b"changed outside").unwrap();
    fs::write(outside.join("extra"), b"not in the snapshot").unwrap();

    let out = env.run(&["restore", &s1, "--confirm-service-stopped"]);
    assert_eq!(out.code, 0, "{out:?}");
    let seg = fs::symlink_metadata(env.chroma().join("seg")).unwrap();
    assert!(seg.is_dir(), "the link was replaced by a real folder");
    assert_eq!(
        fs::read(env.chroma().join("seg/index_metadata.pickle")).unwrap(),
        crate::support::pseudo_random(2, 10_000)
    );
    assert_eq!(
        fs::read(outside.join("index_metadata.pickle")).unwrap(),
        b"changed outside"
    );
    assert!(
        outside.join("extra").exists(),
        "nothing removed through the link"
    );
}

// ---- item 4: restore --to the live data -----------------------------------------

#[test]
fn restore_to_the_live_runtime_under_another_name_is_refused() {
    let env = Env::tiny();
    let s1 = stamp_of(&env);
    let before = digest(&env.runtime);
    let data = env.runtime.join("data");
    let alias = env.dir.path().join("alias");
    std::os::unix::fs::symlink(&data, &alias).unwrap();
    for to in [
        data.clone(),               // holds the db and the Chroma dir
        alias.clone(),              // the same, through a link
        env.runtime.clone(),        // an ancestor of every live path
        env.runtime.join("config"), // DIR/project-registry.json is live
        env.chroma().join("seg"),   // inside the live Chroma dir
        env.dir.path().join("runtime/data/../data"),
    ] {
        let out = env.run(&["restore", &s1, "--to", to.to_str().unwrap()]);
        no_panic(&out);
        assert_eq!(out.code, 1, "--to {}: {out:?}", to.display());
        assert_eq!(out.error_code(), "restore_target_is_live", "{out:?}");
        let msg = out.json["error"]["message"].as_str().unwrap();
        assert!(msg.contains("--confirm-service-stopped"), "{msg}");
        assert_eq!(digest(&env.runtime), before, "--to {}", to.display());
    }
    // The live data folder bind-mounted elsewhere (in a mount namespace of
    // the test's own): no path leads from the mount to the live paths, but
    // the identities (device, inode) are the same.
    let mount = env.dir.path().join("mount");
    fs::create_dir(&mount).unwrap();
    let mut restore = env.command();
    restore.args(["restore", &s1, "--to", mount.to_str().unwrap()]);
    match in_mount_namespace(&data, &mount, &restore) {
        Some(out) => {
            no_panic(&out);
            assert_eq!(out.error_code(), "restore_target_is_live", "{out:?}");
            assert_eq!(digest(&env.runtime), before, "through a bind mount");
        }
        None => eprintln!("no mount namespace here: the bind-mount case is not run"),
    }
    // A folder of its own is fine, and so is the live restore itself.
    let elsewhere = env.dir.path().join("elsewhere");
    let out = env.run(&["restore", &s1, "--to", elsewhere.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = env.run(&["restore", &s1, "--confirm-service-stopped"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.json["pre_restore_snapshot"].is_string());
}

// ---- item 8: sizes a manifest claims, a far-future stamp ------------------------

#[test]
fn a_forged_registry_size_is_never_allocated() {
    let env = Env::tiny();
    let s1 = stamp_of(&env);
    env.forge_manifest(&s1, |m| {
        let reg = m
            .entries
            .iter_mut()
            .find(|e| e.path == b"project-registry.json")
            .unwrap();
        if let EntryKind::File(f) = &mut reg.kind {
            f.size = 1 << 46; // 64 TiB
        }
    });
    let out = env.run(&["validate", &s1]);
    no_panic(&out);
    assert_eq!(out.code, 3, "{out:?}");
    let errors = out.strings("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("size_mismatch: project-registry.json")),
        "{errors:?}"
    );
    // Restore refuses it as damage (exit 3), before staging a byte: not
    // as a lack of free space for 64 TiB.
    let to = env.dir.path().join("forged-restore");
    let out = env.run(&["restore", &s1, "--to", to.to_str().unwrap()]);
    no_panic(&out);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("size_mismatch: project-registry.json"),
        "{out:?}"
    );
}

#[test]
fn a_far_future_snapshot_does_not_stand_in_for_the_previous_one() {
    let env = Env::tiny();
    // Files unchanged for a while, so the files cache trusts them.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s2 = stamp_of(&env);
    let future = "99991231T235959Z";
    let dir = env.snapshot_dir(future);
    crate::support::copy_tree(&env.snapshot_dir(&s2), &dir);
    env.forge_manifest(future, |m| {
        m.stamp = future.to_string();
        m.entries.clear();
    });
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let created = env.create(&["--chroma"]);
    assert_ne!(created["stamp"], future);
    assert!(
        created["files_from_cache"].as_u64().unwrap() >= 2,
        "the files cache used snapshot {s2}, not the future one: {created}"
    );
}

/// A snapshot captured through a symlinked Chroma dir records `chroma` as
/// a link (decoding allows entries below that one link): `--include`
/// restores below it as a full restore does, into a real folder.
#[test]
fn include_below_a_chroma_dir_captured_through_a_link() {
    let env = Env::tiny();
    let s1 = stamp_of(&env);
    env.forge_manifest(&s1, |m| {
        let root = m.entries.iter_mut().find(|e| e.path == b"chroma").unwrap();
        root.kind = EntryKind::Symlink {
            target: b"/srv/elsewhere/chroma".to_vec(),
        };
    });
    for include in ["chroma/seg", "chroma"] {
        let to = env
            .dir
            .path()
            .join(format!("out-{}", include.replace('/', "-")));
        let out = env.run(&[
            "restore",
            &s1,
            "--to",
            to.to_str().unwrap(),
            "--include",
            include,
        ]);
        no_panic(&out);
        assert_eq!(out.code, 0, "--include {include}: {out:?}");
        let chroma = fs::symlink_metadata(to.join("chroma")).unwrap();
        assert!(chroma.is_dir(), "a real folder");
        assert_eq!(
            fs::read(to.join("chroma/seg/index_metadata.pickle")).unwrap(),
            fs::read(env.chroma().join("seg/index_metadata.pickle")).unwrap()
        );
    }
}

/// A FIFO where the db or the registry of a `--to` folder would be, or
/// where a Chroma file is with a `-wal` name beside it (which makes the
/// pre-restore snapshot look for its database): restore never blocks
/// opening it (it once waited for a writer for ever, holding the store
/// lock, and ignored SIGTERM) and replaces it.
#[test]
fn fifos_in_the_target_never_hang_a_restore() {
    let rt = Env::fixture();
    let stamp = stamp_of(&rt);
    for name in ["atocore.db", "project-registry.json"] {
        let to = rt.path(&format!("drill-{name}"));
        fs::create_dir_all(&to).unwrap();
        crate::support::mkfifo(&to.join(name));
        let out = rt
            .run_within(&["restore", &stamp, "--to", to.to_str().unwrap()], 60)
            .unwrap_or_else(|| panic!("restore --to hung on a FIFO at {name}"));
        assert_eq!(out.code, 0, "{name}: {out:?}");
        assert!(fs::symlink_metadata(to.join(name)).unwrap().is_file());
    }
    let seg = rt.chroma().join("e8763d70-0924-4389-9e69-cddb1f90792c");
    fs::remove_file(seg.join("header.bin")).unwrap();
    crate::support::mkfifo(&seg.join("header.bin"));
    fs::write(seg.join("header.bin-wal"), b"x").unwrap();
    let out = rt
        .run_within(&["restore", &stamp, "--confirm-service-stopped"], 60)
        .expect("a live restore hung on a FIFO in the Chroma tree");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(fs::symlink_metadata(seg.join("header.bin"))
        .unwrap()
        .is_file());
}

/// A path restore refuses as unsafe is refused by every reader of the
/// manifest: validate (the gate before a restore) and verify once passed
/// it, and verify recorded the snapshot as good.
#[test]
fn validate_and_verify_refuse_what_restore_refuses_as_unsafe() {
    let env = Env::tiny();
    let stamp = stamp_of(&env);
    env.forge_manifest(&stamp, |m| {
        m.entries.push(Entry {
            path: b"chroma/../escape".to_vec(),
            kind: EntryKind::Dir,
            mode: 0o40755,
            mtime_ns: 0,
        })
    });
    let validate = env.run(&["validate", &stamp]);
    assert_eq!(validate.code, 3, "{validate:?}");
    assert!(
        validate.stdout.contains("unsafe or unexpected path"),
        "{validate:?}"
    );
    let verify = env.run(&["verify"]);
    assert_eq!(verify.code, 3, "{verify:?}");
    assert_eq!(verify.json["snapshots"][&stamp]["ok"], false, "{verify:?}");
}

/// A manifest made huge (a sparse file: no disk spent) is refused as
/// corrupt before it is read: validate once read 3 GiB into memory.
#[test]
fn a_huge_sparse_manifest_is_refused_unread() {
    let env = Env::tiny();
    let stamp = stamp_of(&env);
    let manifest = env.snapshot_dir(&stamp).join("manifest.bin");
    fs::File::create(&manifest)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let out = env.run(&["validate", &stamp]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout.contains("manifest_corrupt") && out.stdout.contains("reads whole"),
        "{out:?}"
    );
}
