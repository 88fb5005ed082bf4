//! Typed handles on the program's maps, from a freshly loaded object or from the pins,
//! plus the small writers: mode, protected ports, denylist.

use std::net::IpAddr;
use std::time::Duration;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use filter_common::xdp::{
    CounterValue, DenyEntry, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_COUNTERS, MAP_DENY_V4,
    MAP_DENY_V6, MAP_PORTS, MODE_ENFORCE, MODE_MONITOR, PortBitmap, XdpConfig, effective_v6_prefix,
    mask_v6,
};

use super::{PinDir, XdpError};
use crate::config::XdpMode;

/// Every map of the filter program, typed.
pub struct XdpMaps {
    pub(super) config: Array<MapData, XdpConfig>,
    pub(super) ports: Array<MapData, PortBitmap>,
    pub(super) allow_v4: LpmTrie<MapData, [u8; 4], u32>,
    pub(super) allow_v6: LpmTrie<MapData, [u8; 16], u32>,
    pub(super) deny_v4: HashMap<MapData, [u8; 4], DenyEntry>,
    pub(super) deny_v6: HashMap<MapData, [u8; 16], DenyEntry>,
    pub(super) counters: PerCpuArray<MapData, CounterValue>,
}

impl std::fmt::Debug for XdpMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpMaps").finish_non_exhaustive()
    }
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    name: &str,
    map: Option<Map>,
) -> Result<T, XdpError> {
    let map = map.ok_or_else(|| XdpError::MissingMap(name.to_string()))?;
    T::try_from(map)
        .map_err(|source| XdpError::map(format!("map {name} has the wrong type"), source))
}

