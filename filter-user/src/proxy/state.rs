//! A shard's own state, shared by its connection tasks on its one thread: the settings, its
//! gate, request-id maker, upstream pool (for the route table in force: a reload that brings
//! another one closes the idle connections), metrics, recent denials and auto-block failure
//! counter, and the drain flag. `RefCell`/`Cell` only — nothing here crosses threads, and
//! nothing is borrowed across an `.await`.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::admit::Admission;
use super::io::BufferPool;
use super::reqid::IdGen;
use super::route::RouteTable;
use super::settings::{Published, Settings};
use super::upstream::{Pool, UpKey, UpStream};
use crate::autoblock::ShardFailures;
use crate::gate::{Denial, Gate};
use crate::obs::access_log::ShardLog;
use crate::obs::metrics::ShardMetrics;
use crate::obs::recent::ShardDenials;

/// A shard's own state, shared by its tasks on its one thread.
pub(crate) struct ShardState {
    /// The settings in force for every shard (a reload replaces them).
    published: Arc<Published>,
    /// This shard's copy of them, and the generation it was taken at.
    settings: RefCell<(Rc<Settings>, u64)>,
    pub gate: RefCell<Box<dyn Gate>>,
    pub ids: RefCell<IdGen>,
    /// Idle upstream connections, filed by upstream index of the route table they are for
    /// (the one in force here; see [`ShardState::pooled`]).
    pool: RefCell<(Arc<RouteTable>, Pool)>,
    /// Spare client buffers, for connections waking from idle.
    pub buffers: RefCell<BufferPool>,
    /// Set once draining starts.
    pub stopping: Cell<bool>,
    /// Woken when draining starts (idle connections and accept loops leave).
    pub notify: Notify,
    /// While draining for a hand-over: until when an idle connection may wait for one last
    /// request (`None`: idle connections close at once).
    pub idle_until: Cell<Option<Instant>>,
    /// Open client connections.
    pub active: Cell<usize>,
    /// Of those, the ones idle between requests (waiting for a request's first byte).
    pub idle: Cell<usize>,
    /// The connection counts every shard shares.
    pub admission: Arc<Admission>,
    /// This shard's request metrics (it is their only writer).
    pub metrics: Arc<ShardMetrics>,
    /// This shard's side of the access log, when it is on.
    pub log: Option<RefCell<ShardLog>>,
    /// The shard's number.
    pub n: usize,
    /// This shard's recent denials (it is their only writer).
    pub denials: Arc<ShardDenials>,
    /// This shard's auto-block failure counter (and its check of the bans at accept).
    pub failures: ShardFailures,
}

impl ShardState {
    /// Shard `n`'s state around its `gate`, with an empty pool and a fresh id maker.
    pub fn new(n: usize, published: Arc<Published>, gate: Box<dyn Gate>) -> Self {
        let (settings, generation) = published.load();
        let settings = Rc::new((*settings).clone());
        let pool = (Arc::clone(&settings.routes), Pool::default());
        Self {
            metrics: settings.metrics.shard(n),
            log: settings
                .access_log
                .as_ref()
                .map(|l| RefCell::new(l.shard(n))),
            n,
            denials: settings.denials.shard(n),
            failures: settings.autoblock.shard(),
            admission: Arc::clone(&settings.admission),
            settings: RefCell::new((settings, generation)),
            published,
            gate: RefCell::new(gate),
            ids: RefCell::new(IdGen::new(n)),
            pool: RefCell::new(pool),
            buffers: RefCell::new(BufferPool::default()),
            stopping: Cell::new(false),
            notify: Notify::new(),
            idle_until: Cell::new(None),
            active: Cell::new(0),
            idle: Cell::new(0),
        }
    }

    /// Until when a connection idle between requests may wait for its next one: `deadline`
    /// (its client timeout) while serving; while draining, `None` (close now) or the end of a
    /// hand-over's grace.
    #[must_use]
    pub fn idle_deadline(&self, deadline: Instant) -> Option<Instant> {
        if !self.stopping.get() {
            return Some(deadline);
        }
        self.idle_until.get().map(|until| until.min(deadline))
    }

    /// The settings in force: this shard's copy, taken again when a reload published new ones
    /// (one atomic load when nothing changed).
    #[inline]
    pub fn settings(&self) -> Rc<Settings> {
        let generation = self.published.generation();
        let mut mine = self.settings.borrow_mut();
        if mine.1 != generation {
            let (settings, generation) = self.published.load();
            let mut pool = self.pool.borrow_mut();
            if !Arc::ptr_eq(&pool.0, &settings.routes) {
                // Upstream indexes mean other upstreams now: the idle connections close.
                *pool = (Arc::clone(&settings.routes), Pool::default());
            }
            *mine = (Rc::new((*settings).clone()), generation);
        }
        Rc::clone(&mine.0)
    }

