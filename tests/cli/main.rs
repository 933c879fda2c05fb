//! The binary, black box: every command run as a child process against a
//! runtime and a store in a temp dir, its one JSON document and exit code
//! checked, and the store's files damaged on purpose.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod audit_log;
mod capture;
mod cleanup;
mod concurrency;
mod copy;
mod copy_losses;
mod copy_rekey;
mod demo;
mod drill_diff;
mod encryption;
mod format2;
mod foundation;
mod frames;
mod gc;
mod hardening;
mod index_cache;
mod interrupt;
mod lanes;
mod lock;
mod ops;
mod ops_surface;
mod restore;
mod restore_hostile;
mod restore_patch;
mod restore_wal;
mod stats;
mod store_hardening;
mod temp_owners;
mod transport;
mod verify;
mod verify_repair;
mod verify_sizes;
