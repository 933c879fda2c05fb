//! The `Backend` contract: one conformance suite run on the local backend
//! always and on S3 when `ATOSNAP_TEST_S3_BUCKET` is set, and the
//! S3-specific behaviours (claim race, spool, missing bucket, unreachable
//! endpoint).

#[path = "../support/mod.rs"]
mod support;

mod conformance;
mod s3;
