//! atosnap: a content-addressed, incremental snapshot store for an AtoCore
//! runtime (SQLite database, project registry, Chroma vector store).
//!
//! The library is the product: every command is a function here returning
//! a serde-serializable result; the binary only parses arguments, prints
//! JSON and maps errors to exit codes.

pub mod chunk;
pub mod cleanup;
pub mod config;
pub mod copy;
pub mod create;
pub mod diff;
pub mod drill;
pub mod drill_log;
pub mod dump;
pub mod error;
pub mod extract;
pub mod forget;
pub mod gc;
pub mod id;
pub mod list;
pub mod ls;
pub mod manifest;
pub mod os;
pub mod policy;
pub mod progress;
pub mod repair;
pub mod restore;
pub mod restore_paths;
pub mod retention;
pub mod serve;
pub mod sources;
pub mod stamp;
pub mod store;
pub mod tag;
pub mod verify;

pub use error::{Error, Result};
