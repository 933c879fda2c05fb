//! Progress reporting. The library never prints; it calls a [`Progress`]
//! that the binary backs with a progress bar on a terminal.

pub trait Progress: Send + Sync {
    /// A new phase begins (`total` bytes when known).
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    /// `bytes` more of the phase are done.
    fn advance(&self, _bytes: u64) {}
    /// The command is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
