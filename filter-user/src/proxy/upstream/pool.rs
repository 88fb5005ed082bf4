//! A shard's idle upstream connections, one list per target slot of one route table (the shard
//! keeps a pool per table: a reload that brings another starts a new one), each filed with the
//! target's address generation ([`UpKey`]): when a target's name resolves to new addresses,
//! its older connections are dropped as they come up.

use super::stream::UpStream;

/// Idle connections kept per target per shard.
const MAX_IDLE: usize = 512;

/// Which target a connection goes to, in the route table it was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpKey {
    /// The target's slot in the table.
    pub slot: usize,
    /// The target's address generation when the connection was made.
    pub generation: u64,
}

/// A shard's idle upstream connections.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Vec<Vec<(u64, UpStream)>>,
}

impl Pool {
    /// An idle connection to `key`'s target that the other side has not closed.
    pub fn take(&mut self, key: UpKey) -> Option<UpStream> {
        let list = self.idle.get_mut(key.slot)?;
        while let Some((generation, mut s)) = list.pop() {
            if generation == key.generation && s.idle_and_open() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a clean connection to the pool.
    pub fn put(&mut self, key: UpKey, s: UpStream) {
        if self.idle.len() <= key.slot {
            self.idle.resize_with(key.slot + 1, Vec::new);
        }
        let list = &mut self.idle[key.slot];
        if list.len() < MAX_IDLE {
            list.push((key.generation, s));
        }
    }
}
