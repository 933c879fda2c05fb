//! Temp files are judged by their owner (pid, host, boot, PID namespace,
//! process token), never by a pid alone: a writer in another container or
//! on another host sharing the store keeps its temps while it runs.

use atosnap::os::TempOwner;
use atosnap::store::{location::StoreAddress, InitOptions, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn temp(dir: &Path, owner: &TempOwner, suffix: &str) -> PathBuf {
    let p = dir.join(format!("{}00000000000000aa.{suffix}", owner.prefix()));
    std::fs::write(&p, b"half a pack").unwrap();
    p
}

#[test]
fn only_temps_of_provably_gone_owners_are_swept_without_the_exclusive_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(
        &StoreAddress::local(dir.path().join("store")),
        &InitOptions::default(),
    )
    .unwrap();
    let tmp = store.tmp_dir().unwrap();
    let me = TempOwner::current();
    // pid 4194304 is above Linux's pid_max: never a live process here.
    let dead = TempOwner {
        pid: 4_194_304,
        ..me.clone()
    };
    // The same (dead-looking) pid written by a writer on another host, or
    // in another PID namespace (a container): it may be running there.
    let other_host = TempOwner {
        host: "another-host".replace('-', "_"),
        ..dead.clone()
    };
    let other_ns = TempOwner {
        pidns: "1".into(),
        ..dead.clone()
    };
    // Another boot id under this host name: this machine before a reboot,
    // or another machine of the same name on a shared folder (NFS). Fresh,
    // it may be live work; untouched for 15 minutes, it is a leftover.
    let boot = if me.boot == "00000001" {
        "00000002"
    } else {
        "00000001"
    };
    let other_boot = TempOwner {
        boot: boot.into(),
        ..dead.clone()
    };
    let fresh_other_boot = temp(&tmp, &other_boot, "pack");
    // Its mtime set years back, as a restore sets a staged file's: the
    // change itself is a touch (ctime), so it is not taken for still.
    let backdated_other_boot = temp(&tmp, &other_boot, "sqlite");
    let long_ago = std::time::SystemTime::now() - atosnap::os::OTHER_BOOT_STILL_FOR * 2;
    filetime::set_file_mtime(
        &backdated_other_boot,
        filetime::FileTime::from_system_time(long_ago),
    )
    .unwrap();
    let dead_tmp = temp(&tmp, &dead, "pack");
    let mine = temp(&tmp, me, "pack");
    let foreign = [
        temp(&tmp, &other_host, "pack"),
        temp(&tmp, &other_ns, "sqlite"),
        fresh_other_boot,
        backdated_other_boot,
    ];
    // A name of the old `<pid>-<random>` form (or any other): owner unknown.
    let legacy = tmp.join("4194304-00000000000000bb.pack");
    std::fs::write(&legacy, b"x").unwrap();
    // Not a temp name at all (tmp/ may be a link to a shared disk): never
    // atosnap's to remove, with or without the exclusive lock, and a link
    // there is never followed.
    let others = tmp.join("notes.md");
    std::fs::write(&others, b"someone else's").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), b"keep").unwrap();
    let link = tmp.join(format!("{}0000000000000001.dir", dead.prefix()));
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();

    let cleaned = store.clean_tmp(None).unwrap();
    assert_eq!(cleaned.files, 2);
    assert!(
        !dead_tmp.exists(),
        "this host's dead writer's temp is swept"
    );
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is removed"
    );
    assert!(
        outside.path().join("keep").exists(),
        "not what it points to"
    );
    assert!(mine.exists(), "our own temp is live work");
    for f in foreign.iter().chain([&legacy]) {
        assert!(f.exists(), "{} must survive a shared sweep", f.display());
    }

    // A command that takes no store lock (a `list` of a bucket spooling
    // its downloads) runs on this host while gc holds the exclusive lock.
    let mut reader = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let lockless = TempOwner {
        pid: reader.id(),
        token: "0000000b".into(),
        ..me.clone()
    };
    let lockless_tmp = temp(&tmp, &lockless, "spool");

    // Under the exclusive lock no writer can run: every temp file goes but
    // those of running processes of this host (ours, the lock-free reader).
    let lock = store.lock_exclusive("gc", Duration::ZERO).unwrap();
    let cleaned = store.clean_tmp(Some(&lock)).unwrap();
    let _ = reader.kill();
    let _ = reader.wait();
    assert_eq!(cleaned.files, 5);
    assert!(mine.exists(), "our own temp is kept");
    assert!(lockless_tmp.exists(), "a running reader's spool is kept");
    assert!(others.exists(), "a file not named as a temp is kept");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 3);

    // Once the reader has exited, its spool is a leftover.
    let cleaned = store.clean_tmp(Some(&lock)).unwrap();
    assert_eq!(cleaned.files, 1);
    assert!(!lockless_tmp.exists());
}

#[test]
fn new_temp_files_name_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let p = atosnap::store::backend::temp_path_in(dir.path(), "pack");
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        TempOwner::parse(&name).as_ref(),
        Some(TempOwner::current()),
        "{name}"
    );
    assert!(name.starts_with(&format!("{}-", std::process::id())));
    assert!(name.ends_with(".pack"));
}
