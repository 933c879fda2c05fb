//! Library-level tests and properties: create, restore, gc and extract
//! called as functions, on runtimes built in temp dirs.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod format1;
mod gc_duplicates;
mod gc_prop;
mod layering;
mod restore_lib;
mod restore_props;
mod roundtrip_prop;
