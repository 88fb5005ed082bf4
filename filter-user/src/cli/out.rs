//! What the CLI prints on stdout goes through here, so a reader that stops early
//! (`edgefilter explain … | head`) ends the command quietly instead of a panic.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `EPIPE`, and `println!` panics
//! on it. [`print()`] writes to the locked stdout instead; on a broken pipe the process exits 0
//! at once, as a Unix tool does when its reader is gone (nobody is left to read the rest), and
//! on any other write failure it says so on stderr and exits 1. Only the CLI's own commands use
//! it, never the daemon.

use std::fmt;
use std::io::{ErrorKind, Write};

/// Writes `args` to stdout; see the module doc for what a failed write does.
pub fn print(args: fmt::Arguments<'_>) {
    let result = std::io::stdout().lock().write_fmt(args);
    if let Err(e) = result {
        exit_on(&e);
    }
}

/// Ends the process for a failed stdout write: 0 for a closed pipe, else 1 with the error.
fn exit_on(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1);
}

/// `println!` for CLI output: a closed stdout pipe ends the command with exit 0.
macro_rules! outln {
    () => {
        $crate::cli::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for CLI output: a closed stdout pipe ends the command with exit 0.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::print(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};
