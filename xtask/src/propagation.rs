//! `cargo xtask bench` step: revocation propagation (store commit → every shard applied) in the
//! real daemon with 2 shards, read from its `/metrics` histogram; first with idle shards (the
//! baseline of the same run), then under a light and a full `wrk` load through the proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const METRIC: &str = "edgefilter_revocation_propagation_seconds";
/// Key changes per phase (each one create + one revoke = 2 samples).
const CHANGES: usize = 150;
/// wrk connections of the light-load phase.
const LIGHT_CONNECTIONS: u32 = 8;

/// Cumulative `(le, count)` buckets of the histogram.
type Buckets = Vec<(f64, u64)>;

/// Runs the step against a running daemon (proxy on `listen`, admin API on `admin`, token in
/// `token_file`).
pub fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    token_file: &Path,
    connections: u32,
) -> Result<()> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let token = token.trim();
    let load_key = create(admin, token)?.1;

    let base = buckets(admin)?;
    let idle_rt = churn(admin, token)?;
    let idle = diff(&buckets(admin)?, &base);
    let mut rows = vec![("idle".to_string(), idle.clone(), idle_rt)];
    // A light load first, then the full one: the tail grows with how oversubscribed the two
    // cores are (wrk, the origin and the shards all share them), which the two rows show.
    for conns in [LIGHT_CONNECTIONS.min(connections), connections] {
        let (h, rt) = under_load(listen, admin, token, &load_key, conns)?;
        rows.push((format!("under wrk -t2 -c{conns}"), h, rt));
    }

    println!("\n### Revocation propagation, 2 shards (store commit → last shard applied)\n");
    println!("| shards | samples | p50 ≤ | p99 ≤ | admin call p50 | admin call p99 |");
    println!("|---|---|---|---|---|---|");
    for (name, h, rt) in &rows {
        println!(
            "| {name} | {} | {} | {} | {:.0} µs | {:.0} µs |",
            h.last().map_or(0, |b| b.1),
            fmt_bound(quantile(h, 0.5)),
            fmt_bound(quantile(h, 0.99)),
            pct(rt, 0.5),
            pct(rt, 0.99),
        );
    }
    let full = rows.last().map_or(f64::INFINITY, |r| quantile(&r.1, 0.99));
    println!(
        "\np99 under the full load (-c{connections}) {} the 1 ms target (bucket bound; peer: idle shards in the same run, p99 ≤ {}).",
        if full <= 0.001 { "meets" } else { "misses" },
        fmt_bound(quantile(&idle, 0.99)),
    );
    Ok(())
}

/// Runs `CHANGES` create+revoke pairs while `wrk` loads the proxy with `connections`
/// connections; returns the propagation histogram of that phase and the admin call times.
fn under_load(
    listen: SocketAddr,
    admin: SocketAddr,
    token: &str,
    load_key: &str,
    connections: u32,
) -> Result<(Buckets, Vec<f64>)> {
    let mut wrk = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), "-d60s"])
        .args(["-H", &format!("X-API-Key: {load_key}")])
        .arg(format!("http://{listen}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting wrk")?;
    std::thread::sleep(Duration::from_secs(1));
    let before = buckets(admin);
    let loaded = churn(admin, token);
    let after = buckets(admin);
    let _ = wrk.kill();
    let _ = wrk.wait();
    Ok((diff(&after?, &before?), loaded?))
}

/// Creates and revokes `CHANGES` keys; returns each call's round trip in µs.
fn churn(admin: SocketAddr, token: &str) -> Result<Vec<f64>> {
    let mut rt = Vec::with_capacity(CHANGES * 2);
    for _ in 0..CHANGES {
        let t = Instant::now();
        let (id, _) = create(admin, token)?;
        rt.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let (status, body) = call(admin, "POST", &format!("/v1/keys/{id}/revoke"), token, "")?;
        if status != 200 {
            bail!("revoke answered {status}: {body}");
        }
        rt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rt)
}

/// `POST /v1/keys`: (id, key).
fn create(admin: SocketAddr, token: &str) -> Result<(String, String)> {
    let body = r#"{"tenant":"bench","user":"load"}"#;
    let (status, resp) = call(admin, "POST", "/v1/keys", token, body)?;
    if status != 201 {
        bail!("create answered {status}: {resp}");
    }
    let field = |name: &str| {
        let tag = format!("\"{name}\":\"");
        let at = resp.find(&tag).map(|i| i + tag.len());
        at.and_then(|i| resp[i..].split('"').next().map(str::to_owned))
            .with_context(|| format!("no {name} in the create answer"))
    };
    Ok((field("id")?, field("key")?))
}

fn buckets(admin: SocketAddr) -> Result<Buckets> {
    let (_, text) = call(admin, "GET", "/metrics", "", "")?;
    let prefix = format!("{METRIC}_bucket{{le=\"");
    let out: Buckets = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect();
    if out.is_empty() {
        bail!("no {METRIC} in /metrics");
    }
    Ok(out)
}

fn diff(after: &Buckets, before: &Buckets) -> Buckets {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0, a.1.saturating_sub(b.1)))
        .collect()
}

/// The smallest bucket bound holding quantile `q`.
fn quantile(h: &Buckets, q: f64) -> f64 {
    let total = h.last().map_or(0, |b| b.1);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let want = ((q * total as f64).ceil() as u64).max(1);
    h.iter()
        .find(|b| b.1 >= want)
        .map_or(f64::INFINITY, |b| b.0)
}

fn fmt_bound(s: f64) -> String {
    if s.is_infinite() {
        "> 1 s".into()
    } else if s < 0.001 {
        format!("{:.0} µs", s * 1e6)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

fn pct(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let i = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

/// One HTTP/1.1 request (Connection: close): (status, body).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String)> {
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let mut s = TcpStream::connect(addr).with_context(|| format!("admin API at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: b\r\n{auth}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad answer from {addr}"))?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}
