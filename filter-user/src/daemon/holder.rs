//! Which process listens on a TCP address, read from `/proc` as `ss -ltnp` does: the listening
//! socket's inode in `/proc/net/tcp` (or `tcp6`), then the process with a descriptor on it.
//! Best effort (another user's descriptors are hidden without privileges); only used to name
//! the program in the way of a start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The `(pid, command name)` of a process listening on `addr` (or on the wildcard address of
/// its port and family), if `/proc` tells.
#[must_use]
pub fn listener_of(addr: SocketAddr) -> Option<(u32, String)> {
    let inodes = listening_inodes(addr);
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|inode| inodes.contains(&inode))
            })
        });
        if holds {
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, name.trim().to_owned()));
        }
    }
    None
}

/// The inodes of the sockets listening on `addr`'s port at `addr` or the wildcard address.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            let ip = parse_ip(ip)?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let at = port == addr.port()
                && (ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified());
            at.then(|| f[9].parse().ok()).flatten()
        })
        .collect()
}

/// An address as `/proc/net/tcp*` prints it: 32-bit words in hex, each in host byte order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (pid, _) = listener_of(l.local_addr().unwrap()).expect("found in /proc");
        assert_eq!(pid, std::process::id());
    }

    #[test]
    fn reads_proc_addresses_in_host_order() {
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            parse_ip(&format!("{lo:08X}")),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        assert_eq!(
            parse_ip(&format!("000000000000000000000000{one:08X}")),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }
}
