//! Reading the per-CPU (action, reason) counters, summed over CPUs.

use filter_common::xdp::{Action, COUNTER_SLOTS, CounterValue, Reason, counter_index};

use super::{XdpError, XdpMaps};

/// A snapshot of every counter, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    slots: [CounterValue; COUNTER_SLOTS as usize],
}

impl XdpCounters {
    /// The counter of one (action, reason) pair.
    #[must_use]
    pub fn get(&self, action: Action, reason: Reason) -> CounterValue {
        self.slots[counter_index(action, reason) as usize]
    }

    /// Packets of one (action, reason) pair.
    #[must_use]
    pub fn packets(&self, action: Action, reason: Reason) -> u64 {
        self.get(action, reason).packets
    }

    /// Every (action, reason, value), including zeros, in a stable order (for `/metrics`).
    pub fn iter(&self) -> impl Iterator<Item = (Action, Reason, CounterValue)> + '_ {
        Action::ALL
            .into_iter()
            .flat_map(move |a| Reason::ALL.into_iter().map(move |r| (a, r, self.get(a, r))))
    }

    /// Packets summed over every action with this reason.
    #[must_use]
    pub fn total_for(&self, reason: Reason) -> u64 {
        Action::ALL.iter().map(|&a| self.packets(a, reason)).sum()
    }
}

impl XdpMaps {
    /// Reads every counter, summed over CPUs.
    ///
    /// # Errors
    /// The map read fails.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let mut out = XdpCounters::default();
        for (i, slot) in out.slots.iter_mut().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            let per_cpu = self
                .counters
                .get(&idx, 0)
                .map_err(|e| XdpError::map("reading the counters", e))?;
            for v in per_cpu.iter() {
                slot.packets += v.packets;
                slot.bytes += v.bytes;
            }
        }
        Ok(out)
    }
}
