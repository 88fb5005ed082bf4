//! Safe wrapper for glibc's `malloc_trim(0)`.
//!
//! glibc keeps the memory a program freed in its arenas: only a free stretch at the very top
//! of an arena goes back to the kernel by itself, so after many connections closed, one
//! allocation still in use above them keeps all of their pages resident. `malloc_trim(0)`
//! walks every arena and returns the pages of every free chunk (`MADV_DONTNEED`), wherever it
//! lies. The `edgefilter` crate forbids `unsafe`, so the one call lives here.

/// Returns the free pages of every malloc arena to the kernel; `true` when some were released.
/// Costs a walk over every arena's free chunks (milliseconds for hundreds of megabytes), during
/// which the arenas are locked: call it off any latency-sensitive path, and rarely. Does
/// nothing (and returns `false`) where the C library is not glibc.
#[must_use]
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes a byte count and touches only the allocator's own state,
        // under the allocator's locks; any value is valid (0: keep no padding at the top).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_released() {
        // Many blocks freed below one still held: the top cannot shrink, only a trim helps.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 16 * 1024]).collect();
        let keep = vec![2u8; 16 * 1024];
        drop(blocks);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(super::release_free_memory());
        assert_eq!(keep[0], 2);
    }
}
