//! `cargo xtask bench`: the XDP per-packet cost (when its bench binary exists), then proxy load
//! against peers: the bench upstream direct, edgefilter, HAProxy and nginx, each proxying plainly
//! to the same upstream on 127.0.0.1, driven by `wrk --latency` in the same run, beside the
//! I/O floor (`relay_floor`: a lock-step byte relay with edgefilter's threading and no HTTP work,
//! the most a proxy built on tokio like edgefilter reaches here). Prints a markdown
//! table with requests/s, p50, p99, and the ratios edgefilter/peer per round and overall.
//! Then revocation propagation ([`crate::propagation`]) and, last, a banned source flooding the
//! proxy ([`crate::flood`], alone with `--flood-only`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{output, root, run as run_cmd};

/// Bench options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// edgefilter shards; HAProxy threads and nginx workers follow it.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Interleaved rounds (each target once per round); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the XDP cost bench.
    #[arg(long)]
    pub proxy_only: bool,
    /// Only the revocation propagation step.
    #[arg(long)]
    pub propagation_only: bool,
    /// Only these load targets (repeatable; names as in the table, e.g. `--only edgefilter
    /// --only "edgefilter, access log on"`); every one by default.
    #[arg(long, value_name = "TARGET")]
    pub only: Vec<String>,
    /// Only the banned-source flood step (XDP, network namespaces; needs root).
    #[arg(long)]
    pub flood_only: bool,
    /// Flood rates (packets/s) of the flood step, comma-separated. trafgen sends from the
    /// shared cores and pays the receive work too, so the rates actually sent are measured.
    #[arg(long, value_delimiter = ',', default_value = "20000,50000")]
    pub flood_rates: Vec<u64>,
}

/// The load targets, in table order.
const TARGETS: [&str; 10] = [
    "direct upstream",
    "I/O floor (byte relay)",
    "edgefilter",
    "edgefilter, HTTPS upstream",
    "edgefilter, Unix-socket upstream",
    "edgefilter, access log on",
    "edgefilter, allow-all gate",
    "HAProxy",
    "nginx",
    "nginx (stock proxy_pass)",
];

/// One measured target.
pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) errors: u64,
}

/// A child process killed when dropped, so a failed bench leaves nothing running.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so a master process (nginx, HAProxy) takes its workers down with it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Its process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self { name, child })
    }

    /// Like [`Proc::spawn`], with stdout and stderr appended to `log`.
    pub(crate) fn spawn_logging(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self { name, child })
    }

    /// Its name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Its exit status if it has exited.
    pub(crate) fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits until `addr` accepts connections (10 s at most).
    pub(crate) fn ready(mut self, addr: SocketAddr) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited early with {status}", self.name);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(self);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not listen on {addr} within 10 s", self.name)
    }
}