impl XdpMaps {
    /// Takes the maps out of a loaded object.
    ///
    /// # Errors
    /// A map is missing or has an unexpected type.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, XdpError> {
        Ok(Self {
            config: typed(MAP_CONFIG, ebpf.take_map(MAP_CONFIG))?,
            ports: typed(MAP_PORTS, ebpf.take_map(MAP_PORTS))?,
            allow_v4: typed(MAP_ALLOW_V4, ebpf.take_map(MAP_ALLOW_V4))?,
            allow_v6: typed(MAP_ALLOW_V6, ebpf.take_map(MAP_ALLOW_V6))?,
            deny_v4: typed(MAP_DENY_V4, ebpf.take_map(MAP_DENY_V4))?,
            deny_v6: typed(MAP_DENY_V6, ebpf.take_map(MAP_DENY_V6))?,
            counters: typed(MAP_COUNTERS, ebpf.take_map(MAP_COUNTERS))?,
        })
    }

    /// Opens the maps pinned in `pins` (e.g. from the CLI while a daemon runs).
    ///
    /// # Errors
    /// [`XdpError::NotPinned`] when nothing is pinned there; a map error otherwise.
    pub fn from_pins(pins: &PinDir) -> Result<Self, XdpError> {
        if !pins.has_maps() {
            return Err(XdpError::NotPinned(pins.root().to_path_buf()));
        }
        let open = |name: &str| -> Result<Option<Map>, XdpError> {
            let path = pins.map(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| XdpError::map(format!("opening {}", path.display()), e))?;
            Map::from_map_data(data)
                .map(Some)
                .map_err(|e| XdpError::map(format!("opening {}", path.display()), e))
        };
        Ok(Self {
            config: typed(MAP_CONFIG, open(MAP_CONFIG)?)?,
            ports: typed(MAP_PORTS, open(MAP_PORTS)?)?,
            allow_v4: typed(MAP_ALLOW_V4, open(MAP_ALLOW_V4)?)?,
            allow_v6: typed(MAP_ALLOW_V6, open(MAP_ALLOW_V6)?)?,
            deny_v4: typed(MAP_DENY_V4, open(MAP_DENY_V4)?)?,
            deny_v6: typed(MAP_DENY_V6, open(MAP_DENY_V6)?)?,
            counters: typed(MAP_COUNTERS, open(MAP_COUNTERS)?)?,
        })
    }

    /// Sets enforce or monitor mode.
    ///
    /// # Errors
    /// The map update fails.
    pub fn set_mode(&mut self, mode: XdpMode) -> Result<(), XdpError> {
        let value = XdpConfig {
            mode: match mode {
                XdpMode::Enforce => MODE_ENFORCE,
                XdpMode::Monitor => MODE_MONITOR,
            },
            ..self.config()?
        };
        self.config
            .set(0, value, 0)
            .map_err(|e| XdpError::map("writing the mode", e))
    }

    fn config(&self) -> Result<XdpConfig, XdpError> {
        self.config
            .get(&0, 0)
            .map_err(|e| XdpError::map("reading the program's config", e))
    }

    /// Sets the per-source SYN limit (`xdp.syn_rate`/`syn_burst` as [`crate::config::Xdp::syn_limit`]
    /// gives it: nanoseconds per SYN and the window); `None` lifts it. Sources' allowances
    /// already counted stay and follow the new limit from their next SYN.
    ///
    /// # Errors
    /// The map write fails.
    pub fn set_syn_limit(&mut self, limit: Option<(u64, u64)>) -> Result<(), XdpError> {
        let (interval, window) = limit.unwrap_or((0, 0));
        let value = XdpConfig {
            syn_interval_ns: interval,
            syn_window_ns: window,
            ..self.config()?
        };
        self.config
            .set(0, value, 0)
            .map_err(|e| XdpError::map("writing the SYN limit", e))
    }

    /// The SYN limit the program applies now: (nanoseconds per SYN, window), `None` when off.
    ///
    /// # Errors
    /// The map read fails.
    pub fn syn_limit(&self) -> Result<Option<(u64, u64)>, XdpError> {
        let c = self.config()?;
        Ok((c.syn_interval_ns != 0).then_some((c.syn_interval_ns, c.syn_window_ns)))
    }

    /// Sets how many leading bits of an IPv6 source the denylist is keyed by
    /// (`autoblock.ipv6_prefix`). Entries already in the map keep the keys they were written
    /// with: the caller rewrites them (the control plane does, from the store, at start).
    ///
    /// # Errors
    /// The map update fails.
    pub fn set_ipv6_deny_prefix(&mut self, bits: u8) -> Result<(), XdpError> {
        let value = XdpConfig {
            ipv6_deny_prefix: u32::from(bits),
            ..self.config()?
        };
        self.config
            .set(0, value, 0)
            .map_err(|e| XdpError::map("writing the IPv6 denylist prefix", e))
    }

    /// The IPv6 prefix length the program keys the denylist by (128 when never set).
    ///
    /// # Errors
    /// The map read fails.
    pub fn ipv6_deny_prefix(&self) -> Result<u8, XdpError> {
        let bits = effective_v6_prefix(self.config()?.ipv6_deny_prefix);
        Ok(u8::try_from(bits).unwrap_or(128))
    }

    /// The mode the program currently applies.
    ///
    /// # Errors
    /// The map read fails.
    pub fn mode(&self) -> Result<XdpMode, XdpError> {
        let c = self
            .config
            .get(&0, 0)
            .map_err(|e| XdpError::map("reading the mode", e))?;
        Ok(if c.mode == MODE_MONITOR {
            XdpMode::Monitor
        } else {
            XdpMode::Enforce
        })
    }

    /// Replaces the protected destination ports.
    ///
    /// # Errors
    /// The map update fails.
    pub fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), XdpError> {
        let mut bitmap = PortBitmap::EMPTY;
        for &p in ports {
            bitmap.insert(p);
        }
        self.ports
            .set(0, bitmap, 0)
            .map_err(|e| XdpError::map("writing the protected ports", e))
    }

    /// The protected destination ports, ascending.
    ///
    /// # Errors
    /// The map read fails.
    pub fn protected_ports(&self) -> Result<Vec<u16>, XdpError> {
        let b = self
            .ports
            .get(&0, 0)
            .map_err(|e| XdpError::map("reading the protected ports", e))?;
        Ok((0..=u16::MAX).filter(|&p| b.contains(p)).collect())
    }

    /// Drops every packet from `ip` (to protected ports) for `ttl` (`None` = until removed).
    /// An IPv6 source bans its whole prefix (see [`Self::set_ipv6_deny_prefix`]).
    ///
    /// # Errors
    /// The map update fails.
    pub fn deny(&mut self, ip: IpAddr, ttl: Option<Duration>) -> Result<(), XdpError> {
        let expires_at_ns = ttl.map_or(u64::MAX, |t| {
            monotonic_ns().saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
        });
        self.deny_until(ip, expires_at_ns)
    }

    /// Drops every packet from `ip` (an IPv6 source: from its prefix) until `CLOCK_MONOTONIC`
    /// reads `expires_at_ns` ([`monotonic_ns`]; `u64::MAX` = until removed).
    ///
    /// # Errors
    /// The map update fails.
    pub fn deny_until(&mut self, ip: IpAddr, expires_at_ns: u64) -> Result<(), XdpError> {
        let entry = DenyEntry { expires_at_ns };
        let res = match ip {
            IpAddr::V4(a) => self.deny_v4.insert(a.octets(), entry, 0),
            IpAddr::V6(a) => {
                let key = self.v6_key(a.octets())?;
                self.deny_v6.insert(key, entry, 0)
            }
        };
        res.map_err(|e| XdpError::map(format!("denylisting {ip}"), e))
    }

    /// The denylist key of an IPv6 source: masked as the program masks it.
    fn v6_key(&self, addr: [u8; 16]) -> Result<[u8; 16], XdpError> {
        Ok(mask_v6(addr, self.config()?.ipv6_deny_prefix))
    }

    /// Removes `ip` (an IPv6 source: its prefix) from the denylist; `false` when it was not there.
    ///
    /// # Errors
    /// The map update fails for another reason than a missing key.
    pub fn undeny(&mut self, ip: IpAddr) -> Result<bool, XdpError> {
        let res = match ip {
            IpAddr::V4(a) => self.deny_v4.remove(&a.octets()),
            IpAddr::V6(a) => {
                let key = self.v6_key(a.octets())?;
                self.deny_v6.remove(&key)
            }
        };
        match res {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(XdpError::map(format!("removing {ip} from the denylist"), e)),
        }
    }

    /// Every denylist entry with its remaining time (`None` = no expiry); expired ones included
    /// with `Some(ZERO)`. An IPv6 entry is the network address of the banned prefix.
    ///
    /// # Errors
    /// A map read fails.
    pub fn denied(&self) -> Result<Vec<(IpAddr, Option<Duration>)>, XdpError> {
        let now = monotonic_ns();
        let left = |e: DenyEntry| {
            (e.expires_at_ns != u64::MAX)
                .then(|| Duration::from_nanos(e.expires_at_ns.saturating_sub(now)))
        };
        let mut out = Vec::new();
        for item in self.deny_v4.iter() {
            let (k, v) = item.map_err(|e| XdpError::map("reading the denylist", e))?;
            out.push((IpAddr::from(k), left(v)));
        }
        for item in self.deny_v6.iter() {
            let (k, v) = item.map_err(|e| XdpError::map("reading the denylist", e))?;
            out.push((IpAddr::from(k), left(v)));
        }
        Ok(out)
    }

    /// Makes the denylist hold exactly `wanted` (each source with its expiry in
    /// [`monotonic_ns`] time; IPv6 sources masked to the configured prefix): entries not wanted
    /// are deleted, wanted ones written. Returns how many entries were deleted.
    ///
    /// # Errors
    /// A map read, update or delete fails.
    pub fn sync_denylist(&mut self, wanted: &[(IpAddr, u64)]) -> Result<usize, XdpError> {
        let prefix = self.config()?.ipv6_deny_prefix;
        let mut v4 = std::collections::HashSet::new();
        let mut v6 = std::collections::HashSet::new();
        for (ip, _) in wanted {
            match ip {
                IpAddr::V4(a) => v4.insert(a.octets()),
                IpAddr::V6(a) => v6.insert(mask_v6(a.octets(), prefix)),
            };
        }
        let stale_v4: Vec<[u8; 4]> = self
            .deny_v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !v4.contains(k))
            .collect();
        let stale_v6: Vec<[u8; 16]> = self
            .deny_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !v6.contains(k))
            .collect();
        let gone = |e| match e {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(XdpError::map("removing a stale denylist entry", e)),
        };
        for k in &stale_v4 {
            gone(self.deny_v4.remove(k))?;
        }
        for k in &stale_v6 {
            gone(self.deny_v6.remove(k))?;
        }
        for &(ip, expires_at_ns) in wanted {
            self.deny_until(ip, expires_at_ns)?;
        }
        Ok(stale_v4.len() + stale_v6.len())
    }

    /// Keys the IPv6 denylist by `bits` from now on (`autoblock.ipv6_prefix` changed by a
    /// reload) without a moment where a ban is not enforced: `wanted` (as for
    /// [`Self::sync_denylist`]) is written under the new keys first, then the program told the
    /// new prefix, then the entries under the old keys removed.
    ///
    /// # Errors
    /// A map read, update or delete fails.
    pub fn rekey_ipv6_denylist(
        &mut self,
        bits: u8,
        wanted: &[(IpAddr, u64)],
    ) -> Result<usize, XdpError> {
        for &(ip, expires_at_ns) in wanted {
            if let IpAddr::V6(a) = ip {
                let key = mask_v6(a.octets(), u32::from(bits));
                self.deny_v6
                    .insert(key, DenyEntry { expires_at_ns }, 0)
                    .map_err(|e| XdpError::map(format!("denylisting {ip}"), e))?;
            }
        }
        self.set_ipv6_deny_prefix(bits)?;
        self.sync_denylist(wanted)
    }

    /// Deletes expired denylist entries; returns how many went.
    ///
    /// # Errors
    /// A map read or delete fails.
    pub fn purge_expired(&mut self) -> Result<usize, XdpError> {
        let expired: Vec<IpAddr> = self
            .denied()?
            .into_iter()
            .filter(|(_, left)| *left == Some(Duration::ZERO))
            .map(|(ip, _)| ip)
            .collect();
        for ip in &expired {
            self.undeny(*ip)?;
        }
        Ok(expired.len())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}
