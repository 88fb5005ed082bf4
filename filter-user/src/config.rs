//! TOML config (SPEC §6) → typed [`Config`], with validation errors that name their line.
//!
//! Parsing is strict: an unknown key anywhere is an error, so a typo never silently falls back
//! to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub mod keys;
pub mod upstream;
mod validate;

/// The default config path, overridden by `--config` or `EDGEFILTER_CONFIG`.
pub const DEFAULT_PATH: &str = "/etc/edgefilter/edgefilter.toml";

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[listen]`: the proxy's listeners.
    pub listen: Listen,
    /// `[tls]`: certificate and key for `listen.https`.
    pub tls: Option<Tls>,
    /// `[runtime]`.
    pub runtime: Runtime,
    /// `[limits]`.
    pub limits: Limits,
    /// `[xdp]`: the kernel half.
    pub xdp: Xdp,
    /// `[store]`: where keys live.
    pub store: Store,
    /// `[admin]`: admin API and `/metrics`.
    pub admin: Admin,
    /// `[keys]`.
    pub keys: Keys,
    /// `[autoblock]`.
    pub autoblock: Autoblock,
    /// `[log]`.
    pub log: Log,
    /// `[[route]]`, longest prefix wins.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// Directory relative paths in the file are resolved against (the file's own directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Plain HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// TLS listeners (need `[tls]`).
    pub https: Vec<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            http: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            https: Vec::new(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Number of shards; 0 = one per core.
    pub shards: usize,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head accepted (431 above).
    pub max_header_bytes: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: u64,
    /// Idle / slow client timeout.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Upstream connect / response timeout.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Open client connections, all shards together; at the limit the proxy stops accepting
    /// (new connections wait in the kernel's queue). `None`: derived from `RLIMIT_NOFILE` by
    /// the proxy at start (see docs/proxy.md).
    pub max_connections: Option<usize>,
    /// Open client connections from one source (an IPv4 address, an IPv6 `/autoblock.ipv6_prefix`
    /// network); a new one over it is closed at once. `None`: a tenth of `max_connections`;
    /// `Some(0)`: no per-source limit.
    pub max_connections_per_source: Option<usize>,
    /// How long `SIGTERM` (or a hand-over) lets in-flight requests run before they are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16384,
            max_body_bytes: 10 * 1024 * 1024,
            client_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(30),
            max_connections: None,
            max_connections_per_source: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// `[xdp]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Xdp {
    /// Attach the XDP program at all.
    pub enabled: bool,
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// `enforce` or `monitor`.
    pub mode: XdpMode,
    /// `auto`, `driver` or `skb`.
    pub attach: XdpAttach,
    /// Protected destination ports; empty = the listen ports.
    pub protected_ports: Vec<u16>,
    /// The edge allowlist (IPv4 and IPv6 CIDRs; a bare address means that one host).
    #[serde(deserialize_with = "cidr_list", serialize_with = "cidr_strings")]
    pub allow: Vec<IpNet>,
    /// Per-source limit of TCP SYNs to protected ports (`"200/s"`, `"600/m"`); none when unset.
    #[serde(default, with = "syn_rate_serde")]
    pub syn_rate: Option<SynRate>,
    /// SYNs a source may send at once before `syn_rate` holds it (default: 2 × the rate's count).
    #[serde(default)]
    pub syn_burst: Option<u32>,
}

/// `xdp.syn_rate`: `count` SYNs per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynRate {
    /// SYNs allowed ...
    pub count: u32,
    /// ... per this many seconds (1 for `/s`, 60 for `/m`).
    pub per_secs: u32,
}

impl SynRate {
    /// Parses `N/s` or `N/m` (N from 1).
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a SYN rate: write N/s or N/m, e.g. \"200/s\"");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "`{s}`: a SYN rate of 0 would drop every new connection"
            ));
        }
        Ok(Self { count, per_secs })
    }
}

impl std::fmt::Display for SynRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.per_secs == 60 { "m" } else { "s" };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Xdp {
    /// The SYN limit as the program applies it: (nanoseconds per SYN, how far ahead a source's
    /// allowance may run = burst × that); `None` without `syn_rate`.
    #[must_use]
    pub fn syn_limit(&self) -> Option<(u64, u64)> {
        let rate = self.syn_rate?;
        let interval = (u64::from(rate.per_secs) * 1_000_000_000 / u64::from(rate.count)).max(1);
        let burst = self
            .syn_burst
            .unwrap_or_else(|| rate.count.saturating_mul(2))
            .max(1);
        Some((interval, interval.saturating_mul(u64::from(burst))))
    }
}

