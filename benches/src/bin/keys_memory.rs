//! 1M keys: start-up time into two shard caches and the whole process's RSS.
//!
//! `keys_memory [N]` creates N keys (default 1,000,000) in a temp SQLite store through the store
//! API — in a child process, so key creation leaves nothing in this process's memory — then
//! loads them the way the daemon does (one shared load, two shard indexes built on two threads)
//! and prints the time and `VmRSS` from `/proc/self/status`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use edgefilter::auth::KeyService;
use edgefilter::config::Config;
use edgefilter::gate::{Gate, GateRequest, Verdict};
use edgefilter::store::{KeyStore, NewKey, SqliteStore};

const BATCH: usize = 20_000;

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // USER_HZ is 100 on Linux.
    f.iter().sum::<u64>() as f64 / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Child: create `n` keys (10 per user, 100 users per tenant) and write one key to `probe`.
fn populate(db: &Path, n: usize, probe: &Path) -> anyhow::Result<()> {
    let mut st = SqliteStore::open(db)?;
    st.set_cache_kib(512 * 1024)?;
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let batch: Vec<NewKey> = (done..n.min(done + BATCH))
            .map(|i| {
                let key = NewKey::new(
                    format!("tenant{}", i / 1000),
                    format!("user{}", i / 10),
                    "live",
                )
                .with_scopes(["ai:invoke"])
                .with_expiry(4_000_000_000);
                // Every other key rate-limited.
                if i % 2 == 0 {
                    key.with_rate(100, 200)
                } else {
                    key
                }
            })
            .collect();
        let made = st.create_keys(&batch, edgefilter::store::unix_now())?;
        if done == 0 {
            std::fs::write(probe, made[0].secret.expose())?;
        }
        done += batch.len();
    }
    eprintln!("created {n} keys in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--populate") {
        populate(Path::new(&args[2]), args[3].parse()?, Path::new(&args[4]))?;
        return Ok(ExitCode::SUCCESS);
    }
    let n: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    // KEYS_MEMORY_DB=path reuses (or keeps) a populated store between runs.
    let db = std::env::var_os("KEYS_MEMORY_DB")
        .map_or_else(|| dir.path().join("keys.db"), std::path::PathBuf::from);
    let probe = db.with_extension("probe");
    if !probe.exists() {
        let st = Command::new(std::env::current_exe()?)
            .arg("--populate")
            .arg(&db)
            .arg(n.to_string())
            .arg(&probe)
            .status()
            .context("populating the store")?;
        anyhow::ensure!(st.success(), "populate failed");
    }

    let cfg = Config::parse(
        &format!(
            "[store]\npath = \"{}\"\n[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
            db.display()
        ),
        dir.path(),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if std::env::var_os("KEYS_MEMORY_SCAN").is_some() {
        let st = SqliteStore::open(&db)?;
        let (t, c) = (Instant::now(), cpu_secs());
        let mut n = 0usize;
        st.for_each_key(&mut |_| {}, &mut |_, _| n += 1)?;
        println!(
            "scan only:           {:.2} s wall, {:.2} s CPU ({n} rows)",
            t.elapsed().as_secs_f64(),
            cpu_secs() - c
        );
    }
    let rss_before = rss_kib();
    let start = Instant::now();
    let cpu0 = cpu_secs();
    let (mut svc, _store) = KeyService::open(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = start.elapsed();
    let factory = svc.gate_factory();
    let mut gates: Vec<Box<dyn Gate>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let f = &factory;
                s.spawn(move || f(i))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("shard build"))
            .collect()
    });
    let serving = start.elapsed();
    let cpu = cpu_secs() - cpu0;
    let key = std::fs::read_to_string(&probe)?;
    let hs = [httparse::Header {
        name: "X-API-Key",
        value: key.as_bytes(),
    }];
    let req = GateRequest {
        peer: "127.0.0.1".parse()?,
        method: "GET",
        path: "/",
        query: None,
        headers: &hs,
        route: 0,
        rules: None,
    };
    for g in &mut gates {
        anyhow::ensure!(
            matches!(g.check(&req), Verdict::Allow(_)),
            "probe key refused"
        );
    }
    let rss = rss_kib();
    println!("keys:                {}", svc.loaded_keys());
    println!("store load:          {:.2} s", loaded.as_secs_f64());
    println!(
        "serving (2 shards):  {:.2} s wall, {cpu:.2} s CPU",
        serving.as_secs_f64()
    );
    println!("RSS before load:     {:.1} MiB", rss_before as f64 / 1024.0);
    println!("RSS serving:         {:.1} MiB", rss as f64 / 1024.0);
    println!(
        "per key (2 shards):  {:.0} bytes",
        (rss - rss_before) as f64 * 1024.0 / n as f64
    );
    Ok(ExitCode::SUCCESS)
}
