//! Memory back to the kernel after many connections closed.
//!
//! The C library keeps what the proxy freed in its arenas; after a mass close the pages of the
//! closed connections stay resident as long as one allocation made later sits above them
//! (measured: 19,000 idle connections closed, 119 of their 119 MB still resident). A thread of
//! its own looks at the open-connection count every [`EVERY`] and, when it fell by at least
//! [`MIN_DROP`] and by half since its peak, has the allocator release its free pages
//! ([`heap_trim::release_free_memory`]). Off the shards' threads: the walk over the arenas takes
//! milliseconds.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::obs::metrics::RequestMetrics;

/// How often the count is looked at.
pub const EVERY: Duration = Duration::from_secs(2);

/// The fewest closed connections (from the peak) worth a trim.
pub const MIN_DROP: usize = 1024;

/// Starts the thread; it ends once `metrics` (which hold the count) are dropped.
///
/// # Errors
/// When the thread cannot be spawned.
pub(crate) fn spawn(metrics: &Arc<RequestMetrics>) -> std::io::Result<()> {
    let metrics = Arc::downgrade(metrics);
    std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(move || watch(&metrics))
        .map(drop)
}

fn watch(metrics: &Weak<RequestMetrics>) {
    let mut peak = 0;
    loop {
        std::thread::sleep(EVERY);
        let Some(m) = metrics.upgrade() else {
            return;
        };
        let open = m.open_connections().load(Ordering::Relaxed);
        drop(m);
        peak = peak.max(open);
        if worth_a_trim(peak, open) {
            let t = Instant::now();
            let released = heap_trim::release_free_memory();
            tracing::debug!(
                peak,
                open,
                released,
                took_ms = t.elapsed().as_millis(),
                "connections closed: freed memory returned to the kernel"
            );
            peak = open;
        }
    }
}

/// Whether `open` connections, down from `peak`, are worth a trim.
fn worth_a_trim(peak: usize, open: usize) -> bool {
    peak.saturating_sub(open) >= MIN_DROP && open <= peak / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mass_close_is_worth_a_trim() {
        assert!(worth_a_trim(20_000, 0));
        assert!(worth_a_trim(4_000, 2_000));
        assert!(!worth_a_trim(1_000, 0), "too few to matter");
        assert!(!worth_a_trim(20_000, 15_000), "most still open");
    }
}
