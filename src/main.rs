//! The `intattention` command: `bench`, `run`, `softmax` and `accuracy`. Parsing and printing
//! live in [`cli`]; every computation is a library call. Errors are printed as one message on
//! stderr with a non-zero exit status, never as a panic.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
