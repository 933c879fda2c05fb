//! What the integration tests share: one runtime in a temp dir
//! ([`Runtime`]), one way to run the binary against it and read its one
//! JSON document ([`Out`]), file and tree tools, the S3 test bucket and a
//! small HTTP client for `serve`. Each test binary includes it with
//! `#[path = "../support/mod.rs"] mod support;`; it has no `main.rs`, so it
//! is no binary of its own.
#![allow(dead_code, unused_imports)]

#[macro_use]
pub mod files;
pub mod http;
pub mod run;
pub mod runtime;
pub mod s3;

pub use files::*;
pub use run::*;
pub use runtime::*;
