//! `atosnap serve` as a child process, over real HTTP on loopback, and the
//! cooperative ingestion lock held by writer processes.

#[path = "../support/mod.rs"]
mod support;

mod http;
mod ingestion_lock;
mod limits;
