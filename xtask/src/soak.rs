//! `cargo xtask soak`: the release daemon (2 shards, SQLite, no XDP) in front of the bench
//! upstream for `--minutes` (10 by default) at half its peak load, measured with `wrk` in the
//! same run, while a key is revoked through the admin API every second. Keep-alive clients
//! cycle over a window of live keys plus the last few revoked ones; every answer is checked:
//! 200 for a live key, 401 for a key whose revoke had returned before the request was sent
//! (any 2xx there is a revoked key let through), nothing else. The daemon's RSS is sampled
//! every 10 s. Prints the figures and fails on any error, any revoked key let through, or RSS
//! that grew by more than 10 % (+ 8 MiB) from the first minute to the last.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{Proc, fill, free_addr};
use crate::util::{output, root, run as run_cmd};

/// Keys made before the load; one is revoked per second, so this bounds the minutes.
const SPARE_KEYS: usize = 64;
/// Client threads, each with its own keep-alive connections.
const THREADS: usize = 8;
const CONNS_PER_THREAD: usize = 2;
/// Revoked keys the clients keep trying (each must answer 401).
const REVOKED_WINDOW: usize = 4;
/// Live keys the clients use at a time.
const LIVE_WINDOW: usize = 32;

/// `cargo xtask soak` flags.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Fraction of the measured peak requests/s to hold.
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
}

