//! Bounded packet parsing: Ethernet, up to two VLAN tags, IPv4/IPv6 (extension headers walked up
//! to a constant bound), and the TCP/UDP destination port.
//!
//! Every read goes through [`ptr_at`], which checks the access against `data_end` first; no
//! slice is ever made of the packet. When the source address can be read but the L4 header
//! cannot (truncated packet, non-first fragment, too many extension headers) the packet is
//! [`L4::Unknown`] and the caller judges it by source alone, which never lets a packet around
//! the allowlist.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use filter_common::xdp::MAX_IPV6_EXT_HEADERS;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 header without options.
#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// IPv6 fixed header.
#[repr(C)]
struct Ipv6Hdr {
    vtc_flow: [u8; 4],
    payload_len: [u8; 2],
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// What the L4 header says about protection.
#[derive(Clone, Copy)]
pub enum L4 {
    /// TCP or UDP to this destination port; `syn`: a TCP SYN without ACK (a new connection).
    Port { port: u16, syn: bool },
    /// Another protocol (ICMP, ...): not port-protected.
    Other,
    /// Cannot tell (truncated, non-first fragment, too many extension headers): judge by source.
    Unknown,
}

/// A classified frame.
pub enum Packet {
    /// Not IPv4/IPv6, or an IP header too short to hold a source address.
    NotIp,
    /// IPv4 with its source address (network byte order).
    V4([u8; 4], L4),
    /// IPv6 with its source address (network byte order).
    V6([u8; 16], L4),
}

/// Pointer to a `T` at `offset` into the packet, or `None` if it would run past `data_end`.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: ptr_at checked that the two bytes lie inside the packet.
    let b = unsafe { *p };
    Some(u16::from_be_bytes(b))
}

/// Classifies the frame in `ctx`.
#[inline(always)]
pub fn classify(ctx: &XdpContext) -> Packet {
    let Some(mut proto) = be16_at(ctx, 12) else {
        return Packet::NotIp;
    };
    let mut l3 = ETH_HLEN;
    // One or two VLAN tags (802.1Q or 802.1ad outer).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let Some(inner) = be16_at(ctx, l3 + 2) else {
            return Packet::NotIp;
        };
        proto = inner;
        l3 += VLAN_HLEN;
    }
    match proto {
        ETH_P_IP => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        _ => Packet::NotIp,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Packet {
    let Some(h) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Packet::NotIp;
    };
    // SAFETY: ptr_at checked that the whole fixed header lies inside the packet.
    let (ver_ihl, frag_off, protocol, saddr) =
        unsafe { ((*h).ver_ihl, (*h).frag_off, (*h).protocol, (*h).saddr) };
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    let frag_offset = u16::from_be_bytes(frag_off) & 0x1fff;
    let l4 = if ver_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() || frag_offset != 0 {
        // Malformed, or a non-first fragment: no L4 header to look at.
        L4::Unknown
    } else {
        l4_port(ctx, protocol, l3 + ihl)
    };
    Packet::V4(saddr, l4)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Packet {
    let Some(h) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Packet::NotIp;
    };
    // SAFETY: ptr_at checked that the whole fixed header lies inside the packet.
    let (mut next, saddr) = unsafe { ((*h).nexthdr, (*h).saddr) };
    let mut off = l3 + size_of::<Ipv6Hdr>();
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(p) = ptr_at::<[u8; 2]>(ctx, off) else {
                    return Packet::V6(saddr, L4::Unknown);
                };
                // SAFETY: ptr_at checked both bytes.
                let [nh, len] = unsafe { *p };
                next = nh;
                off += (usize::from(len) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some(p) = ptr_at::<[u8; 4]>(ctx, off) else {
                    return Packet::V6(saddr, L4::Unknown);
                };
                // SAFETY: ptr_at checked all four bytes.
                let [nh, _reserved, o1, o2] = unsafe { *p };
                if u16::from_be_bytes([o1, o2]) >> 3 != 0 {
                    // Non-first fragment: no L4 header, judge by source.
                    return Packet::V6(saddr, L4::Unknown);
                }
                next = nh;
                off += 8;
            }
            _ => break,
        }
    }
    let l4 = match next {
        // Still inside the extension-header chain after the bound.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => L4::Unknown,
        _ => l4_port(ctx, next, off),
    };
    Packet::V6(saddr, l4)
}

/// TCP flags: SYN and ACK.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The destination port of a TCP/UDP header at `off`, and for TCP whether it opens a connection.
#[inline(always)]
fn l4_port(ctx: &XdpContext, protocol: u8, off: usize) -> L4 {
    match protocol {
        IPPROTO_TCP => {
            let Some(port) = be16_at(ctx, off + 2) else {
                return L4::Unknown;
            };
            // A header cut before its flags is no SYN the stack would take: judged as before.
            let syn = ptr_at::<u8>(ctx, off + 13)
                // SAFETY: ptr_at checked the byte lies inside the packet.
                .is_some_and(|f| unsafe { *f } & (TCP_SYN | TCP_ACK) == TCP_SYN);
            L4::Port { port, syn }
        }
        IPPROTO_UDP => match be16_at(ctx, off + 2) {
            Some(port) => L4::Port { port, syn: false },
            None => L4::Unknown,
        },
        _ => L4::Other,
    }
}