/// Runs the benches.
pub fn run(args: &BenchArgs) -> Result<()> {
    let root = root();
    if args.flood_only {
        crate::util::ensure_packages(&["wrk", "netsniff-ng", "curl"])?;
        build_bench_upstream(&root)?;
        build_edgefilter(&root)?;
        return crate::flood::run(&root, args);
    }
    // The load generator, the peers and the flooder (not needed by the tests, so not installed
    // by .ci/run).
    crate::util::ensure_packages(&[
        "wrk",
        "nginx",
        "haproxy",
        "xdp-tools",
        "curl",
        "netsniff-ng",
    ])?;
    if !args.proxy_only && !args.propagation_only {
        xdp_cost(&root)?;
        key_benches(&root)?;
    }
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "benches",
        "--bin",
        "bench_upstream",
        "--bin",
        "relay_floor",
        "--bin",
        "proxy_allow_all",
    ]))
    .context("building bench_upstream, relay_floor and proxy_allow_all")?;
    // The throughput rows run target/release/edgefilter: build it from this tree first.
    build_edgefilter(&root)?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).context("creating target/bench")?;
    let up = free_addr()?;
    let _upstream = Proc::spawn(
        "bench_upstream",
        Command::new(root.join("target/release/bench_upstream")).arg(up.to_string()),
    )?
    .ready(up)?;
    // The same origin over TLS (its CA written for edgefilter's upstream_ca) and on a Unix
    // socket, for the upstream-transport rows.
    let ups = BenchUpstreams {
        tcp: up,
        tls: free_addr()?,
        ca: dir.join("upstream-ca.pem"),
        unix: dir.join("upstream.sock"),
    };
    let _ = std::fs::remove_file(&ups.ca);
    let _tls_upstream = Proc::spawn(
        "bench_upstream (TLS)",
        Command::new(root.join("target/release/bench_upstream"))
            .arg(ups.tls.to_string())
            .arg("--tls")
            .arg(&ups.ca),
    )?
    .ready(ups.tls)?;
    let _unix_upstream = Proc::spawn(
        "bench_upstream (Unix socket)",
        Command::new(root.join("target/release/bench_upstream"))
            .arg(format!("unix:{}", ups.unix.display())),
    )?;
    for _ in 0..100 {
        if ups.unix.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    if args.propagation_only {
        return propagation(&root, &dir, up, args);
    }
    // edgefilter checks a real key on every request (hash, lookup, every check of the chain);
    // every target gets the same header so the requests are byte-for-byte the same.
    let key = bench_key(&root, &dir, up, args.shards)?;
    // Rounds interleave the targets so a noisy neighbour hurts them alike.
    let targets = chosen_targets(&args.only)?;
    let mut samples: Vec<Vec<Row>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds.max(1) {
        eprintln!("round {}/{}", round + 1, args.rounds.max(1));
        for (i, name) in targets.iter().enumerate() {
            samples[i].push(run_target(name, &root, &dir, &ups, &key, args)?);
        }
    }
    print_rounds(&samples);
    let rows: Vec<Row> = samples.into_iter().map(median).collect();
    print_table(&rows, args);
    propagation(&root, &dir, up, args)?;
    // Last: it installs a Ctrl-C handler (to delete its namespaces) that stays for the process.
    if !args.proxy_only {
        crate::flood::run(&root, args)?;
    }
    Ok(())
}

/// Builds the bench upstream alone (what the flood step needs of `benches`).
fn build_bench_upstream(root: &Path) -> Result<()> {
    run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "benches",
        "--bin",
        "bench_upstream",
    ]))
    .context("building bench_upstream")
}

/// The load targets `--only` names (all of them when it names none), in table order.
fn chosen_targets(only: &[String]) -> Result<Vec<&'static str>> {
    if let Some(bad) = only.iter().find(|o| !TARGETS.contains(&o.as_str())) {
        bail!("no load target {bad:?}; the targets are {TARGETS:?}");
    }
    Ok(TARGETS
        .into_iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t))
        .collect())
}

/// Builds the release `edgefilter` binary the load targets run.
fn build_edgefilter(root: &Path) -> Result<()> {
    run_cmd(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "filter-user",
        "--bin",
        "edgefilter",
    ]))
    .context("building edgefilter")
}

