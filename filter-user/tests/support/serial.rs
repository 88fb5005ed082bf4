//! One lock for the tests of a binary that share kernel state (bpffs, XDP programs, network
//! namespaces): the test files of a binary run in parallel threads, so a lock of one file's own
//! would not keep them apart from another file's.

use std::sync::{Mutex, MutexGuard, PoisonError};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds every other caller in this test binary off until the guard is dropped; a test that
/// panicked while holding it does not block the rest.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}