/// `xdp.syn_rate` as written (`"200/s"`).
mod syn_rate_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SynRate;

    pub fn serialize<S: Serializer>(v: &Option<SynRate>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(r) => s.serialize_some(&r.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SynRate>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| SynRate::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Default for Xdp {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: vec!["eth0".into()],
            mode: XdpMode::Enforce,
            attach: XdpAttach::Auto,
            protected_ports: Vec::new(),
            allow: Vec::new(),
            syn_rate: None,
            syn_burst: None,
        }
    }
}

/// XDP enforcement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Drop what fails the checks.
    Enforce,
    /// Count what would be dropped, never drop.
    Monitor,
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    /// Native if the driver supports it, else generic.
    Auto,
    /// Native (driver) mode only.
    Driver,
    /// Generic (skb) mode.
    Skb,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// `sqlite` or `postgres`.
    pub kind: StoreKind,
    /// SQLite database path.
    pub path: PathBuf,
    /// PostgreSQL URL.
    pub url: Option<String>,
    /// SQLite: disk space held in `<path>.reserve` for revocations, suspensions and bans to
    /// commit on a full disk (0: none).
    pub reserve_bytes: u64,
    /// SQLite: how often the daemon checks the file with `PRAGMA quick_check`.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            path: PathBuf::from("var/keys.db"),
            url: None,
            reserve_bytes: 8 * 1024 * 1024,
            check_interval: Duration::from_secs(600),
        }
    }
}

/// Store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded SQLite.
    Sqlite,
    /// Shared PostgreSQL (fleet mode).
    Postgres,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Admin API and `/metrics` listener.
    pub listen: SocketAddr,
    /// Bearer token file, created 0600 on first run.
    pub token_file: PathBuf,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token_file: PathBuf::from("var/admin.token"),
        }
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keys {
    /// The environment this edge serves (`live`, `test`, ...).
    pub environment: String,
    /// `detailed` or `opaque` 401 answers.
    pub errors: ErrorDetail,
    /// Addresses of trusted proxies whose `X-Forwarded-For` is believed.
    #[serde(deserialize_with = "cidr_list", serialize_with = "cidr_strings")]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            environment: "live".into(),
            errors: ErrorDetail::Detailed,
            trusted_proxies: Vec::new(),
        }
    }
}

/// How much a 401 says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorDetail {
    /// The precise code and hint.
    Detailed,
    /// `INVALID_CREDENTIALS`, no hint.
    Opaque,
}

/// `[autoblock]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Autoblock {
    /// Fill the XDP denylist from repeated key denials.
    pub enabled: bool,
    /// Key denials (the 401 codes and `MALFORMED_KEY`) from one source ...
    pub failures: u32,
    /// ... within this window ...
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// ... ban it for this long (also the default of `deny add`).
    #[serde(with = "humantime_serde")]
    pub ban: Duration,
    /// IPv6 sources are counted and banned by this prefix (1..=128).
    pub ipv6_prefix: u8,
    /// Sources never counted nor banned (CIDRs or addresses, masked to their network).
    #[serde(deserialize_with = "cidr_list", serialize_with = "cidr_strings")]
    pub exempt: Vec<IpNet>,
}

