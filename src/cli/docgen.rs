//! Shell completions (clap_complete) and man pages (clap_mangen), both
//! generated from the clap definitions in `cli/mod.rs` and `cli/global.rs`, never written by hand.

use clap::CommandFactory;
use std::path::Path;

use atosnap::error::{Error, IoContext};

use super::Cli;

/// Prints the completion script for `shell` on stdout (a closed pipe
/// ends it quietly, like the JSON of the other commands).
pub fn completions(shell: clap_complete::Shell) -> i32 {
    use std::io::Write;
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "atosnap", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => super::BROKEN_PIPE_EXIT,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "atosnap: writing completions failed: {e}"
            );
            1
        }
    }
}

/// Prints the top-level man page (roff) on stdout.
pub fn man_to_stdout() -> i32 {
    let page = clap_mangen::Man::new(Cli::command());
    match page.render(&mut std::io::stdout()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("atosnap: writing the man page failed: {e}");
            1
        }
    }
}

/// Writes `atosnap.1` and `atosnap-<command>.1` for each subcommand.
pub fn man_to_dir(dir: Option<&Path>) -> Result<(serde_json::Value, i32), Error> {
    let dir = dir.ok_or_else(|| Error::Usage("man: --dir is required here".into()))?;
    std::fs::create_dir_all(dir).ctx("create", dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let mut pages = vec![("atosnap".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let name = format!("atosnap-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().display_name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .ctx("render man page", &path)?;
        std::fs::write(&path, out).ctx("write", &path)?;
        written.push(path.display().to_string());
    }
    Ok((serde_json::json!({ "written": written }), 0))
}
