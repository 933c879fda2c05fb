//! The `atosnap` binary: parses the CLI, calls the library, prints JSON and
//! maps errors to exit codes.

mod cli;
mod demo;
mod docgen;
mod logging;
mod progress_bar;

fn main() {
    std::process::exit(cli::run());
}
