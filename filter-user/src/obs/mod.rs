//! Observability: the logging subscriber, the per-shard request metrics and their Prometheus
//! exposition, and the per-shard rings of recent denials behind `edgefilter stats`.

pub mod logging;
pub mod metrics;
pub mod recent;

pub use logging::init_logging;