impl Default for Autoblock {
    fn default() -> Self {
        Self {
            enabled: true,
            failures: 50,
            window: Duration::from_secs(10),
            ban: Duration::from_secs(600),
            ipv6_prefix: 64,
            exempt: Vec::new(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `json` or `text`.
    pub format: LogFormat,
    /// `stdout`, `off`, or a file path.
    pub access_log: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            access_log: "stdout".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// `[[route]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix; longest match wins.
    pub prefix: String,
    /// The upstream target, or a list of them (`http://`, `https://`, `unix:`).
    pub upstream: upstream::Upstreams,
    /// `https` targets: verify against this PEM CA file instead of the system roots.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// `https` targets: the name to send (SNI) and verify, instead of each target's host.
    #[serde(default)]
    pub upstream_sni: Option<String>,
    /// `https` targets: a client certificate chain (PEM) for mTLS, with `upstream_client_key`.
    #[serde(default)]
    pub upstream_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub upstream_client_key: Option<PathBuf>,
    /// Host names of the targets are re-resolved this often (and after a connect failure).
    #[serde(with = "humantime_serde", default = "default_resolve_interval")]
    pub resolve_interval: Duration,
    /// Scopes a key needs for this route.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Accept `?api_key=` on this route.
    #[serde(default)]
    pub key_in_query: bool,
    /// Where the key may be, in order (default: `authorization`, `x-api-key`).
    #[serde(default)]
    pub key_in: Option<Vec<String>>,
    /// Remove the key header before forwarding (default true).
    #[serde(default = "default_true")]
    pub strip_key: bool,
    /// `Upgrade: websocket` is allowed here (after the key check); elsewhere it is refused.
    #[serde(default)]
    pub websocket: bool,
    /// Credits one request here costs a usage-limited key (default 1; 0: free).
    #[serde(default = "default_cost")]
    pub cost: u64,
    /// Credential injected towards the upstream (`${ENV}` expanded, `@/path` read from a file).
    #[serde(default)]
    pub inject_header: Option<InjectHeader>,
    /// A pool of provider credentials for one header, instead of `inject_header`.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// The LLM provider whose token usage the responses report (counted, logged).
    #[serde(default)]
    pub ai: Option<AiProvider>,
}

/// `ai = "openai"` or `"anthropic"`: whose usage report a route's responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AiProvider {
    /// `usage.prompt_tokens`, `usage.completion_tokens` (chat completions, JSON or SSE).
    Openai,
    /// `usage.input_tokens`, `usage.output_tokens` (messages, JSON or SSE).
    Anthropic,
}

/// `[route.credentials]`: several values for one header; a value the provider refuses rests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Header name, e.g. `Authorization`.
    pub name: String,
    /// Each value a template as `inject_header`'s: `${ENV}` expanded, or `@/path` read.
    pub values: Vec<String>,
    /// How long a value rests after a 429 that carries no `Retry-After`.
    #[serde(with = "humantime_serde", default = "default_credential_cooldown")]
    pub cooldown: Duration,
}

fn default_cost() -> u64 {
    1
}

fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_credential_cooldown() -> Duration {
    Duration::from_secs(60)
}

/// `inject_header = { name = ..., value = ... }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InjectHeader {
    /// Header name.
    pub name: String,
    /// Header value template.
    pub value: String,
}

fn default_true() -> bool {
    true
}

/// Parses `a.b.c.d/n`, `x::/n`, or a bare address as its host prefix (`/32`, `/128`), around
/// any whitespace. Host bits are kept as written (`10.1.2.3/8` stays so): a caller that wants
/// the network masks it with [`IpNet::trunc`].
///
/// # Errors
/// A message quoting the bad text and showing the expected shape.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("`{s}` is not a CIDR (e.g. 203.0.113.0/24, 2001:db8::/32, or one address)")
        })
}

/// A list of CIDRs, each masked to its network (`10.1.2.3/8` is `10.0.0.0/8`).
fn cidr_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    items
        .iter()
        .map(|s| {
            parse_cidr(s)
                .map(|n| n.trunc())
                .map_err(serde::de::Error::custom)
        })
        .collect()
}

/// Writes a CIDR list as the config holds it (`10.0.0.0/8`, ...).
fn cidr_strings<S: serde::Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

/// Durations such as `30s`, `10m`, `24h`, `90d`, `500ms`.
pub mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Writes a duration as this module reads it back (`500ms`, `30s`, `10m`, ...).
    ///
    /// # Errors
    /// Whatever the serializer returns.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Deserializes a duration string.
    ///
    /// # Errors
    /// When the string is not `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Writes `d` in the largest unit that holds it exactly (`500ms`, `30s`, `10m`, `24h`, `90d`),
