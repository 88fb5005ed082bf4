//! Free 127.0.0.1 ports for the daemons, servers and PostgreSQL the tests start. Taken below the
//! kernel's ephemeral range: a port picked by binding `:0` comes from that range, and between the
//! check and the child's own bind an outgoing connection of a test running in parallel could be
//! given it as its local port, failing the child with "Address already in use" (seen in CI).
//! Below the range no outgoing connection ever gets a port, and a per-process counter keeps
//! parallel tests apart.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out.
const FIRST: u32 = 10_000;

/// A port on 127.0.0.1 that nothing listens on and no outgoing connection can take.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Some(low) = ephemeral_low().filter(|&low| low > FIRST + 1_000) else {
        // An unusual range: fall back to the kernel's choice.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
    };
    let span = low - FIRST;
    // Test binaries run one after another; starting each at its own offset avoids reusing the
    // ports the previous one just closed.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (offset + n) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {low}");
}

/// [`free_port`] on 127.0.0.1, as an address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_low() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
