//! `edgefilter users suspend|activate|delete`: through the running daemon's admin API when it
//! is up (returning once every shard applied the change), else straight to the store. Either
//! way the change is recorded in the audit trail once, and `--json` prints the same object:
//! `{"action","user","tenant","status","keys"}`.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::audit;
use super::daemon_api::{self, segment};
use super::name_arg::name_arg;
use super::out::{outln, printable};
use super::{JsonFlag, load_config};
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
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Re-activate a suspended user.
    Activate {
        /// User name.
        #[arg(value_parser = name_arg::<UserName>())]
        user: UserName,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete a user (final): every key of theirs answers `USER_DELETED`.
    Delete {
        /// User name.
        #[arg(value_parser = name_arg::<UserName>())]
        user: UserName,
        /// JSON output.
        #[command(flatten)]
        json: JsonFlag,
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
    let (user, status, action, json) = match cmd {
        UsersCmd::Suspend { user, json } => (user, UserStatus::Suspended, "suspend", json),
        UsersCmd::Activate { user, json } => (user, UserStatus::Active, "activate", json),
        UsersCmd::Delete { user, json } => (user, UserStatus::Deleted, "delete", json),
    };
    let audited = Action::user_status(status);
    let changed = if let Some(c) = daemon_api::discover(&cfg) {
        let path = format!("/v1/users/{}/{action}", segment(&user));
        let v = daemon_api::call(&c, "POST", &path, None)?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Changed {
            user: s("user"),
            tenant: s("tenant"),
            status: s("status"),
            keys: v["keys"].as_u64().unwrap_or_default(),
        }
    } else {
        let mut st = store::open(&cfg)?;
        let object = |_: &dyn store::KeyStore| user.to_string();
        let now = store::unix_now();
        let u = audit::change(&mut *st, audited, &object, now, |s| {
            s.set_user_status(&user, status, now)
        })?;
        // Counted as the daemon counts them: the user's keys, whatever their state.
        let keys = st
            .list_keys(Some(&u.tenant))?
            .iter()
            .filter(|v| v.user.id == u.id)
            .count();
        Changed {
            user: u.name,
            tenant: u.tenant,
            status: u.status.as_str().to_owned(),
            keys: u64::try_from(keys).unwrap_or(u64::MAX),
        }
    };
    if json.json {
        outln!(
            "{}",
            json!({
                "action": audited.as_str(), "user": changed.user, "tenant": changed.tenant,
                "status": changed.status, "keys": changed.keys,
            })
        );
    } else {
        // The names come from the store, where a row may hold anything.
        outln!(
            "user {} (tenant {}): {}",
            printable(&changed.user),
            printable(&changed.tenant),
            printable(&changed.status)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A user after the change, however it was made.
struct Changed {
    user: String,
    tenant: String,
    status: String,
    /// How many keys the user has (each now answers as the user's status says).
    keys: u64,
}
