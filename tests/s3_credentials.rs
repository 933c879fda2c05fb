//! Refused credentials against a real S3 server. A test binary of its own:
//! it changes the process's `AWS_*` variables, which would disturb the
//! other S3 tests running in parallel threads.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use atosnap::store::s3::{S3Backend, S3Location};

#[test]
fn s3_wrong_credentials_are_refused_quickly() {
    let Ok(bucket) = std::env::var("ATOSNAP_TEST_S3_BUCKET") else {
        eprintln!("skipped: no S3 test server (scripts/garage.sh run cargo test)");
        return;
    };
    let loc = S3Location {
        bucket,
        prefix: "test/creds".into(),
        endpoint: None,
        region: None,
        limits: Default::default(),
    };
    let secret = "wrongSecretKey0123456789abcdef0123456789abcdef";
    std::env::set_var("AWS_ACCESS_KEY_ID", "GK0123456789abcdef01234567");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    let scratch = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let e = S3Backend::new(&loc, scratch.path().to_path_buf())
        .err()
        .expect("wrong credentials must fail");
    eprintln!("{e}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("credentials refused by http"), "{msg}");
    assert!(!msg.contains(secret), "{msg}");

    // No credentials at all.
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    std::env::set_var("HOME", scratch.path());
    let e = S3Backend::new(&loc, scratch.path().to_path_buf())
        .err()
        .expect("no credentials must fail");
    eprintln!("{e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}
