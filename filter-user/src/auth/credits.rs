//! Host-wide credit wallets of usage-limited keys: each holds a lease of credits taken from the
//! store by the control side ([`crate::control::credits`]) and is spent by every shard with
//! one compare-and-swap per request, so no request waits on the store.
//!
//! The arithmetic: a request costing `c` takes `c` from the lease when at least `c` is held;
//! when what is held drops below the low-water mark (half the last grant, and at least the
//! largest cost seen) the wallet asks for more, without waiting. A wallet that cannot pay is
//! [`Dry::Exhausted`] when the store had nothing more to give at the last lease, or
//! [`Dry::Fetching`] when a lease is on its way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;

use crate::store::Lease;

/// Credits a first lease asks for (more when a route costs more than half of it).
pub const LEASE: u64 = 100;

/// The most a lease grows to for a key spent faster than its leases arrive (each time the
/// wallet ran dry while the store still held credits, the next lease is twice the last): the
/// most a crash can forfeit per key.
pub const LEASE_MAX: u64 = 1600;

/// `store_left` before the first lease: not known.
const UNKNOWN: u64 = u64::MAX;

/// Wakes the lease task; shared by every wallet of a book.
#[derive(Debug, Default)]
pub struct LeaseSignal {
    task: OnceLock<Thread>,
}

impl LeaseSignal {
    /// The lease task's thread is `t` from now on.
    pub fn bind(&self, t: Thread) {
        let _ = self.task.set(t);
    }

    fn wake(&self) {
        if let Some(t) = self.task.get() {
            t.unpark();
        }
    }
}

/// Why a wallet could not pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dry {
    /// The store had too few credits left at the last lease. `refill_due`: when they refill.
    Exhausted {
        /// Unix seconds of the next refill (refill clock), if the key refills.
        refill_due: Option<i64>,
    },
    /// The store still holds credits; a lease is being fetched.
    Fetching,
}

/// One key's credits on this host.
#[derive(Debug)]
pub struct Wallet {
    id: Box<str>,
    held: AtomicU64,
    store_left: AtomicU64,
    low_water: AtomicU64,
    largest_cost: AtomicU64,
    /// Unix seconds of the next refill (refill clock); 0: none.
    refill_due: AtomicI64,
    wanted: AtomicBool,
    /// What the next lease asks for (before the cost rule).
    size: AtomicU64,
    /// A request found the wallet dry while the store held credits since the last lease.
    starved: AtomicBool,
    signal: Arc<LeaseSignal>,
}

impl Wallet {
    /// An empty wallet for key `id` that wakes `signal` when it wants a lease.
    #[must_use]
    pub fn new(id: &str, signal: Arc<LeaseSignal>) -> Self {
        Self {
            id: id.into(),
            held: AtomicU64::new(0),
            store_left: AtomicU64::new(UNKNOWN),
            low_water: AtomicU64::new(0),
            largest_cost: AtomicU64::new(1),
            refill_due: AtomicI64::new(0),
            wanted: AtomicBool::new(true),
            size: AtomicU64::new(LEASE),
            starved: AtomicBool::new(false),
            signal,
        }
    }

    /// The key's public id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Asks the lease task for a lease (once until it is taken).
    pub fn ask(&self) {
        if !self.wanted.swap(true, Ordering::AcqRel) {
            self.signal.wake();
        }
    }

    /// Spends `cost` credits: `Ok` with what is left (here and in the store, as last seen), or
    /// why not. Lock-free.
    ///
    /// # Errors
    /// [`Dry`]: too few credits held.
    pub fn take(&self, cost: u64) -> Result<u64, Dry> {
        self.largest_cost.fetch_max(cost, Ordering::Relaxed);
        let mut held = self.held.load(Ordering::Acquire);
        loop {
            if held < cost {
                let store = self.store_left.load(Ordering::Acquire);
                if store == UNKNOWN || held.saturating_add(store) >= cost {
                    if store != UNKNOWN {
                        self.starved.store(true, Ordering::Relaxed);
                    }
                    self.ask();
                    return Err(Dry::Fetching);
                }
                return Err(Dry::Exhausted {
                    refill_due: self.refill_due(),
                });
            }
            match self.held.compare_exchange_weak(
                held,
                held - cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(seen) => held = seen,
            }
        }
        let left = held - cost;
        let store = self.store_left.load(Ordering::Acquire);
        if left < self.low_water.load(Ordering::Relaxed) && store != 0 {
            self.ask();
        }
        Ok(left.saturating_add(if store == UNKNOWN { 0 } else { store }))
    }

