//! The `edgefilter` binary: parses the command line and dispatches; nothing else lives here.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    edgefilter::cli::dispatch(edgefilter::cli::Cli::parse())
}
