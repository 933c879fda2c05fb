//! The `atosnap` binary: parses the CLI, calls the library, prints JSON and
//! maps errors to exit codes.

mod cli;

fn main() {
    limit_malloc_arenas();
    std::process::exit(cli::run());
}

/// SIGINT and SIGTERM ask a CLI command to stop: the handler only records
/// the signal ([`atosnap::os::note_interrupt`]); the command stops at its
/// next check with `interrupted`, its lock guards release the store lock
/// (a bucket's lock object is deleted) and `cli::run` prints the one JSON
/// error. A second signal ends the process at once (exit 128 + signal),
/// leaving what the first would have cleaned to expire or be swept.
/// `serve` keeps its own handling (graceful shutdown through tokio).
pub(crate) fn install_interrupt_handlers() {
    extern "C" fn on_signal(sig: libc::c_int) {
        if atosnap::os::note_interrupt(sig) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(128 + sig) }
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler does one atomic operation (or _exit), both
        // async-signal-safe; SA_RESTART keeps blocking calls from failing
        // with EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// glibc gives every thread that allocates its own arena and returns freed
/// arena memory lazily: with the rayon workers each holding batch-sized
/// buffers, peak RSS grows by a quarter for no gain. One arena bounds it;
/// the workers allocate per batch, not per byte, so they barely contend
/// (measured on the 0.85 GB runtime, same wall time: create 75 -> 62 MiB,
/// verify 83 -> 56 MiB).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // A fixed threshold stops glibc from raising it after each large
        // free: manifest-sized buffers stay mmapped and go back to the
        // system when dropped instead of lingering in the heap (no-change
        // create 69 -> 59 MiB); smaller batch buffers are reused from the
        // heap (a 1 MiB threshold cost verify 0.5 s of mmap churn).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