    /// What is left, here and in the store as last seen (`None` before the first lease).
    #[must_use]
    pub fn left(&self) -> Option<u64> {
        let store = self.store_left.load(Ordering::Acquire);
        (store != UNKNOWN).then(|| self.held().saturating_add(store))
    }

    /// The key's stored credits changed (by another process or host, or an operator): what
    /// the store holds is not known any more, so the wallet asks for a lease.
    pub fn store_changed(&self) {
        self.store_left.store(UNKNOWN, Ordering::Release);
        self.ask();
    }

    /// Whether the key's refill is due at `now` (refill clock): another host may have applied it.
    #[must_use]
    pub fn refill_due_at(&self, now: i64) -> bool {
        self.refill_due().is_some_and(|due| due <= now)
    }

    /// Credits held here, unspent.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// When the credits refill next (refill clock), if they do.
    #[must_use]
    pub fn refill_due(&self) -> Option<i64> {
        match self.refill_due.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Whether the lease task should take a lease for it now (asked for, or never leased).
    /// Clears the request: one asked for while the lease is taken asks again.
    pub fn take_request(&self) -> bool {
        self.wanted.swap(false, Ordering::AcqRel)
    }

    /// How many credits the next lease asks for: twice the last when the wallet ran dry
    /// meanwhile (up to [`LEASE_MAX`]), and at least twice the largest cost seen.
    pub fn lease_size(&self) -> u64 {
        let mut size = self.size.load(Ordering::Relaxed);
        if self.starved.swap(false, Ordering::Relaxed) {
            size = size.saturating_mul(2).min(LEASE_MAX);
            self.size.store(size, Ordering::Relaxed);
        }
        size.max(self.largest_cost.load(Ordering::Relaxed).saturating_mul(2))
    }

    /// Adds a lease taken from the store.
    pub fn add_lease(&self, lease: &Lease) {
        self.refill_due
            .store(lease.refill_due.unwrap_or(0), Ordering::Relaxed);
        self.store_left.store(lease.left, Ordering::Release);
        let low = (lease.granted / 2).max(self.largest_cost.load(Ordering::Relaxed));
        self.low_water.store(low, Ordering::Relaxed);
        self.held.fetch_add(lease.granted, Ordering::AcqRel);
    }

    /// Drops what is held (a refill or `--set` made it void); returns how much.
    pub fn forfeit(&self) -> u64 {
        self.held.swap(0, Ordering::AcqRel)
    }

    /// Takes what is held, to give back to the store (clean shutdown).
    pub fn empty(&self) -> u64 {
        self.store_left.store(0, Ordering::Release);
        self.held.swap(0, Ordering::AcqRel)
    }
}

/// Every wallet of this host, by key id: the loader puts a key's wallet in each entry built
/// for it (so a replaced entry keeps its credits), the lease task walks them.
#[derive(Debug, Default)]
pub struct CreditBook {
    wallets: Mutex<HashMap<Box<str>, Arc<Wallet>>>,
    signal: Arc<LeaseSignal>,
}

impl CreditBook {
    /// The wallet of key `id`, made (empty, asking for a lease) on first use.
    pub fn wallet(&self, id: &str) -> Arc<Wallet> {
        let mut g = self.wallets.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            g.entry(id.into())
                .or_insert_with(|| Arc::new(Wallet::new(id, Arc::clone(&self.signal)))),
        )
    }

    /// The wallet of key `id`, if it has one.
    pub fn get(&self, id: &str) -> Option<Arc<Wallet>> {
        let g = self.wallets.lock().unwrap_or_else(PoisonError::into_inner);
        g.get(id).cloned()
    }

    /// Every wallet.
    pub fn all(&self) -> Vec<Arc<Wallet>> {
        let g = self.wallets.lock().unwrap_or_else(PoisonError::into_inner);
        g.values().cloned().collect()
    }