/// so [`parse_duration`] reads back the same duration.
#[must_use]
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    match s {
        _ if s != 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s != 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s != 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Parses `500ms`, `30s`, `10m`, `24h`, `90d`.
///
/// # Errors
/// A message naming what is wrong with the string.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 10m, 24h, 90d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "`{s}` has unknown unit `{unit}` (use ms, s, m, h, d)"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// A check of the parsed config that a layer above `config` adds for what only it understands
/// (the store checks `store.url`). `config` imports nothing from those layers: they hand their
/// checks to [`Config::load_with`] / [`Config::parse_with`], and each problem is reported among
/// the others, on the line of the value it names.
pub type LayerCheck = fn(&Config) -> Vec<ValueProblem>;

/// A problem with one config value, named by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueProblem {
    /// Where the value is, e.g. `["store", "url"]` (its first part is the section); for a
    /// `[[route]]` field, `["route", "<field>"]` with [`Self::route`] saying which route.
    pub key: &'static [&'static str],
    /// The index of the `[[route]]` the value is in (`None` outside the routes).
    pub route: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ValueProblem {
    /// A problem with the value at `key`.
    #[must_use]
    pub fn at(key: &'static [&'static str], message: impl Into<String>) -> Self {
        Self {
            key,
            route: None,
            message: message.into(),
        }
    }

    /// A problem with field `key[1]` of the `index`-th `[[route]]` (`key` = `["route", field]`).
    #[must_use]
    pub fn in_route(
        index: usize,
        key: &'static [&'static str],
        message: impl Into<String>,
    ) -> Self {
        Self {
            key,
            route: Some(index),
            message: message.into(),
        }
    }
}

/// One config problem, with the 1-based line it was found on (0 when not tied to a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Loading failed: the file could not be read, or it has problems.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not valid.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The path.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if p.line > 0 {
            out.push_str(&format!("{}:{}: {}", path.display(), p.line, p.message));
        } else {
            out.push_str(&format!("{}: {}", path.display(), p.message));
        }
    }
    out
}

impl Config {
    /// Reads and validates the config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming every problem with its line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &[])
    }

    /// [`Self::load`], with the checks of the layers above (see [`LayerCheck`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming every problem with its line.
    pub fn load_with(path: &Path, checks: &[LayerCheck]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse_with(&text, &base, checks).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses and validates config text; relative paths resolve against `base_dir`.
    ///
    /// # Errors
    /// Every problem found, each with its line.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, Vec<ConfigProblem>> {
        Self::parse_with(text, base_dir, &[])
    }

    /// [`Self::parse`], with the checks of the layers above (see [`LayerCheck`]).
    ///
    /// # Errors
    /// Every problem found, each with its line.
    pub fn parse_with(
        text: &str,
        base_dir: &Path,
        checks: &[LayerCheck],
    ) -> Result<Self, Vec<ConfigProblem>> {
        validate::parse(text, base_dir, checks)
    }

    /// Resolves a path from the config against the config file's directory.
    #[must_use]
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The shard count to run: `runtime.shards`, or one per core when 0.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        if self.runtime.shards == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            self.runtime.shards
        }
    }

    /// Keys set in the file that nothing reads because of another key's value, each as a
    /// sentence naming both (`check-config` prints them, the daemon logs them at start).
    #[must_use]
    pub fn unused(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tls.is_some() && self.listen.https.is_empty() {
            out.push("[tls] is not used: listen.https is empty".to_owned());
        }
        if self.store.url.is_some() && self.store.kind == StoreKind::Sqlite {
            out.push("store.url is not used: store.kind = \"sqlite\"".to_owned());
        }
        out
    }

    /// Values that are valid but risky, each as a sentence saying why (`check-config` prints
    /// them, the daemon logs them at start): an `admin.listen` other than a loopback address
    /// puts the admin API and `/metrics` on the network.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let admin = self.admin.listen;
        if !admin.ip().to_canonical().is_loopback() {
            out.push(format!(
                "admin.listen = \"{admin}\" is not a loopback address: the admin API (guarded \
                 only by the token in admin.token_file) and /metrics (no token) are reachable \
                 from the network; prefer 127.0.0.1 or ::1, or firewall the port"
            ));
        }
        out
    }

    /// Destination ports XDP protects: `xdp.protected_ports`, or the listen ports when empty.
    #[must_use]
    pub fn protected_ports(&self) -> Vec<u16> {
        if self.xdp.protected_ports.is_empty() {
            let mut v: Vec<u16> = self
                .listen
                .http
                .iter()
                .chain(&self.listen.https)
                .map(SocketAddr::port)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        } else {
            self.xdp.protected_ports.clone()
        }
    }
}

/// 1-based line number of byte offset `at` in `text`.
#[must_use]
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
