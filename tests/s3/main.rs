//! Every command through the binary on an `s3://` store, against a real
//! S3 server; skipped without `ATOSNAP_TEST_S3_BUCKET`.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod thrash;
