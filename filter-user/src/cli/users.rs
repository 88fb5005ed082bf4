//! `edgefilter users suspend|activate|delete`, against the store directly.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::load_config;
use crate::store::{self, UserStatus};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Suspend a user: every key of theirs answers `USER_SUSPENDED`.
    Suspend {
        /// User name.
        user: String,
    },
    /// Re-activate a suspended user.
    Activate {
        /// User name.
        user: String,
    },
    /// Delete a user (final): every key of theirs answers `USER_DELETED`.
    Delete {
        /// User name.
        user: String,
    },
}

/// Runs the command.
///
/// # Errors
/// Unknown user, re-activating a deleted user, store failures.
pub fn run(config: &Path, cmd: UsersCmd) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (user, status) = match cmd {
        UsersCmd::Suspend { user } => (user, UserStatus::Suspended),
        UsersCmd::Activate { user } => (user, UserStatus::Active),
        UsersCmd::Delete { user } => (user, UserStatus::Deleted),
    };
    let mut st = store::open(&cfg)?;
    let u = st.set_user_status(&user, status, store::unix_now())?;
    println!(
        "user {} (tenant {}): {}",
        u.name,
        u.tenant,
        u.status.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
