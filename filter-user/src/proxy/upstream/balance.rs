//! Which of a route's targets takes the next request: the one with the fewest requests
//! outstanding (over every shard), ties taken in turn, skipping targets ejected after
//! consecutive failures and those this request already tried. When every untried target is
//! ejected, the one whose cool-down ends first is tried anyway: ejection steers traffic, it
//! never refuses a request by itself. A route with one target takes it without any of this.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::target::Target;
use crate::obs::upstreams::now_ms;

/// A route's targets.
#[derive(Debug)]
pub struct Targets {
    list: Vec<Arc<Target>>,
    /// Where ties start, rotated per pick.
    turn: AtomicUsize,
}

impl Targets {
    /// Over `list` (not empty).
    #[must_use]
    pub fn new(list: Vec<Arc<Target>>) -> Self {
        Self {
            list,
            turn: AtomicUsize::new(0),
        }
    }

    /// Every target.
    #[must_use]
    pub fn all(&self) -> &[Arc<Target>] {
        &self.list
    }

    /// The target for the next attempt, skipping the indices set in `tried` (bit `i`: target
    /// `i`); `None` once every target was tried.
    #[must_use]
    pub fn pick(&self, tried: u64) -> Option<(usize, &Arc<Target>)> {
        let n = self.list.len();
        if n == 1 {
            return (tried & 1 == 0).then(|| (0, &self.list[0]));
        }
        let now = now_ms();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        let mut soonest_back: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if i < 64 && tried & (1 << i) != 0 {
                continue;
            }
            let t = &self.list[i];
            if let Some(until) = t.health.ejected_until(now) {
                if soonest_back.is_none_or(|(_, u)| until < u) {
                    soonest_back = Some((i, until));
                }
                continue;
            }
            let load = t.health.outstanding();
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
            .or(soonest_back.map(|(i, _)| i))
            .map(|i| (i, &self.list[i]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn targets(n: usize) -> Targets {
        let list = (0..n)
            .map(|i| {
                let text = format!("http://127.0.0.1:{}", 9000 + i);
                Arc::new(
                    Target::new(i, "/v1/", &text, None, None, Duration::from_secs(30)).unwrap(),
                )
            })
            .collect();
        Targets::new(list)
    }

    #[test]
    fn ties_are_taken_in_turn_and_the_least_loaded_wins() {
        let t = targets(3);
        let picks: Vec<usize> = (0..6).map(|_| t.pick(0).unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        t.all()[0].health.begin();
        t.all()[0].health.begin();
        t.all()[1].health.begin();
        assert_eq!(t.pick(0).unwrap().0, 2);
        assert_eq!(
            t.pick(0b100).unwrap().0,
            1,
            "2 was tried: the least loaded of the rest"
        );
        assert!(t.pick(0b111).is_none());
    }

    #[test]
    fn ejected_targets_are_skipped_but_never_leave_the_route_empty() {
        let t = targets(2);
        let now = now_ms();
        for _ in 0..crate::obs::upstreams::EJECT_AFTER {
            t.all()[0].health.failed(now);
        }
        assert!((0..4).all(|_| t.pick(0).unwrap().0 == 1));
        assert_eq!(
            t.pick(0b10).unwrap().0,
            0,
            "only the ejected one is left: tried anyway"
        );
    }
}