/// Starts the release daemon (2 shards by default) and runs the propagation step against it.
fn propagation(root: &Path, dir: &Path, up: SocketAddr, args: &BenchArgs) -> Result<()> {
    build_edgefilter(root)?;
    let addr = free_addr()?;
    let conf = fill(root, "edgefilter.toml", dir, addr, up, args.shards)?;
    let text = std::fs::read_to_string(&conf)?;
    let admin: SocketAddr = text
        .split("[admin]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("listen = ")))
        .map(|v| v.trim_matches('"').parse())
        .context("no admin.listen in the bench config")??;
    let token = dir.join("admin.token");
    let _ = std::fs::remove_file(&token);
    let _daemon = Proc::spawn(
        "edgefilter",
        Command::new(root.join("target/release/edgefilter"))
            .args(["run", "--no-xdp", "--config"])
            .arg(&conf),
    )?
    .ready(admin)?;
    crate::propagation::run(addr, admin, &token, args.connections)
}

/// The bench origin, over each transport an upstream can use.
struct BenchUpstreams {
    /// Plain HTTP over TCP.
    tcp: SocketAddr,
    /// HTTPS, with a certificate signed by the CA in `ca`.
    tls: SocketAddr,
    ca: PathBuf,
    /// Plain HTTP over this Unix socket.
    unix: PathBuf,
}

/// Starts one target (the upstream itself needs nothing), measures it, stops it.
fn run_target(
    name: &'static str,
    root: &Path,
    dir: &Path,
    ups: &BenchUpstreams,
    key: &str,
    args: &BenchArgs,
) -> Result<Row> {
    let up = ups.tcp;
    if name == "direct upstream" {
        return measure(name, up, key, args);
    }
    let addr = free_addr()?;
    let _proc = match name {
        "I/O floor (byte relay)" => Proc::spawn(
            name,
            Command::new(root.join("target/release/relay_floor"))
                .arg(addr.to_string())
                .arg(up.to_string())
                .arg(args.shards.to_string()),
        )?,
        "edgefilter, allow-all gate" => {
            let conf = fill(root, "edgefilter.toml", dir, addr, up, args.shards)?;
            Proc::spawn(
                name,
                Command::new(root.join("target/release/proxy_allow_all")).arg(&conf),
            )?
        }
        "edgefilter, HTTPS upstream" | "edgefilter, Unix-socket upstream" => {
            // The same daemon; only the route's upstream differs.
            let conf = fill(root, "edgefilter.toml", dir, addr, up, args.shards)?;
            let upstream = if name == "edgefilter, HTTPS upstream" {
                format!(
                    "upstream = \"https://{}\"\nupstream_ca = \"{}\"",
                    ups.tls,
                    ups.ca.display()
                )
            } else {
                format!("upstream = \"unix:{}\"", ups.unix.display())
            };
            let text = std::fs::read_to_string(&conf)?
                .replace(&format!("upstream = \"http://{up}\""), &upstream);
            std::fs::write(&conf, text)?;
            Proc::spawn(
                name,
                Command::new(root.join("target/release/edgefilter"))
                    .args(["run", "--no-xdp", "--config"])
                    .arg(&conf),
            )?
        }
        "edgefilter" | "edgefilter, access log on" => {
            let conf = fill(root, "edgefilter.toml", dir, addr, up, args.shards)?;
            if name == "edgefilter, access log on" {
                // The same daemon writing every request's line to a file (metrics are always on).
                let log = dir.join("access.log");
                let _ = std::fs::remove_file(&log);
                let text = std::fs::read_to_string(&conf)?.replace(
                    "access_log = \"off\"",
                    &format!("access_log = \"{}\"", log.display()),
                );
                std::fs::write(&conf, text)?;
            }
            Proc::spawn(
                name,
                Command::new(root.join("target/release/edgefilter"))
                    .args(["run", "--no-xdp", "--config"])
                    .arg(&conf),
            )?
        }
        "HAProxy" => {
            let conf = fill(root, "haproxy.cfg", dir, addr, up, args.shards)?;
            Proc::spawn(name, Command::new("haproxy").arg("-f").arg(&conf))?
        }
        _ => {
            // "nginx": upstream keep-alive (tuned); the other: nginx's defaults.
            let template = if name == "nginx" {
                "nginx.conf"
            } else {
                "nginx-stock.conf"
            };
            let conf = fill(root, template, dir, addr, up, args.shards)?;
            Proc::spawn(
                name,
                Command::new("nginx")
                    .arg("-c")
                    .arg(&conf)
                    .arg("-p")
                    .arg(dir),
            )?
        }
    }
    .ready(addr)?;
    measure(name, addr, key, args)
}

/// Creates the key every bench request carries, in the bench store edgefilter will load.
fn bench_key(root: &Path, dir: &Path, up: SocketAddr, shards: usize) -> Result<String> {
    // A fresh store: the database and what lives beside it (its reserve file, which makes a
    // missing database an error rather than a new empty store, and SQLite's journal).
    for file in ["keys.db", "keys.db.reserve", "keys.db-wal", "keys.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    let conf = fill(root, "edgefilter.toml", dir, free_addr()?, up, shards)?;
    create_key(
        Command::new(root.join("target/release/edgefilter"))
            .arg("--config")
            .arg(&conf),
    )
}

/// Creates a key with `edgefilter` (the command given, its config already chosen) and returns
/// it; never printed.
pub(crate) fn create_key(edgefilter: &mut Command) -> Result<String> {
    let out = output(edgefilter.args([
        "keys", "create", "--tenant", "bench", "--user", "bench", "--json",
    ]))
    .context("creating the bench key")?;
    out.split('"')
        .skip_while(|f| *f != "key")
        .nth(2)
        .map(str::to_string)
        .context("`keys create --json` printed no key")
}

/// Per-column medians of one target's rounds.
fn median(mut rows: Vec<Row>) -> Row {
    let mid = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rps: Vec<f64> = rows.iter().map(|r| r.rps).collect();
    let mut p50: Vec<f64> = rows.iter().map(|r| r.p50_us).collect();
    let mut p99: Vec<f64> = rows.iter().map(|r| r.p99_us).collect();
    let errors = rows.iter().map(|r| r.errors).sum();
    let first = rows.swap_remove(0);
    Row {
        name: first.name,
        rps: mid(&mut rps),
        p50_us: mid(&mut p50),
        p99_us: mid(&mut p99),
        errors,
    }
}

/// `cargo run --release -p benches --bin xdp_cost`, when that bench exists.
fn xdp_cost(root: &Path) -> Result<()> {
    if !root.join("benches/src/bin/xdp_cost.rs").exists() {
        println!("(no benches/src/bin/xdp_cost.rs: XDP cost bench skipped)");
        return Ok(());
    }
    run_cmd(Command::new("cargo").current_dir(root).args([
        "run",
        "--release",
        "-p",
        "benches",
        "--bin",
        "xdp_cost",
    ]))
    .context("XDP cost bench")
}

/// The key-check benches: criterion `decide` and `propagation`, then the 1M-key memory and
/// start-up measurement.
fn key_benches(root: &Path) -> Result<()> {
    for bench in ["decide", "propagation"] {
        run_cmd(Command::new("cargo").current_dir(root).args([
            "bench",
            "-p",
            "benches",
            "--bench",
            bench,
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
        ]))
        .with_context(|| format!("criterion bench {bench}"))?;
    }
    run_cmd(Command::new("cargo").current_dir(root).args([
        "run",
        "--release",
        "-p",
        "benches",
        "--bin",
        "keys_memory",
    ]))
    .context("1M-key memory bench")
}

/// A currently free 127.0.0.1 port.
pub(crate) fn free_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// Writes `benches/peers/<name>` with its placeholders filled into `dir`.
pub(crate) fn fill(
    root: &Path,
    name: &str,
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    shards: usize,
) -> Result<PathBuf> {
    let src = root.join("benches/peers").join(name);
    let text =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let admin = free_addr()?;
    let text = text
        .replace("@LISTEN@", &listen.to_string())
        .replace("@UPSTREAM@", &upstream.to_string())
        .replace("@THREADS@", &shards.to_string())
        .replace("@WORKERS@", &shards.to_string())
        .replace("@SHARDS@", &shards.to_string())
        .replace("@ADMIN@", &admin.to_string())
        .replace("@DIR@", &dir.display().to_string());
    let dst = dir.join(name);
    std::fs::write(&dst, text).with_context(|| format!("writing {}", dst.display()))?;
    Ok(dst)
}

/// A 1 s warm-up, then the measured wrk run.
fn measure(name: &'static str, addr: SocketAddr, key: &str, args: &BenchArgs) -> Result<Row> {
    let url = format!("http://{addr}/");
    let header = format!("Authorization: Bearer {key}");
    let wrk = |secs: u64| {
        output(Command::new("timeout").args([
            &(secs + 30).to_string(),
            "wrk",
            "-t2",
            &format!("-c{}", args.connections),
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            &header,
            &url,
        ]))
        .with_context(|| format!("wrk against {name}"))
    };
    wrk(1)?;
    let out = wrk(args.duration)?;
    let row = parse_wrk(name, &out).with_context(|| format!("parsing wrk output:\n{out}"))?;
    eprintln!(
        "{name}: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, errors {}",
        row.rps, row.p50_us, row.p99_us, row.errors
    );
    Ok(row)
}

pub(crate) fn parse_wrk(name: &'static str, out: &str) -> Result<Row> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>()?);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(micros(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(micros(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50_us), Some(p99_us)) => Ok(Row {
            name,
            rps,
            p50_us,
            p99_us,
            errors,
        }),
        _ => bail!("no Requests/sec or latency distribution"),
    }
}

