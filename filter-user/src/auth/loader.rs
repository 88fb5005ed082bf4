//! Turns store records into shared cache entries: loads the whole store once (streaming, so
//! 1M keys never sit in memory twice), interns users and policies so keys share them, and
//! catches up on store changes "since revision R" for a running daemon.

use std::sync::Arc;

use ahash::RandomState;
use hashbrown::{HashMap, HashTable};

use super::cache::{CacheUpdate, KeyEntry, Owner};
use super::ratelimit::Limit;
use crate::store::{ChangeSubject, KeyRef, KeyStore, KeyView, StoreError, UserStatus};

/// The store's keys at one revision, ready to index.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    /// Every key.
    pub entries: Vec<Arc<KeyEntry>>,
    /// Users that are not active.
    pub inactive: Vec<(i64, UserStatus)>,
    /// The store revision this reflects.
    pub revision: u64,
}

/// Builds entries, sharing owners between keys; remembers the revision it has seen.
#[derive(Debug)]
pub struct KeyLoader {
    hasher: RandomState,
    owners: HashTable<(u64, Arc<Owner>)>,
    names: HashMap<i64, (Arc<str>, Arc<str>), RandomState>,
    tenants: HashMap<Box<str>, Arc<str>, RandomState>,
    revision: u64,
}

impl Default for KeyLoader {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            owners: HashTable::new(),
            names: HashMap::with_hasher(RandomState::new()),
            tenants: HashMap::with_hasher(RandomState::new()),
            revision: 0,
        }
    }
}

impl KeyLoader {
    /// Loads every key from `store`.
    ///
    /// # Errors
    /// Store failures.
    pub fn load(store: &dyn KeyStore) -> Result<(Self, KeySnapshot), StoreError> {
        let mut loader = Self::default();
        let mut snap = KeySnapshot::default();
        let mut seen_inactive = HashMap::with_hasher(RandomState::new());
        snap.revision = store.for_each_key(&mut |view| {
            if view.user.status != UserStatus::Active {
                seen_inactive.insert(view.user.id, view.user.status);
            }
            snap.entries.push(loader.entry_for(&view));
        })?;
        snap.entries.shrink_to_fit();
        snap.inactive = seen_inactive.into_iter().collect();
        loader.revision = snap.revision;
        Ok((loader, snap))
    }

    /// The store revision the loader has caught up to.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A shared entry for `view`.
    pub fn entry_for(&mut self, view: &KeyView) -> Arc<KeyEntry> {
        let rec = &view.key;
        let uid = view.user.id;
        let limit = rec.rate.map(|r| Limit::new(r.per_sec, r.burst));
        let h = self
            .hasher
            .hash_one((uid, &rec.scopes, &rec.allow_cidrs, limit));
        let owner = if let Some((_, o)) = self.owners.find(h, |(_, o)| o.matches(uid, rec)) {
            Arc::clone(o)
        } else {
            let (user, tenant) = self.names(view);
            let o = Arc::new(Owner {
                user_id: uid,
                user,
                tenant,
                scopes: rec.scopes.iter().map(|s| s.as_str().into()).collect(),
                cidrs: rec.allow_cidrs.clone().into_boxed_slice(),
                limit,
            });
            self.owners
                .insert_unique(h, (h, Arc::clone(&o)), |(h, _)| *h);
            o
        };
        Arc::new(KeyEntry::new(rec, owner))
    }

    fn names(&mut self, view: &KeyView) -> (Arc<str>, Arc<str>) {
        if let Some((u, t)) = self.names.get(&view.user.id) {
            return (Arc::clone(u), Arc::clone(t));
        }
        let tenant = Arc::clone(
            self.tenants
                .entry(view.user.tenant.as_str().into())
                .or_insert_with(|| view.user.tenant.as_str().into()),
        );
        let user: Arc<str> = view.user.name.as_str().into();
        self.names
            .insert(view.user.id, (Arc::clone(&user), Arc::clone(&tenant)));
        (user, tenant)
    }

    /// When the store's revision moved past ours, the cache updates that bring a shard up to
    /// it (empty when nothing changed).
    ///
    /// # Errors
    /// Store failures; the loader's revision then stays where it was.
    pub fn reload_if_revision_changed(
        &mut self,
        store: &dyn KeyStore,
    ) -> Result<Vec<CacheUpdate>, StoreError> {
        if store.revision()? == self.revision {
            return Ok(Vec::new());
        }
        let changes = store.changes_since(self.revision)?;
        let mut out = Vec::with_capacity(changes.len());
        let mut last = self.revision;
        for c in changes {
            match &c.subject {
                ChangeSubject::Key(id) => {
                    if let Some(view) = store.find_key(KeyRef::Id(id))? {
                        out.push(CacheUpdate::User {
                            user_id: view.user.id,
                            status: view.user.status,
                        });
                        out.push(CacheUpdate::Upsert(self.entry_for(&view)));
                    }
                }
                ChangeSubject::User(name) => {
                    if let Some(u) = store.find_user(name)? {
                        out.push(CacheUpdate::User {
                            user_id: u.id,
                            status: u.status,
                        });
                    }
                }
            }
            last = c.revision;
        }
        self.revision = last;
        Ok(out)
    }
}
