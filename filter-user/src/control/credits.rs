//! The credit lease task: keeps each usage-limited key's [`Wallet`] supplied from the store, off
//! the request path. A round (every [`ROUND`], or at once when a wallet runs low) applies the
//! refills that are due, then takes a lease for every wallet that asked; a clean shutdown gives
//! what is held back to the store.
//!
//! Durability: a lease is a durable decrement in the store before a request may spend it, so a
//! crash (`kill -9`) forfeits at most the unspent lease of each key ([`LEASE_MAX`] credits, or
//! twice the largest route cost), and never grants a credit twice.
//!
//! [`LEASE_MAX`]: crate::auth::credits::LEASE_MAX

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::credits::{CreditBook, Wallet};
use crate::store::credits::{credit_now, read_test_clock};
use crate::store::{KeyStore, StoreError};

/// The longest a wallet that asked waits for a round when nobody wakes the task.
pub const ROUND: Duration = Duration::from_millis(250);

/// How often the store is asked for refills that are due.
const REFILL_EVERY: Duration = Duration::from_secs(1);

/// Takes a lease for `w` and adds it.
///
/// # Errors
/// Store failures (the wallet asks again at the next round).
pub fn top_up(store: &mut dyn KeyStore, w: &Wallet) -> Result<(), StoreError> {
    if let Some(lease) = store.lease_credits(w.id(), w.lease_size())? {
        w.add_lease(&lease);
    }
    Ok(())
}

/// Applies the refills due now (a refilled key's held credits belonged to the period that
/// ended: they are forfeited, and a fresh lease taken).
///
/// # Errors
/// Store failures.
pub fn refill(store: &mut dyn KeyStore, book: &CreditBook) -> Result<(), StoreError> {
    for id in store.refill_credits(credit_now())? {
        if let Some(w) = book.get(&id) {
            w.forfeit();
            top_up(store, &w)?;
        }
        tracing::info!(key_id = %id, "credits refilled");
    }
    Ok(())
}

/// Takes a lease for every wallet that asked for one, and for every wallet whose refill is due
/// (another host may have applied it: the lease reads what is there and the next due time).
pub fn lease_wanted(store: &mut dyn KeyStore, book: &CreditBook) {
    let now = credit_now();
    for w in book.all() {
        if (w.take_request() || w.refill_due_at(now))
            && let Err(e) = top_up(store, &w)
        {
            w.ask();
            tracing::warn!(key_id = %w.id(), error = %e, "could not lease credits; retrying");
        }
    }
}

/// Gives every wallet's unspent credits back to the store (clean shutdown).
pub fn give_back(store: &mut dyn KeyStore, book: &CreditBook) {
    for w in book.all() {
        let due = w.refill_due();
        let n = w.empty();
        if n == 0 {
            continue;
        }
        if let Err(e) = store.return_credits(w.id(), n, due) {
            tracing::warn!(key_id = %w.id(), credits = n, error = %e, "could not give unspent credits back; they are forfeited");
        }
    }
}

/// Runs `f` with the store (under the control plane's writer lock).
pub type WithStore = Arc<dyn Fn(&mut dyn FnMut(&mut dyn KeyStore)) + Send + Sync>;

/// The running lease task; [`CreditLeases::finish`] (or drop) stops it and gives back what is
/// held.
pub struct CreditLeases {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    book: Arc<CreditBook>,
    with_store: WithStore,
}

impl std::fmt::Debug for CreditLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreditLeases").finish_non_exhaustive()
    }
}

impl CreditLeases {
    /// Runs one round now (so keys loaded at start have credits before the first request),
    /// then the task on a thread of its own.
    #[must_use]
    pub fn spawn(book: Arc<CreditBook>, with_store: WithStore) -> Self {
        let mut last_refill = Instant::now();
        let round = {
            let book = Arc::clone(&book);
            let with_store = Arc::clone(&with_store);
            move |refill_too: bool| {
                with_store(&mut |store| {
                    if refill_too && let Err(e) = refill(store, &book) {
                        tracing::warn!(error = %e, "could not apply the credit refills; retrying");
                    }
                    lease_wanted(store, &book);
                });
            }
        };
        read_test_clock();
        round(true);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let signal = Arc::clone(book.signal());
        let join = std::thread::Builder::new()
            .name("credit-lease".into())
            .spawn(move || {
                signal.bind(std::thread::current());
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(ROUND);
                    let refill_too = last_refill.elapsed() >= REFILL_EVERY;
                    if refill_too {
                        read_test_clock();
                        last_refill = Instant::now();
                    }
                    round(refill_too);
                }
            })
            .ok();
        Self {
            stop,
            join,
            book,
            with_store,
        }
    }

    /// Stops the task and gives back the unspent credits (call once nothing serves any more).
    pub fn finish(mut self) {
        self.stop_and_give_back();
    }

    fn stop_and_give_back(&mut self) {
        let Some(join) = self.join.take() else { return };
        self.stop.store(true, Ordering::Relaxed);
        join.thread().unpark();
        let _ = join.join();
        let book = &self.book;
        (self.with_store)(&mut |store| give_back(store, book));
    }
}

impl Drop for CreditLeases {
    fn drop(&mut self) {
        self.stop_and_give_back();
    }
}
