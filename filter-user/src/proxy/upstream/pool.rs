//! A shard's idle upstream connections, one list per target slot of the route table in force.
//! Connections are filed under the table they were made for and the target's address
//! generation ([`UpKey`]): when a reload brings a new route table, the first use under it drops
//! the old table's connections, so a slot number never hands out a connection to another
//! target; when a target's name resolves to new addresses, its older connections are dropped
//! as they come up.

use super::stream::UpStream;

/// Idle connections kept per target per shard.
const MAX_IDLE: usize = 512;

/// Which target a connection goes to: its route table (its address, as an id) and its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpKey {
    /// The route table's identity (`Arc::as_ptr` as a number).
    pub table: usize,
    /// The target's slot in it.
    pub slot: usize,
    /// The target's address generation when the connection was made.
    pub generation: u64,
}

/// A shard's idle upstream connections.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    table: usize,
    idle: Vec<Vec<(u64, UpStream)>>,
}

impl Pool {
    /// Drops every connection when `table` is not the one the pool holds connections for.
    fn follow(&mut self, table: usize) {
        if self.table != table {
            self.idle.clear();
            self.table = table;
        }
    }

    /// An idle connection to `key`'s target that the other side has not closed.
    pub fn take(&mut self, key: UpKey) -> Option<UpStream> {
        self.follow(key.table);
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
        self.follow(key.table);
        if self.idle.len() <= key.slot {
            self.idle.resize_with(key.slot + 1, Vec::new);
        }
        let list = &mut self.idle[key.slot];
        if list.len() < MAX_IDLE {
            list.push((key.generation, s));
        }
    }
}
