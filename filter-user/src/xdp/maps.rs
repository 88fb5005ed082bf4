//! Typed handles on the program's maps, from a freshly loaded object or from the pins,
//! plus the small writers: mode, protected ports, denylist.

use std::net::IpAddr;
use std::time::Duration;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use filter_common::xdp::{
    CounterValue, DenyEntry, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_COUNTERS, MAP_DENY_V4,
    MAP_DENY_V6, MAP_PORTS, MODE_ENFORCE, MODE_MONITOR, PortBitmap, XdpConfig,
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
            reserved: 0,
        };
        self.config
            .set(0, value, 0)
            .map_err(|e| XdpError::map("writing the mode", e))
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
    ///
    /// # Errors
    /// The map update fails.
    pub fn deny(&mut self, ip: IpAddr, ttl: Option<Duration>) -> Result<(), XdpError> {
        let expires_at_ns = ttl.map_or(u64::MAX, |t| {
            monotonic_ns().saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
        });
        let entry = DenyEntry { expires_at_ns };
        let res = match ip {
            IpAddr::V4(a) => self.deny_v4.insert(a.octets(), entry, 0),
            IpAddr::V6(a) => self.deny_v6.insert(a.octets(), entry, 0),
        };
        res.map_err(|e| XdpError::map(format!("denylisting {ip}"), e))
    }

    /// Removes `ip` from the denylist; `false` when it was not there.
    ///
    /// # Errors
    /// The map update fails for another reason than a missing key.
    pub fn undeny(&mut self, ip: IpAddr) -> Result<bool, XdpError> {
        let res = match ip {
            IpAddr::V4(a) => self.deny_v4.remove(&a.octets()),
            IpAddr::V6(a) => self.deny_v6.remove(&a.octets()),
        };
        match res {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(XdpError::map(format!("removing {ip} from the denylist"), e)),
        }
    }

    /// Every denylist entry with its remaining time (`None` = no expiry); expired ones included
    /// with `Some(ZERO)`.
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