/// `1.23ms` → 1230.
fn micros(v: &str) -> Result<f64> {
    let split = v
        .find(|c: char| c.is_ascii_alphabetic())
        .context("latency without unit")?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => bail!("unknown latency unit {unit}"),
    })
}

/// edgefilter's and the I/O floor's rates over the peers', round by round (the targets of a
/// round ran back to back, so these ratios are less noisy than ratios of medians).
fn print_rounds(samples: &[Vec<Row>]) {
    let of = |name: &str| {
        samples
            .iter()
            .find(|s| s.first().is_some_and(|r| r.name == name))
    };
    let pairs = [
        ("edgefilter", "I/O floor (byte relay)"),
        ("edgefilter, access log on", "edgefilter"),
        ("edgefilter, HTTPS upstream", "edgefilter"),
        ("edgefilter, Unix-socket upstream", "edgefilter"),
        ("edgefilter", "HAProxy"),
        ("edgefilter", "nginx"),
        ("edgefilter, allow-all gate", "HAProxy"),
        ("edgefilter, allow-all gate", "I/O floor (byte relay)"),
        ("I/O floor (byte relay)", "HAProxy"),
        ("I/O floor (byte relay)", "nginx"),
    ];
    println!();
    for (top, bottom) in pairs {
        let (Some(t), Some(b)) = (of(top), of(bottom)) else {
            continue;
        };
        let ratios: Vec<String> = t
            .iter()
            .zip(b)
            .map(|(t, b)| format!("{:.2}x", t.rps / b.rps))
            .collect();
        println!("{top}/{bottom} per round: {}", ratios.join(", "));
    }
}

