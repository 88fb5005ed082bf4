//! `edgefilter users suspend|activate|delete`: through the running daemon's admin API when it
//! is up (returning once every shard applied the change), else straight to the store. Either
//! way the change is recorded in the audit trail once.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::audit;
use super::daemon_api::{self, segment};
use super::load_config;
use super::name_arg::name_arg;
use super::out::{outln, printable};
use crate::names::UserName;
use crate::store::{self, Action, UserStatus};

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Suspend a user: every key of theirs answers `USER_SUSPENDED`.
    Suspend {
        /// User name.
        #[arg(value_parser = name_arg::<UserName>())]
        user: UserName,
    },
    /// Re-activate a suspended user.
    Activate {
        /// User name.
        #[arg(value_parser = name_arg::<UserName>())]
        user: UserName,
    },
    /// Delete a user (final): every key of theirs answers `USER_DELETED`.
    Delete {
        /// User name.
        #[arg(value_parser = name_arg::<UserName>())]
        user: UserName,
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
    let (user, status, action) = match cmd {
        UsersCmd::Suspend { user } => (user, UserStatus::Suspended, "suspend"),
        UsersCmd::Activate { user } => (user, UserStatus::Active, "activate"),
        UsersCmd::Delete { user } => (user, UserStatus::Deleted, "delete"),
    };
    if let Some(c) = daemon_api::discover(&cfg) {
        let path = format!("/v1/users/{}/{action}", segment(&user));
        let v = daemon_api::call(&c, "POST", &path, None)?;
        let s = |k: &str| printable(v[k].as_str().unwrap_or_default()).into_owned();
        outln!(
            "user {} (tenant {}): {}",
            s("user"),
            s("tenant"),
            s("status")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut st = store::open(&cfg)?;
    let object = |_: &dyn store::KeyStore| user.to_string();
    let (action, now) = (Action::user_status(status), store::unix_now());
    let u = audit::change(&mut *st, action, &object, now, |s| {
        s.set_user_status(&user, status, now)
    })?;
    // The tenant comes from the store, where a row may hold anything.
    outln!(
        "user {} (tenant {}): {}",
        printable(&u.name),
        printable(&u.tenant),
        u.status.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