/// Runs the soak.
pub fn run(args: &SoakArgs) -> Result<()> {
    let root = root();
    crate::util::ensure_packages(&["wrk"])?;
    // The same two builds as `cargo xtask bench`, so either reuses the other's artifacts.
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "benches",
        "--bin",
        "bench_upstream",
    ]))
    .context("building bench_upstream")?;
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "filter-user",
        "--bin",
        "edgefilter",
    ]))
    .context("building edgefilter")?;
    let dir = root.join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).context("creating target/soak")?;
    let up = free_addr()?;
    let _upstream = Proc::spawn(
        "bench_upstream",
        Command::new(root.join("target/release/bench_upstream")).arg(up.to_string()),
    )?
    .ready(up)?;
    let listen = free_addr()?;
    let conf = fill(&root, "edgefilter.toml", &dir, listen, up, 2)?;
    let admin = admin_addr(&conf)?;
    let daemon = Proc::spawn(
        "edgefilter",
        Command::new(root.join("target/release/edgefilter"))
            .args(["run", "--no-xdp", "--config"])
            .arg(&conf),
    )?
    .ready(admin)?;
    let pid = daemon.id();
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .context("reading the admin token")?
        .trim()
        .to_owned();

    let revocations = usize::try_from(args.minutes * 60).unwrap_or(usize::MAX);
    let total = revocations + LIVE_WINDOW + SPARE_KEYS;
    eprintln!("soak: creating {total} keys");
    let keys: Arc<Vec<(String, String)>> = Arc::new(
        (0..total)
            .map(|i| create_key(admin, &token, i))
            .collect::<Result<_>>()?,
    );

    let peak = peak_rps(listen, &keys[0].1)?;
    let target = (peak * args.load).max(1.0);
    eprintln!(
        "soak: peak {peak:.0} req/s (wrk -t2 -c32, 5 s); holding {target:.0} req/s for {} min",
        args.minutes
    );

    // revoked_at[i]: ns since `t0` when key i's revoke returned (0: live).
    let t0 = Instant::now();
    let revoked_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let next_revoke = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let per_thread = target / THREADS as f64;
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (keys, revoked_at, next_revoke, stop, counts) = (
                keys.clone(),
                revoked_at.clone(),
                next_revoke.clone(),
                stop.clone(),
                counts.clone(),
            );
            std::thread::spawn(move || {
                client(
                    t,
                    listen,
                    per_thread,
                    &keys,
                    &revoked_at,
                    &next_revoke,
                    &stop,
                    &counts,
                    t0,
                );
            })
        })
        .collect();

    let mut rss = Vec::new();
    let mut revoke_ms = Vec::new();
    let end = t0 + Duration::from_secs(args.minutes * 60);
    let mut tick = t0;
    let mut failure = None;
    while Instant::now() < end {
        tick += Duration::from_secs(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let i = next_revoke.load(Ordering::Relaxed);
        let began = Instant::now();
        if let Err(e) = revoke(admin, &token, &keys[i].0) {
            failure = Some(e.context(format!("revoking key {i}")));
            break;
        }
        revoke_ms.push(began.elapsed().as_secs_f64() * 1000.0);
        let at = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        revoked_at[i].store(at.max(1), Ordering::Release);
        next_revoke.store(i + 1, Ordering::Release);
        if rss.len() * 10 <= usize::try_from(t0.elapsed().as_secs()).unwrap_or(0) {
            rss.push(rss_kib(pid)?);
        }
        if tick.duration_since(t0).as_secs().is_multiple_of(60) {
            eprintln!(
                "soak: {} s, {} requests, {} errors, {} let through, RSS {} KiB",
                t0.elapsed().as_secs(),
                counts.sent.load(Ordering::Relaxed),
                counts.errors.load(Ordering::Relaxed),
                counts.let_through.load(Ordering::Relaxed),
                rss.last().copied().unwrap_or(0)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    rss.push(rss_kib(pid)?);
    drop(daemon);
    report(
        args,
        peak,
        target,
        t0.elapsed(),
        &counts,
        &rss,
        &mut revoke_ms,
    )
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    refused_revoked: AtomicU64,
    errors: AtomicU64,
    let_through: AtomicU64,
}

/// One client thread: paced to `rate` requests/s over its keep-alive connections.
#[allow(clippy::too_many_arguments, reason = "one thread's whole context")]
fn client(
    t: usize,
    addr: SocketAddr,
    rate: f64,
    keys: &[(String, String)],
    revoked_at: &[AtomicU64],
    next_revoke: &AtomicUsize,
    stop: &AtomicBool,
    counts: &Counts,
    t0: Instant,
) {
    let mut conns: Vec<Option<TcpStream>> = (0..CONNS_PER_THREAD).map(|_| None).collect();
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut due = Instant::now();
    let mut n: usize = t;
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        due += gap;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        n = n.wrapping_add(7919);
        let first_live = next_revoke.load(Ordering::Acquire);
        let lo = first_live.saturating_sub(REVOKED_WINDOW);
        let i = (lo + n % (first_live - lo + LIVE_WINDOW)).min(keys.len() - 1);
        // Read before sending: a revoke that returned before this request was sent.
        let revoked = revoked_at[i].load(Ordering::Acquire) != 0;
        let c = n % CONNS_PER_THREAD;
        counts.sent.fetch_add(1, Ordering::Relaxed);
        match call(&mut conns[c], addr, &keys[i].1, &mut buf) {
            Some(200) if revoked => {
                counts.let_through.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "soak: key {i} answered 200 at {:?}, after its revoke returned",
                    t0.elapsed()
                );
            }
            Some(200) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            // 401 for a key being revoked right now (its revoke has not returned) is fine too.
            Some(401) if revoked || i < first_live + 1 => {
                counts.refused_revoked.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                let e = counts.errors.fetch_add(1, Ordering::Relaxed);
                if e < 10 {
                    eprintln!("soak: key {i}: unexpected answer {other:?}");
                }
                conns[c] = None;
            }
        }
    }
}

/// One keep-alive `GET /` with the key; the status, or `None` on a connection failure.
fn call(conn: &mut Option<TcpStream>, addr: SocketAddr, key: &str, buf: &mut [u8]) -> Option<u16> {
    for _ in 0..2 {
        if conn.is_none() {
            let s = TcpStream::connect(addr).ok()?;
            s.set_nodelay(true).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            *conn = Some(s);
        }
        let s = conn.as_mut()?;
        let req =
            format!("GET /soak HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {key}\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            *conn = None;
            continue;
        }
        match read_answer(s, buf) {
            Some((status, keep)) => {
                if !keep {
                    *conn = None;
                }
                return Some(status);
            }
            None => *conn = None,
        }
    }
    None
}

/// Reads one answer (head + `Content-Length` body): (status, connection stays open).
fn read_answer(s: &mut TcpStream, buf: &mut [u8]) -> Option<(u16, bool)> {
    let mut len = 0;
    let head_end = loop {
        let n = s.read(&mut buf[len..]).ok()?;
        if n == 0 {
            return None;
        }
        len += n;
        if let Some(p) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if len == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let mut body = 0usize;
    let mut keep = true;
    for line in head.lines() {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            body = v.trim().parse().ok()?;
        } else if lower.starts_with("connection:") && lower.contains("close") {
            keep = false;
        }
    }
    let mut have = len - head_end;
    while have < body {
        let n = s.read(&mut buf[..]).ok()?;
        if n == 0 {
            return None;
        }
        have += n;
    }
    Some((status, keep))
}

/// One admin API call; (status, body).
fn admin_call(
    admin: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(admin).context("connecting to the admin API")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("a bad admin answer")?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// Creates key `i`: (id, key).
fn create_key(admin: SocketAddr, token: &str, i: usize) -> Result<(String, String)> {
    let body = format!(r#"{{"tenant":"soak","user":"u{i}"}}"#);
    let (status, text) = admin_call(admin, token, "POST", "/v1/keys", &body)?;
    if status != 201 && status != 200 {
        bail!("creating key {i}: {status}");
    }
    let field = |name: &str| {
        text.split('"')
            .skip_while(|f| *f != name)
            .nth(2)
            .map(str::to_owned)
            .with_context(|| format!("no `{name}` in the create answer"))
    };
    Ok((field("id")?, field("key")?))
}

/// Revokes key `id`; returns once every shard applied it (the admin API's promise).
fn revoke(admin: SocketAddr, token: &str, id: &str) -> Result<()> {
    let (status, text) = admin_call(admin, token, "POST", &format!("/v1/keys/{id}/revoke"), "")?;
    if status != 200 {
        bail!("revoke answered {status}: {text}");
    }
    Ok(())
}

/// The daemon's peak requests/s with one key: `wrk -t2 -c32` for 5 s.
fn peak_rps(addr: SocketAddr, key: &str) -> Result<f64> {
    let out = output(Command::new("timeout").args([
        "40",
        "wrk",
        "-t2",
        "-c32",
        "-d5s",
        "-H",
        &format!("Authorization: Bearer {key}"),
        &format!("http://{addr}/"),
    ]))
    .context("wrk")?;
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk's output")
}

/// Resident set size of `pid` (KiB).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the daemon's /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The `[admin] listen` of a filled config.
fn admin_addr(conf: &Path) -> Result<SocketAddr> {
    let text = std::fs::read_to_string(conf)?;
    text.split("[admin]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("listen = ")))
        .map(|v| v.trim_matches('"').parse())
        .context("no admin.listen in the config")?
        .context("admin.listen")
}

fn report(
    args: &SoakArgs,
    peak: f64,
    target: f64,
    took: Duration,
    c: &Counts,
    rss: &[u64],
    revoke_ms: &mut [f64],
) -> Result<()> {
    revoke_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        revoke_ms
            .get(((revoke_ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let per_minute = 6.min(rss.len());
    let first = rss[..per_minute].iter().copied().max().unwrap_or(0);
    let last = rss[rss.len() - per_minute..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let sent = c.sent.load(Ordering::Relaxed);
    let (errors, through) = (
        c.errors.load(Ordering::Relaxed),
        c.let_through.load(Ordering::Relaxed),
    );
    println!(
        "\n### Soak: {} min at {:.0} % of peak, a revocation every second\n",
        args.minutes,
        args.load * 100.0
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!("| peak (wrk -t2 -c32, same run) | {peak:.0} req/s |");
    println!(
        "| held | {:.0} req/s (target {target:.0}) |",
        sent as f64 / took.as_secs_f64()
    );
    println!("| requests | {sent} |");
    println!("| 200 for live keys | {} |", c.ok.load(Ordering::Relaxed));
    println!(
        "| 401 for revoked keys | {} |",
        c.refused_revoked.load(Ordering::Relaxed)
    );
    println!(
        "| revocations | {} (admin call p50 {:.1} ms, p99 {:.1} ms) |",
        revoke_ms.len(),
        pct(0.5),
        pct(0.99)
    );
    println!("| revoked keys let through after their revoke returned | {through} |");
    println!("| errors (other answers, failed connections) | {errors} |");
    println!("| daemon RSS, first minute → last minute (max) | {first} KiB → {last} KiB |");
    let flat = last <= first + first / 10 + 8 * 1024;
    if errors > 0 || through > 0 || !flat {
        bail!("soak failed: {errors} errors, {through} let through, RSS flat: {flat}");
    }
    Ok(())
}
