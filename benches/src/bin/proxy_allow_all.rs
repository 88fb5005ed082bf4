//! edgefilter's proxy with the placeholder "allow every key" gate, for `cargo xtask bench`: the
//! set-up issue 3's throughput target is judged in. It reads the same config file as the daemon
//! row and runs the same shards, parsing, routing and head rewriting; only the key check is
//! replaced by [`AllowAll`], and there is no store, admin API or XDP. Runs until killed.
//!
//! Usage: `proxy_allow_all CONFIG`.

use std::path::PathBuf;

use anyhow::Context;
use edgefilter::config::Config;
use edgefilter::gate::AllowAll;

fn main() -> anyhow::Result<()> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .context("usage: proxy_allow_all CONFIG")?
        .into();
    let cfg = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let _proxy = edgefilter::proxy::start(&cfg, Box::new(|_| Box::new(AllowAll)))
        .context("starting the proxy")?;
    loop {
        std::thread::park();
    }
}
