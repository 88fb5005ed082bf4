//! Names that move: a background thread re-resolves each target's host name every
//! `resolve_interval` (and soon after a connect to it failed), off the request path. Every
//! address found is used; a name that stops resolving keeps its last good addresses, and says
//! so once in the log and in `edgefilter_upstream_resolve_failures_total` each time.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::target::Target;
use crate::obs::upstreams::now_ms;

/// How often the thread looks for a target that is due.
const TICK: Duration = Duration::from_millis(500);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the resolver thread: it reads the targets in force from `targets` at each tick and
/// ends once `alive` can no longer be upgraded (the proxy is gone).
///
/// # Errors
/// The thread or its runtime could not be made.
pub fn spawn<T, F>(alive: Weak<T>, targets: F) -> std::io::Result<()>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Vec<Arc<Target>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("upstream-dns".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    tokio::time::sleep(TICK).await;
                    let Some(owner) = alive.upgrade() else { return };
                    let list = targets(&owner);
                    drop(owner);
                    let now = now_ms();
                    for t in list.iter().filter(|t| t.has_name() && t.resolve_due(now)) {
                        refresh(t).await;
                    }
                }
            });
        })?;
    Ok(())
}

/// Looks `t` up once and puts what it found in force (or keeps the last good addresses).
pub async fn refresh(t: &Target) {
    t.resolved_at.store(now_ms(), Ordering::Relaxed);
    let name = t.lookup_name();
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name.as_str())).await;
    let result: Result<Vec<SocketAddr>, String> = match found {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("no address".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {}s", LOOKUP_TIMEOUT.as_secs())),
    };
    let health = &t.health;
    match result {
        Ok(mut addrs) => {
            addrs.sort_unstable();
            addrs.dedup();
            if health.resolve_failing.swap(false, Ordering::Relaxed) {
                tracing::info!(upstream = %t.label(), addresses = addrs.len(), "upstream name resolves again");
            }
            if *t.addrs() != addrs {
                tracing::info!(upstream = %t.label(), addresses = ?addrs, "upstream name now resolves to new addresses");
                t.set_addrs(addrs);
            }
        }
        Err(why) => {
            health.resolve_failures.fetch_add(1, Ordering::Relaxed);
            if !health.resolve_failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    upstream = %t.label(),
                    error = %why,
                    kept = t.addrs().len(),
                    "upstream name no longer resolves: keeping its last good addresses"
                );
            }
        }
    }
}