    /// An idle connection to upstream `up` of `routes` (the route table of the request asking);
    /// none when the shard serves another table now.
    #[inline]
    pub fn pooled(&self, routes: &Arc<RouteTable>, up: UpKey) -> Option<UpStream> {
        let mut pool = self.pool.borrow_mut();
        if !Arc::ptr_eq(&pool.0, routes) {
            return None;
        }
        pool.1.take(up)
    }

    /// Keeps `s`, a clean connection to upstream `up` of `routes`, for a later request; closes
    /// it when the shard serves another route table now (its index would name another
    /// upstream).
    #[inline]
    pub fn keep_pooled(&self, routes: &Arc<RouteTable>, up: UpKey, s: UpStream) {
        let mut pool = self.pool.borrow_mut();
        if Arc::ptr_eq(&pool.0, routes) {
            pool.1.put(up, s);
        }
    }

    /// Records a refusal answered to `source` in this shard's recent denials (`edgefilter
    /// stats`' top denied key ids and sources): its code and public key id, never the key.
    #[inline]
    pub fn record_denial(&self, denial: &Denial, source: IpAddr) {
        self.denials
            .record(denial.code, denial.key_id.as_deref(), source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::gate::AllowAll;

    fn config(upstreams: &[&str]) -> Config {
        let routes: String = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| format!("[[route]]\nprefix = \"/r{i}/\"\nupstream = \"http://{u}\"\n"))
            .collect();
        Config::parse(
            &format!("[xdp]\nenabled = false\n{routes}"),
            std::path::Path::new("/"),
        )
        .expect("config parses")
    }

    /// Upstream 0 of one route table is another upstream in the next: a connection pooled
    /// under the first is never handed to a request of the second, and one returned late by a
    /// request of the first is closed.
    #[tokio::test(flavor = "current_thread")]
    async fn the_pool_serves_one_route_table() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async || UpStream::Tcp(tokio::net::TcpStream::connect(addr).await.unwrap());
        let k = |slot| UpKey {
            slot,
            generation: 0,
        };
        let cfg = config(&["127.0.0.1:1", "127.0.0.1:2"]);
        let published = Arc::new(Published::new(Settings::new(
            &cfg,
            Arc::new(RouteTable::build(&cfg).unwrap()),
            crate::obs::Telemetry::for_config(&cfg),
            crate::autoblock::Autoblock::new(&cfg, 1),
            1000,
        )));
        let shard = ShardState::new(0, Arc::clone(&published), Box::new(AllowAll));
        let old = shard.settings();
        shard.keep_pooled(&old.routes, k(0), connect().await);
        let again = shard
            .pooled(&old.routes, k(0))
            .expect("pooled for its own table");
        shard.keep_pooled(&old.routes, k(0), again);

        published
            .reconfigure(&config(&["127.0.0.1:2", "127.0.0.1:1"]), None)
            .unwrap();
        let new = shard.settings();
        assert!(!Arc::ptr_eq(&old.routes, &new.routes));
        assert!(
            shard.pooled(&new.routes, k(0)).is_none(),
            "the old pool is gone"
        );
        assert!(shard.pooled(&old.routes, k(0)).is_none());
        // A request that began under the old table returns its connection: closed, not pooled.
        shard.keep_pooled(&old.routes, k(0), connect().await);
        assert!(shard.pooled(&new.routes, k(0)).is_none());
        shard.keep_pooled(&new.routes, k(1), connect().await);
        assert!(shard.pooled(&new.routes, k(1)).is_some());
    }

    /// A reload whose routes do not build publishes nothing.
    #[test]
    fn routes_that_do_not_build_change_nothing() {
        let cfg = config(&["127.0.0.1:1"]);
        let published = Published::new(Settings::new(
            &cfg,
            Arc::new(RouteTable::build(&cfg).unwrap()),
            crate::obs::Telemetry::for_config(&cfg),
            crate::autoblock::Autoblock::new(&cfg, 1),
            1000,
        ));
        let mut bad = config(&["127.0.0.1:1", "127.0.0.1:2"]);
        bad.routes[1].upstream =
            crate::config::upstream::Upstreams::One("ftp://127.0.0.1:2".into());
        assert!(published.reconfigure(&bad, None).is_err());
        assert_eq!(published.generation(), 0);
        assert_eq!(published.current().routes.routes.len(), 1);
    }
}
