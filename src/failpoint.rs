//! Test failpoints: named points where a test can make the process die as
//! after a kill -9 (used by restore and copy), or hold it until the test
//! has done something (stopped the server) at exactly that point (gc).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Test hook: with `ATOSNAP_FAILPOINT=<name>` the process dies at that
/// point without cleaning up (as after a kill -9), so tests can prove that
/// a re-run converges. Points: `restore:after-stage` (every file staged
/// and checked, nothing live changed), `restore:after-pre-snapshot`,
/// `restore:after-sidecars`, `restore:before-rename:<snapshot path>`,
/// `restore:mid-renames` (the db renamed into place, the rest not yet),
/// `restore:chroma-after-remove`; for writers (create, copy, gc's
/// rewrite): `pack:frame-written` (the first frame of a format-2 pack is
/// in its temp file, the pack unfinished), `pack:published` (the first
/// pack is durable under its name, no snapshot refers to it yet),
/// `snapshot:before-publish` (every pack durable, the snapshot not
/// written) and `backend:dir-staged:<snapshot dir>` (a local store: the
/// snapshot's files are durable in a temp folder, not yet renamed).
pub fn hit(name: impl FnOnce() -> String) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(p) = POINT.get_or_init(|| std::env::var("ATOSNAP_FAILPOINT").ok()) {
        if *p == name() {
            eprintln!("atosnap: failpoint {p} reached, dying");
            std::process::exit(137);
        }
    }
}

/// The longest a paused process waits for its release (a test that died
/// must not leave it hanging for ever).
const MAX_PAUSE: Duration = Duration::from_secs(600);

/// Test hook: with `ATOSNAP_FAILPOINT_PAUSE=<name>` and
/// `ATOSNAP_FAILPOINT_RELEASE=<file>` the process, at point `name`,
/// creates `<file>.reached` and waits until `<file>` exists (at most
/// 10 minutes), so a test can act at exactly that point. Points:
/// `create:chroma-scanned` (the Chroma folder is listed, no file of it
/// read yet), `stats:before-reads` (the snapshots are listed, none read),
/// `gc:before-rewrite` (the plan is made; no sparse pack is read yet),
/// `gc:before-upload-barrier` (the rewritten packs are handed to the
/// backend, which may still be uploading them; nothing is deleted yet),
/// `validate:before-reads` (manifest and chunk index read; no list blob
/// or chunk yet), `restore:after-stage` (every file staged; nothing
/// installed).
pub fn pause(name: &str) {
    pause_named(|| name.to_string())
}

/// [`pause`] at a point whose name is only built when a pause is asked
/// for: `restore:before-meta:<snapshot path>` (a restore has planned to
/// set that file's or folder's mode and mtime and checked what stands
/// there, and is about to set them).
pub fn pause_named(name: impl FnOnce() -> String) {
    static POINT: std::sync::OnceLock<Option<(String, PathBuf)>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| {
        let name = std::env::var("ATOSNAP_FAILPOINT_PAUSE").ok()?;
        let release = std::env::var_os("ATOSNAP_FAILPOINT_RELEASE")?;
        Some((name, PathBuf::from(release)))
    });
    let Some((p, release)) = point else { return };
    let name = name();
    if *p != name {
        return;
    }
    let mut reached = release.clone().into_os_string();
    reached.push(".reached");
    if let Err(e) = std::fs::write(&reached, &name) {
        eprintln!("atosnap: failpoint {p}: cannot write {reached:?}: {e}");
        return;
    }
    eprintln!(
        "atosnap: failpoint {p} reached, waiting for {}",
        release.display()
    );
    let started = Instant::now();
    while !release.exists() && started.elapsed() < MAX_PAUSE {
        std::thread::sleep(Duration::from_millis(20));
    }
}
