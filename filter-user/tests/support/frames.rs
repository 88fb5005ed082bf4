//! Crafted Ethernet frames for the XDP tests: VLAN tags, IPv4 (fragments), IPv6 (extension
//! headers), TCP/UDP/ICMP. Checksums are left zero: the program never looks at them.

use std::net::IpAddr;

/// 802.1Q tag protocol id.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer) tag protocol id.
pub const TPID_8021AD: u16 = 0x88A8;

/// The L4 part.
#[derive(Debug, Clone)]
pub enum L4 {
    /// TCP SYN to this destination port.
    Tcp(u16),
    /// TCP ACK (a segment of an open connection) to this destination port.
    TcpAck(u16),
    /// UDP to this destination port.
    Udp(u16),
    /// ICMP / ICMPv6 echo request.
    Icmp,
}

/// An IPv6 extension header.
#[derive(Debug, Clone, Copy)]
pub enum Ext {
    /// Hop-by-hop options (8 bytes).
    HopByHop,
    /// Routing header (24 bytes).
    Routing,
    /// Destination options (16 bytes).
    DestOpts,
    /// Fragment header with this offset (in 8-byte units) and more-fragments flag.
    Fragment { offset: u16, more: bool },
}

/// A frame to build.
#[derive(Debug, Clone)]
pub struct Frame {
    /// VLAN tags, outermost first (TPIDs).
    pub vlans: Vec<u16>,
    /// Source address (the family decides IPv4 or IPv6).
    pub src: IpAddr,
    /// Destination address (same family as `src`).
    pub dst: IpAddr,
    /// L4 header.
    pub l4: L4,
    /// IPv4 fragment offset in 8-byte units (0 = first or unfragmented).
    pub v4_frag_offset: u16,
    /// IPv4 more-fragments flag.
    pub v4_more_fragments: bool,
    /// IPv6 extension headers, in order.
    pub v6_ext: Vec<Ext>,
}

impl Frame {
    /// A TCP SYN from `src` to `dst:port`.
    pub fn tcp(src: &str, dst: &str, port: u16) -> Self {
        Self::new(src, dst, L4::Tcp(port))
    }

    /// A TCP ACK (no SYN) from `src` to `dst:port`.
    pub fn tcp_ack(src: &str, dst: &str, port: u16) -> Self {
        Self::new(src, dst, L4::TcpAck(port))
    }

    /// A UDP datagram from `src` to `dst:port`.
    pub fn udp(src: &str, dst: &str, port: u16) -> Self {
        Self::new(src, dst, L4::Udp(port))
    }

    /// An echo request.
    pub fn icmp(src: &str, dst: &str) -> Self {
        Self::new(src, dst, L4::Icmp)
    }

    fn new(src: &str, dst: &str, l4: L4) -> Self {
        Self {
            vlans: Vec::new(),
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            l4,
            v4_frag_offset: 0,
            v4_more_fragments: false,
            v6_ext: Vec::new(),
        }
    }

    /// With VLAN tags (outermost first).
    pub fn vlans(mut self, tpids: &[u16]) -> Self {
        self.vlans = tpids.to_vec();
        self
    }

    /// As an IPv4 fragment.
    pub fn v4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.v4_frag_offset = offset;
        self.v4_more_fragments = more;
        self
    }

    /// With IPv6 extension headers.
    pub fn ext(mut self, ext: &[Ext]) -> Self {
        self.v6_ext = ext.to_vec();
        self
    }

    /// The bytes.
    pub fn build(&self) -> Vec<u8> {
        let (proto, l4) = match (&self.l4, self.src) {
            (L4::Tcp(p), _) => (6u8, tcp_header(*p, 0x02)),
            (L4::TcpAck(p), _) => (6u8, tcp_header(*p, 0x10)),
            (L4::Udp(p), _) => (17, udp_header(*p)),
            (L4::Icmp, IpAddr::V4(_)) => (1, vec![8, 0, 0, 0, 0, 1, 0, 1]),
            (L4::Icmp, IpAddr::V6(_)) => (58, vec![128, 0, 0, 0, 0, 1, 0, 1]),
        };
        let (ethertype, l3) = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = 20 + l4.len();
                let flags = (u16::from(self.v4_more_fragments) << 13) | self.v4_frag_offset;
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                h.extend_from_slice(&flags.to_be_bytes());
                h.extend_from_slice(&[64, proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&l4);
                (0x0800u16, h)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut exts = Vec::new();
                let mut first_next = proto;
                for (i, e) in self.v6_ext.iter().enumerate().rev() {
                    let next = if i + 1 == self.v6_ext.len() {
                        proto
                    } else {
                        ext_type(self.v6_ext[i + 1])
                    };
                    let mut h = ext_bytes(*e, next);
                    h.extend_from_slice(&exts);
                    exts = h;
                    first_next = ext_type(*e);
                }
                let payload = exts.len() + l4.len();
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&u16::try_from(payload).unwrap().to_be_bytes());
                h.extend_from_slice(&[first_next, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&exts);
                h.extend_from_slice(&l4);
                (0x86DD, h)
            }
            _ => panic!("src and dst must be the same family"),
        };
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]); // VLAN id 100
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&l3);
        f
    }
}

fn ext_type(e: Ext) -> u8 {
    match e {
        Ext::HopByHop => 0,
        Ext::Routing => 43,
        Ext::DestOpts => 60,
        Ext::Fragment { .. } => 44,
    }
}

fn ext_bytes(e: Ext, next: u8) -> Vec<u8> {
    match e {
        // PadN options fill the rest.
        Ext::HopByHop => vec![next, 0, 1, 4, 0, 0, 0, 0],
        Ext::DestOpts => vec![next, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Ext::Routing => {
            let mut h = vec![next, 2, 0, 0, 0, 0, 0, 0];
            h.extend_from_slice(&[0; 16]);
            h
        }
        Ext::Fragment { offset, more } => {
            let off = (offset << 3) | u16::from(more);
            let b = off.to_be_bytes();
            vec![next, 0, b[0], b[1], 0, 0, 0x42, 0x42]
        }
    }
}

fn tcp_header(dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0xC3, 0x50];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]);
    h
}

fn udp_header(dport: u16) -> Vec<u8> {
    let mut h = vec![0xC3, 0x50];
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    h
}

/// An ARP request (not IP).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 198, 18, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[198, 18, 0, 2]);
    f
}
