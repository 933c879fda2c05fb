//! The commands: one module (or folder) per command, each a function over a
//! [`Store`](crate::store::Store) returning a serde-serializable result.
//! Ops sit above `store` and `sources` and never import the binary side.

pub mod cleanup;
pub mod copy;
pub mod create;
pub mod diff;
pub mod drill;
pub mod dump;
pub mod extract;
pub mod forget;
pub mod gc;
pub mod list;
pub mod ls;
pub mod mark;
pub mod policy;
pub mod restore;
pub mod stats;
pub mod tag;
pub mod verify;