    /// What wakes the lease task.
    #[must_use]
    pub fn signal(&self) -> &Arc<LeaseSignal> {
        &self.signal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(granted: u64, left: u64) -> Lease {
        Lease {
            granted,
            left,
            refill_due: None,
        }
    }

    #[test]
    fn a_wallet_is_fetching_until_its_first_lease() {
        let w = Wallet::new("key_a", Arc::default());
        assert_eq!(w.take(1), Err(Dry::Fetching));
        assert_eq!(w.left(), None);
        assert!(w.take_request());
    }

    #[test]
    fn credits_count_down_to_exactly_zero() {
        let w = Wallet::new("key_a", Arc::default());
        w.add_lease(&lease(10, 0));
        for left in (0..10).rev() {
            assert_eq!(w.take(1), Ok(left));
        }
        assert_eq!(w.take(1), Err(Dry::Exhausted { refill_due: None }));
        assert_eq!(w.left(), Some(0));
    }

    #[test]
    fn low_water_asks_for_more_once() {
        let w = Wallet::new("key_a", Arc::default());
        w.add_lease(&lease(10, 90));
        assert!(w.take_request(), "a new wallet asks");
        for _ in 0..5 {
            w.take(1).unwrap();
        }
        assert!(!w.take_request(), "5 held of 10: not yet below half");
        assert_eq!(w.take(1), Ok(4 + 90));
        assert!(w.take_request(), "below half: asks");
        assert!(!w.take_request(), "asked once");
        // Dry with the store still holding credits: fetching, not exhausted.
        for _ in 0..4 {
            w.take(1).unwrap();
        }
        assert_eq!(w.take(1), Err(Dry::Fetching));
        w.add_lease(&lease(10, 80));
        assert_eq!(w.held(), 10);
        assert_eq!(w.left(), Some(90));
    }

    #[test]
    fn a_cost_larger_than_what_is_left_is_refused_and_leases_grow_with_it() {
        let w = Wallet::new("key_a", Arc::default());
        w.add_lease(&lease(7, 0));
        assert_eq!(w.take(5), Ok(2));
        assert_eq!(
            w.take(5),
            Err(Dry::Exhausted { refill_due: None }),
            "2 left cannot pay 5"
        );
        assert_eq!(w.held(), 2, "a refused request spends nothing");
        assert_eq!(w.take(300), Err(Dry::Exhausted { refill_due: None }));
        assert_eq!(w.lease_size(), 600);
    }

    #[test]
    fn a_wallet_that_ran_dry_asks_for_twice_as_much_up_to_the_cap() {
        let w = Wallet::new("key_a", Arc::default());
        assert_eq!(w.take(1), Err(Dry::Fetching));
        assert_eq!(w.lease_size(), LEASE, "dry before any lease: not starved");
        w.add_lease(&lease(1, 500));
        w.take(1).unwrap();
        assert_eq!(w.take(1), Err(Dry::Fetching));
        assert_eq!(w.lease_size(), 2 * LEASE);
        assert_eq!(w.lease_size(), 2 * LEASE, "once per dry spell");
        for _ in 0..10 {
            assert_eq!(w.take(1), Err(Dry::Fetching));
            w.lease_size();
        }
        assert_eq!(w.lease_size(), LEASE_MAX);
    }

    #[test]
    fn forfeit_and_empty_leave_nothing_held() {
        let w = Wallet::new("key_a", Arc::default());
        w.add_lease(&lease(10, 5));
        w.take(3).unwrap();
        assert_eq!(w.forfeit(), 7);
        assert_eq!(w.take(1), Err(Dry::Fetching), "the store still has 5");
        w.add_lease(&lease(5, 0));
        assert_eq!(w.empty(), 5);
        assert_eq!(w.take(1), Err(Dry::Exhausted { refill_due: None }));
    }

    #[test]
    fn concurrent_spenders_never_overspend() {
        let w = Arc::new(Wallet::new("key_a", Arc::default()));
        w.add_lease(&lease(1000, 0));
        let spent: u64 = (0..8)
            .map(|_| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    let mut n = 0;
                    while w.take(1).is_ok() {
                        n += 1;
                    }
                    n
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(spent, 1000);
    }

    #[test]
    fn a_store_change_makes_a_spent_wallet_ask_again() {
        let w = Wallet::new("key_a", Arc::default());
        w.add_lease(&lease(1, 0));
        assert!(w.take_request());
        w.take(1).unwrap();
        assert_eq!(w.take(1), Err(Dry::Exhausted { refill_due: None }));
        assert!(!w.take_request(), "spent: nothing to ask for");
        w.store_changed();
        assert!(w.take_request());
        assert_eq!(w.take(1), Err(Dry::Fetching));
    }

    #[test]
    fn the_book_hands_out_one_wallet_per_key() {
        let book = CreditBook::default();
        let a = book.wallet("key_a");
        assert!(Arc::ptr_eq(&a, &book.wallet("key_a")));
        assert!(book.get("key_b").is_none());
        assert_eq!(book.all().len(), 1);
    }
}
