//! Userspace half of XDP: load, attach, pin, adopt, allowlist diff, counters.
