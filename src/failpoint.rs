//! The test failpoint: a named point where a test can make the process die
//! as after a kill -9 (used by restore and copy).

/// Test hook: with `ATOSNAP_FAILPOINT=<name>` the process dies at that
/// point without cleaning up (as after a kill -9), so tests can prove that
/// a re-run converges. Points: `restore:after-pre-snapshot`,
/// `restore:after-sidecars`, `restore:before-rename:<snapshot path>`,
/// `restore:chroma-after-remove`.
pub fn hit(name: impl FnOnce() -> String) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(p) = POINT.get_or_init(|| std::env::var("ATOSNAP_FAILPOINT").ok()) {
        if *p == name() {
            eprintln!("atosnap: failpoint {p} reached, dying");
            std::process::exit(137);
        }
    }
}
