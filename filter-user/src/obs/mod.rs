//! Observability: the logging subscriber, the per-shard request metrics and their Prometheus
//! exposition.

pub mod access_log;
pub mod logging;
pub mod metrics;

pub use logging::init_logging;
