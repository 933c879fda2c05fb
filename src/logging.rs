//! The request and lifecycle log of `serve`: tracing to stderr, level from
//! `ATOSNAP_LOG` (an env-filter directive such as `info` or
//! `atosnap=debug`), else `info` (with `--quiet`: warnings, plus the start
//! and stop lines, which name the bound address).

use tracing_subscriber::EnvFilter;

pub fn init(quiet: bool) {
    let filter = EnvFilter::try_from_env("ATOSNAP_LOG").unwrap_or_else(|_| {
        EnvFilter::new(if quiet {
            "warn,atosnap::serve::lifecycle=info"
        } else {
            "info"
        })
    });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}