fn print_table(rows: &[Row], args: &BenchArgs) {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!();
    println!(
        "wrk -t2 -c{} -d{}s --latency, median of {} interleaved rounds, {} cores, \
         edgefilter {} shards (real key check on every request), HAProxy nbthread {}, nginx worker_processes {}:",
        args.connections,
        args.duration,
        args.rounds.max(1),
        cores,
        args.shards,
        args.shards,
        args.shards
    );
    println!();
    println!("| target | requests/s | p50 | p99 | errors |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            r.name, r.rps, r.p50_us, r.p99_us, r.errors
        );
    }
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    if let Some(ef) = find("edgefilter") {
        if let Some(tls) = find("edgefilter, HTTPS upstream") {
            println!();
            println!(
                "HTTPS upstream/plain HTTP upstream: {:.2}x requests/s (target ≥ 0.75x), p99 {:.2}x",
                tls.rps / ef.rps,
                tls.p99_us / ef.p99_us
            );
        }
        if let Some(unix) = find("edgefilter, Unix-socket upstream") {
            println!(
                "Unix-socket upstream/loopback TCP upstream: {:.2}x requests/s, p99 {:.2}x",
                unix.rps / ef.rps,
                unix.p99_us / ef.p99_us
            );
        }
    }
    if let (Some(ef), Some(ha), Some(ng)) = (find("edgefilter"), find("HAProxy"), find("nginx")) {
        println!();
        println!(
            "edgefilter/HAProxy: {:.2}x requests/s (target ≥ 1.3x), p99 {:.2}x (target ≤ 1.0x)",
            ef.rps / ha.rps,
            ef.p99_us / ha.p99_us
        );
        println!(
            "edgefilter/nginx:   {:.2}x requests/s (target ≥ 1.8x), p99 {:.2}x",
            ef.rps / ng.rps,
            ef.p99_us / ng.p99_us
        );
        if let Some(open) = find("edgefilter, allow-all gate") {
            println!(
                "edgefilter with the allow-all gate (issue 3's set-up)/HAProxy: {:.2}x requests/s, \
                 p99 {:.2}x; /nginx: {:.2}x",
                open.rps / ha.rps,
                open.p99_us / ha.p99_us,
                open.rps / ng.rps
            );
        }
        if let Some(floor) = find("I/O floor (byte relay)") {
            println!(
                "edgefilter/I/O floor: {:.2}x requests/s; I/O floor/HAProxy: {:.2}x, I/O floor/nginx: \
                 {:.2}x (the floor: the most a proxy built on tokio like edgefilter reaches here)",
                ef.rps / floor.rps,
                floor.rps / ha.rps,
                floor.rps / ng.rps
            );
        }
        if let Some(stock) = find("nginx (stock proxy_pass)") {
            println!(
                "edgefilter/nginx with a stock proxy_pass (no upstream keep-alive): {:.2}x requests/s, p99 {:.2}x",
                ef.rps / stock.rps,
                ef.p99_us / stock.p99_us
            );
        }
    }
}
