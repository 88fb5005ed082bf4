//! Userspace half of XDP: load, attach, pin, adopt, allowlist diff, counters.

use crate::config::Config;

/// The attached XDP program and its maps; filtering stays in place after drop (pinned).
#[derive(Debug)]
pub struct XdpRuntime;

/// XDP failures.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Not built yet.
    #[error("XDP support is not built yet")]
    NotBuilt,
}

/// Loads (or adopts the pinned) program, attaches it per `[xdp]`, applies the allowlist.
///
/// # Errors
/// [`XdpError`] when the program cannot be loaded or attached.
pub fn start(_cfg: &Config) -> Result<XdpRuntime, XdpError> {
    Err(XdpError::NotBuilt)
}
