//! `cargo xtask run`: a demo upstream on 127.0.0.1:9000 plus the daemon with the example config,
//! and the commands to create a key and call through it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{root, run as run_cmd};

/// Address of the demo upstream (matches `examples/edgefilter.toml`).
const DEMO_UPSTREAM: &str = "127.0.0.1:9000";

/// Starts the demo upstream and runs the daemon in the foreground until Ctrl-C.
pub fn run(config: &str, no_xdp: bool) -> Result<()> {
    let root = root();
    std::fs::create_dir_all(root.join("var")).context("creating ./var")?;
    let listener = TcpListener::bind(DEMO_UPSTREAM).with_context(|| {
        format!("binding the demo upstream on {DEMO_UPSTREAM} (is something else there?)")
    })?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_demo(conn));
        }
    });
    let bin = root.join("target/release/edgefilter");
    let cli = format!("{} --config {config}", bin.display());
    eprintln!(
        "\nedgefilter: demo upstream on http://{DEMO_UPSTREAM}, proxy on http://127.0.0.1:8080 (see {config})\n\
         In another shell:\n  \
         {cli} keys create --tenant demo --user alice --scope ai:invoke\n  \
         curl -i -H \"Authorization: Bearer <the key it printed>\" http://127.0.0.1:8080/v1/hello\n  \
         curl -i http://127.0.0.1:8080/v1/hello                       # MISSING_KEY, with the fix\n  \
         {cli} explain --key <key> --path /v1/hello\n  \
         {cli} allow list\n"
    );
    let mut cmd = Command::new(&bin);
    cmd.current_dir(&root).args(["run", "--config", config]);
    if std::env::var_os("DEMO_UPSTREAM_KEY").is_none() {
        cmd.env("DEMO_UPSTREAM_KEY", "demo-upstream-credential");
    }
    if no_xdp {
        cmd.arg("--no-xdp");
    }
    run_cmd(&mut cmd)
}

/// Answers every request on one connection with a small JSON echo of what the upstream saw.
fn serve_demo(conn: TcpStream) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut seen = Vec::new();
        let mut body_len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.to_ascii_lowercase();
                if name == "content-length" {
                    body_len = value.trim().parse().unwrap_or(0);
                }
                if name.starts_with("x-edgefilter-") || name == "x-request-id" {
                    seen.push(format!("\"{name}\":\"{}\"", value.trim().replace('"', "")));
                }
            }
        }
        let mut body = vec![0; body_len];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .replace('"', "");
        let json = format!(
            "{{\"upstream\":\"demo\",\"path\":\"{target}\",{}}}\n",
            seen.join(",")
        );
        let json = json.replace(",}", "}");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            json.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(json.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}
