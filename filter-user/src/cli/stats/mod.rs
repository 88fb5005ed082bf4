//! `edgefilter stats [--once] [--json]`: the running daemon's requests/s by code, XDP packets/s
//! by reason, top denied key ids and sources, bans, revocation propagation p99 and store
//! revision/lag, read through the admin API (`GET /v1/stats`, with the token of
//! `admin.token_file`).
//!
//! Without flags, a live terminal view refreshed every second ([`tui`]); `--once` prints one
//! snapshot as text with rates over a one-second sample; `--once --json` the same as one JSON
//! object (the snapshot's fields plus `rates`); `--json` alone one such object per second, a
//! line each, until interrupted. With no daemon it says so and exits 1.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::out::{out, outln};
use super::{JsonFlag, daemon_api, load_config};
use crate::admin::{AdminClient, StatsJson};
use crate::config::Config;

mod tui;
mod view;

use view::{Rates, View, rates};

/// The sample `--once` measures rates over.
const SAMPLE: Duration = Duration::from_secs(1);

/// How long one snapshot may take before the daemon counts as unreachable.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one snapshot (rates over a one-second sample) and exit, instead of the live view.
    #[arg(long)]
    once: bool,
    /// JSON output: the `GET /v1/stats` snapshot plus `rates`; with `--once` one object, else
    /// one object per second, a line each.
    #[command(flatten)]
    json: JsonFlag,
}

/// `--once --json`: the snapshot's fields and the rates over the sample.
#[derive(Debug, Serialize)]
struct WithRates<'a> {
    #[serde(flatten)]
    stats: &'a StatsJson,
    rates: Rates,
}

/// Runs the command.
///
/// # Errors
/// No daemon, or the daemon refused or failed; printed by the dispatcher (exit 1).
pub fn run(config: &Path, args: StatsArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let client = connect(&cfg)?;
    let get = || fetch(&client);
    let title = format!("edgefilter stats — daemon {}", client.addr());
    match (args.once, args.json.json) {
        (false, false) => tui::run(&title, get)?,
        (true, json) => {
            let (before, now, elapsed) = sample(get)?;
            let rates = rates(&before, &now, elapsed);
            if json {
                let v = WithRates { stats: &now, rates };
                outln!("{}", serde_json::to_string(&v)?);
            } else {
                let view = View::new(&now, Some(&rates));
                let title = format!(
                    "{title} — {} — rates over {:.1} s",
                    view.at,
                    elapsed.as_secs_f64()
                );
                out!("{}", view.to_text(&title));
            }
        }
        (false, true) => {
            let (mut before, mut taken) = (get()?, Instant::now());
            loop {
                std::thread::sleep(SAMPLE);
                let now = get()?;
                let at = Instant::now();
                let v = WithRates {
                    stats: &now,
                    rates: rates(&before, &now, at.duration_since(taken)),
                };
                outln!("{}", serde_json::to_string(&v)?);
                (before, taken) = (now, at);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's admin API, or an error saying there is none and how to start it.
fn connect(cfg: &Config) -> anyhow::Result<AdminClient> {
    daemon_api::discover(cfg)
        .map(|c| c.with_timeout(FETCH_TIMEOUT))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no daemon is running: nothing answers on admin.listen ({}), or its token file {} cannot be read. Start it with `edgefilter run`",
                cfg.admin.listen,
                cfg.resolve(&cfg.admin.token_file).display()
            )
        })
}

/// One snapshot.
fn fetch(client: &AdminClient) -> anyhow::Result<StatsJson> {
    let v = daemon_api::call(client, "GET", "/v1/stats", None)?;
    serde_json::from_value(v).map_err(|e| {
        anyhow::anyhow!(
            "the daemon at {} answered GET /v1/stats with an unexpected body: {e}",
            client.addr()
        )
    })
}

/// Two snapshots [`SAMPLE`] apart and the time between them.
fn sample(
    mut fetch: impl FnMut() -> anyhow::Result<StatsJson>,
) -> anyhow::Result<(StatsJson, StatsJson, Duration)> {
    let before = fetch()?;
    let t0 = Instant::now();
    std::thread::sleep(SAMPLE);
    let now = fetch()?;
    Ok((before, now, t0.elapsed()))
}
