//! What the CLI prints on stdout goes through here, so a reader that stops early
//! (`edgefilter explain … | head`) ends the command quietly instead of a panic.
//!
//! Text that came from outside (stored names, audit entries) goes through [`printable`], so it
//! cannot steer the terminal.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `EPIPE`, and `println!` panics
//! on it. [`print()`] writes to the locked stdout instead; on a broken pipe the process exits 0
//! at once, as a Unix tool does when its reader is gone (nobody is left to read the rest), and
//! on any other write failure it says so on stderr and exits 1. Only the CLI's own commands use
//! it, never the daemon.

use std::borrow::Cow;
use std::fmt;
use std::io::{ErrorKind, Write};

/// Writes `args` to stdout; see the module doc for what a failed write does.
pub fn print(args: fmt::Arguments<'_>) {
    let result = std::io::stdout().lock().write_fmt(args);
    if let Err(e) = result {
        exit_on(&e);
    }
}

/// Writes `args` to stdout and returns the failure instead of exiting, for a command that must
/// clean up before it ends (`xdp trace` switches tracing off).
///
/// # Errors
/// Stdout cannot take it (a closed pipe included).
pub fn write(args: fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// `s` with every control character and invisible formatting character (zero-width, bidi
/// overrides) written as an escape such as `\u{1b}`, so printed text cannot move the cursor,
/// recolour the terminal, or reorder what follows it.
#[must_use]
pub fn printable(s: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert!(matches!(
            printable("key_abc ok"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\u{1b}[2Jb\r\n"), "a\\u{1b}[2Jb\\u{d}\\u{a}");
        assert_eq!(printable("x\u{202e}y\u{7f}"), "x\\u{202e}y\\u{7f}");
        assert_eq!(printable("café ✓"), "café ✓");
    }
}
