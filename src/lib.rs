//! atosnap: a content-addressed, incremental snapshot store for an AtoCore
//! runtime (SQLite database, project registry, Chroma vector store).
//!
//! Where things live (layers, low to high; imports only point down):
//! - ground floor (`src/*.rs`): `error`, `id`, `stamp`, `chunk`, `codec` (with `lanes`), `os`, `progress`, `failpoint`
//! - `store/`: the on-disk format: backend (local, `s3/`), packs, index,
//!   manifest, audit logs (drills, verifies, copies), keys, seal, locks,
//!   cache, config; `Store`
//! - `sources/`: reading and writing the runtime (`sqlite`, `chroma`, `paths`)
//! - `ops/`: one module (or folder) per command, each returning a result struct
//! - `serve/`: the HTTP front end (a library module so tests can drive it)
//! - the binary (`src/main.rs`, `src/cli/`): arguments, JSON, docgen, demo, logging
//!
//! The library is the product: every command is a function here returning
//! a serde-serializable result; the binary only parses arguments, prints
//! JSON and maps errors to exit codes.

pub mod chunk;
pub mod codec;
pub mod error;
pub mod failpoint;
pub mod id;
pub mod ops;
pub mod os;
pub mod progress;
pub mod serve;
pub mod sources;
pub mod stamp;
pub mod store;

pub use error::{Error, Result};
