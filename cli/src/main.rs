//! The `intattention` command: `bench`, `run`, `softmax`, `accuracy` and `validate`. Parsing
//! and printing live in [`intattention_cli::cli`]; every computation is a library call. Errors
//! are printed as one message on stderr with a non-zero exit status, never as a panic.

use std::process::ExitCode;

use clap::Parser;
use intattention_cli::cli;

fn main() -> ExitCode {
    restore_sigpipe();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so `println!` into a closed pipe (`intattention bench | head -1`)
/// panics. Restoring the default action makes the command end quietly, as Unix tools do.
#[cfg(unix)]
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action
    // for SIGPIPE and no Rust code relies on the signal being ignored.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}
