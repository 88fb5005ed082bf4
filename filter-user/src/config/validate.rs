//! Turns config text into a [`Config`], collecting every problem with its line: TOML syntax,
//! unknown keys and bad values per section (and per `[[route]]`), then cross-field checks.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, ConfigProblem, LayerCheck, StoreKind, line_of};
use crate::names::{self, NameKind};

/// Parses `text` section by section so one bad section does not hide the others; then runs the
/// cross-field checks and the `layers`' checks (with relative paths resolving against
/// `base_dir`).
pub(super) fn parse(
    text: &str,
    base_dir: &Path,
    layers: &[LayerCheck],
) -> Result<Config, Vec<ConfigProblem>> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    let at = |span: Option<Range<usize>>| span.map_or(0, |s| line_of(text, s.start));
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| ConfigProblem {
                line: at(e.span()),
                message: e.message().trim().to_string(),
            })
            .collect());
    }
    let root_span = root.span();
    let root = root.into_inner();
    let mut problems = Vec::new();
    let mut good = DeTable::default();
    let mut failed = Vec::new();
    for (key, value) in root.iter() {
        let name = key.get_ref().ref_str();
        let parts: Vec<Spanned<DeValue<'_>>> = match (name, value.get_ref()) {
            ("route", DeValue::Array(items)) => items
                .iter()
                .map(|i| array_of(i.clone(), value.span()))
                .collect(),
            _ => vec![value.clone()],
        };
        let before = problems.len();
        for mut part in parts {
            refuse_not_yet(name, &mut part, text, &mut problems);
            // serde stops at a section's first bad value: the value it names is taken out and
            // the rest read again, so every bad value of the section is reported.
            let mut seen: Vec<String> = Vec::new();
            loop {
                let mut one = DeTable::default();
                one.insert(key.clone(), part.clone());
                let Err(e) = from_table(one, root_span.clone()) else {
                    break;
                };
                let message = clean(e.message());
                if seen.contains(&message) {
                    break;
                }
                seen.push(message.clone());
                problems.push(ConfigProblem {
                    line: at(e.span().or_else(|| Some(key.span()))),
                    message,
                });
                if !e.span().is_some_and(|at| take_out_value_at(&mut part, &at)) {
                    break;
                }
            }
        }
        if problems.len() == before {
            good.insert(key.clone(), value.clone());
        } else {
            failed.push(name.to_string());
        }
    }
    // Cross-field checks run on the sections that parsed, so one bad section hides nothing else;
    // a check about a section that failed to parse would only repeat its error, so it is skipped.
    let mut cfg = from_table(good, root_span).map_err(|e| {
        vec![ConfigProblem {
            line: at(e.span()),
            message: clean(e.message()),
        }]
    })?;
    cfg.base_dir = base_dir.to_path_buf();
    let own = check(&cfg, &root, text);
    // A layer's check of a route this module already found at fault would mostly repeat it
    // (an upstream it cannot use, a header value it cannot send): that route's are left out.
    let routes_at_fault: Vec<usize> = own.iter().filter_map(|(at, _)| at.route).collect();
    let layer_problems = layers
        .iter()
        .flat_map(|c| c(&cfg))
        .filter(|p| p.route.is_none_or(|i| !routes_at_fault.contains(&i)))
        .map(|p| {
            let section = p.key.first().copied().unwrap_or_default();
            let span = match (p.route, p.key) {
                (Some(i), [_, field, ..]) => route_span(&root, i, field),
                _ => span_at(&root, p.key),
            };
            (
                Where {
                    section,
                    route: p.route,
                },
                ConfigProblem {
                    line: span.map_or(0, |s| line_of(text, s.start)),
                    message: p.message,
                },
            )
        });
    problems.extend(
        own.into_iter()
            .chain(layer_problems)
            .filter(|(at, _)| !failed.iter().any(|f| f == at.section))
            .map(|(_, p)| p),
    );
    problems.sort_by_key(|p| p.line);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

/// Keys SPEC §6 names that this version does not implement yet, by section, with what they are
/// for. Each is refused with a message that says so, never silently ignored.
pub(super) const NOT_YET: &[(&str, &str, &str)] = &[];

/// Takes the [`NOT_YET`] keys out of one section (or one `[[route]]`), each reported on its
/// line as not implemented, so the rest of the section is still checked. A list of upstreams
/// is reported the same way and its first target checked in its place.
fn refuse_not_yet(
    section: &str,
    part: &mut Spanned<DeValue<'_>>,
    text: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    let tables: Vec<&mut DeTable<'_>> = match part.get_mut() {
        DeValue::Table(t) => vec![t],
        DeValue::Array(items) => items
            .iter_mut()
            .filter_map(|i| match i.get_mut() {
                DeValue::Table(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let not_yet = |line: usize, key: &str, what: &str| ConfigProblem {
        line,
        message: format!(
            "{section}.{key} ({what}) is in SPEC §6 but not implemented in this version of \
             edgefilter: remove it"
        ),
    };
    for table in tables {
        for &(_, key, what) in NOT_YET.iter().filter(|(s, _, _)| *s == section) {
            if let Some((k, _)) = table.remove_entry(key) {
                problems.push(not_yet(line_of(text, k.span().start), key, what));
            }
        }
    }
}

/// Removes from a section (or the one `[[route]]` of `part`) the key whose name or value holds
/// `at`; whether there was one.
fn take_out_value_at(part: &mut Spanned<DeValue<'_>>, at: &Range<usize>) -> bool {
    let table = match part.get_mut() {
        DeValue::Table(t) => t,
        DeValue::Array(items) => match items.first_mut().map(Spanned::get_mut) {
            Some(DeValue::Table(t)) => t,
            _ => return false,
        },
        _ => return false,
    };
    let holds = |s: Range<usize>| s.start <= at.start && at.start < s.end.max(s.start + 1);
    let found = table
        .iter()
        .find(|(k, v)| holds(k.span()) || holds(v.span()))
        .map(|(k, _)| k.clone());
    found.is_some_and(|k| table.remove(k.get_ref().ref_str()).is_some())
}

trait RefStr {
    fn ref_str(&self) -> &str;
}
impl RefStr for Cow<'_, str> {
    fn ref_str(&self) -> &str {
        self
    }
}

fn array_of<'i>(item: Spanned<DeValue<'i>>, span: Range<usize>) -> Spanned<DeValue<'i>> {
    let mut arr = toml::de::DeArray::new();
    arr.push(item);
    Spanned::new(span, DeValue::Array(arr))
}

fn from_table(table: DeTable<'_>, span: Range<usize>) -> Result<Config, toml::de::Error> {
    serde::Deserialize::deserialize(toml::Deserializer::from(Spanned::new(span, table)))
}

fn clean(message: &str) -> String {
    message.trim().replace('\n', " ")
}

/// Span of the value at `path` (e.g. `["listen", "https"]`), or of the nearest parent found.
fn span_at(root: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let mut table = root;
    let mut found = None;
    for (i, part) in path.iter().enumerate() {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().ref_str() == *part) else {
            break;
        };
        found = Some(if i + 1 == path.len() {
            v.span()
        } else {
            k.span()
        });
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found
}

/// Span of field `field` of the `index`-th `[[route]]`.
fn route_span(root: &DeTable<'_>, index: usize, field: &str) -> Option<Range<usize>> {
    let (_, routes) = root
        .iter()
        .find(|(k, _)| k.get_ref().ref_str() == "route")?;
    let DeValue::Array(items) = routes.get_ref() else {
        return Some(routes.span());
    };
    let item = items.get(index)?;
    match item.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .find(|(k, _)| k.get_ref().ref_str() == field)
            .map_or(Some(item.span()), |(_, v)| Some(v.span())),
        _ => Some(item.span()),
    }
}

/// What a problem is about: its top-level section, and for a `[[route]]` which one.
struct Where {
    section: &'static str,
    route: Option<usize>,
}

/// Cross-field checks that serde cannot express.
/// Each problem is tagged with the top-level section (and route) it is about.
fn check(cfg: &Config, root: &DeTable<'_>, text: &str) -> Vec<(Where, ConfigProblem)> {
    let mut out = Vec::new();
    let mut bad = |section: &'static str, span: Option<Range<usize>>, message: String| {
        out.push((
            Where {
                section,
                route: None,
            },
            ConfigProblem {
                line: span.map_or(0, |s| line_of(text, s.start)),
                message,
            },
        ));
    };
    let listen = &cfg.listen;
    if listen.http.is_empty() && listen.https.is_empty() {
        bad(
            "listen",
            span_at(root, &["listen"]),
            "listen: no `http` or `https` address: the proxy would not listen anywhere".into(),
        );
    }
    if !listen.https.is_empty() && cfg.tls.is_none() {
        bad(
            "listen",
            span_at(root, &["listen", "https"]),
            "listen.https needs a [tls] section with `cert` and `key`".into(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for a in listen.http.iter().chain(&listen.https) {
        // Port 0 asks the kernel for a free port each time, so it never collides.
        if a.port() != 0 && !seen.insert(*a) {
            bad(
                "listen",
                span_at(root, &["listen"]),
                format!("listen: address {a} appears twice"),
            );
        }
    }
    if cfg.runtime.shards > 1024 {
        bad(
            "runtime",
            span_at(root, &["runtime", "shards"]),
            format!("runtime.shards = {} is more than 1024", cfg.runtime.shards),
        );
    }
    let l = &cfg.limits;
    if !(1024..=1024 * 1024).contains(&l.max_header_bytes) {
        bad(
            "limits",
            span_at(root, &["limits", "max_header_bytes"]),
            "limits.max_header_bytes must be between 1024 and 1048576".into(),
        );
    }
    if l.max_connections == Some(0) {
        bad(
            "limits",
            span_at(root, &["limits", "max_connections"]),
            "limits.max_connections must be more than 0 (leave it out to derive it from the open-file limit)".into(),
        );
    }
    for (name, d) in [
        ("client_timeout", l.client_timeout),
        ("upstream_timeout", l.upstream_timeout),
    ] {
        if d.is_zero() {
            bad(
                "limits",
                span_at(root, &["limits", name]),
                format!("limits.{name} must be more than 0"),
            );
        }
    }
    let x = &cfg.xdp;
    if x.enabled {
        if x.interfaces.is_empty() {
            bad(
                "xdp",
                span_at(root, &["xdp", "interfaces"]),
                "xdp.interfaces is empty: name at least one interface, or set xdp.enabled = false"
                    .into(),
            );
        }
        for i in &x.interfaces {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
                bad(
                    "xdp",
                    span_at(root, &["xdp", "interfaces"]),
                    format!("xdp.interfaces: `{i}` is not a valid interface name"),
                );
            }
        }
        // An empty allowlist in enforce mode is refused when XDP starts, not here: the
        // effective allowlist also holds `edgefilter allow add` entries (allowlist.json).
    }
    if x.protected_ports.contains(&0) {
        bad(
            "xdp",
            span_at(root, &["xdp", "protected_ports"]),
            "xdp.protected_ports: port 0 is not a port".into(),
        );
    }
    if x.syn_burst.is_some() && x.syn_rate.is_none() {
        bad(
            "xdp",
            span_at(root, &["xdp", "syn_burst"]),
            "xdp.syn_burst needs xdp.syn_rate (the rate the burst is of)".into(),
        );
    }
    if x.syn_burst == Some(0) {
        bad(
            "xdp",
            span_at(root, &["xdp", "syn_burst"]),
            "xdp.syn_burst = 0 would drop every new connection".into(),
        );
    }
    // What a `store.url` may hold is the store's to say: it adds that check (see `LayerCheck`).
    if cfg.store.kind == StoreKind::Postgres && cfg.store.url.is_none() {
        bad(
            "store",
            span_at(root, &["store", "kind"]),
            "store.kind = \"postgres\" needs store.url".into(),
        );
    }
    if cfg.store.check_interval < std::time::Duration::from_secs(1) {
        bad(
            "store",
            span_at(root, &["store", "check_interval"]),
            "store.check_interval must be at least 1s (e.g. \"10m\")".into(),
        );
    }
    let env = &cfg.keys.environment;
    if env.is_empty() || env.len() > 8 || !env.bytes().all(|b| b.is_ascii_lowercase()) {
        bad(
            "keys",
            span_at(root, &["keys", "environment"]),
            format!("keys.environment `{env}` must be 1 to 8 letters a-z (e.g. live, test)"),
        );
    }
    let a = &cfg.autoblock;
    if a.failures == 0 || a.window.is_zero() || a.ban.is_zero() {
        bad(
            "autoblock",
            span_at(root, &["autoblock"]),
            "autoblock: failures, window and ban must all be more than 0".into(),
        );
    }
    if !(1..=128).contains(&a.ipv6_prefix) {
        bad(
            "autoblock",
            span_at(root, &["autoblock", "ipv6_prefix"]),
            format!(
                "autoblock.ipv6_prefix = {} must be 1 to 128 (64 bans a source's /64)",
                a.ipv6_prefix
            ),
        );
    }
    if cfg.log.access_log.is_empty() {
        bad(
            "log",
            span_at(root, &["log", "access_log"]),
            "log.access_log must be \"stdout\", \"off\" or a file path".into(),
        );
    }
    out.extend(check_routes(cfg, root, text));
    out
}

/// The `[[route]]` checks; each problem tagged with its route.
fn check_routes(cfg: &Config, root: &DeTable<'_>, text: &str) -> Vec<(Where, ConfigProblem)> {
    let mut out = Vec::new();
    let mut bad = |i: usize, span: Option<Range<usize>>, message: String| {
        out.push((
            Where {
                section: "route",
                route: Some(i),
            },
            ConfigProblem {
                line: span.map_or(0, |s| line_of(text, s.start)),
                message,
            },
        ));
    };
    let mut prefixes = std::collections::HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        if !r.prefix.starts_with('/') {
            bad(
                i,
                route_span(root, i, "prefix"),
                format!("route prefix `{}` must start with /", r.prefix),
            );
        }
        if !prefixes.insert(r.prefix.as_str()) {
            bad(
                i,
                route_span(root, i, "prefix"),
                format!("route prefix `{}` appears twice", r.prefix),
            );
        }
        for why in check_upstreams(r) {
            bad(
                i,
                route_span(root, i, why.0),
                format!("route `{}`: {}", r.prefix, why.1),
            );
        }
        for (n, e) in r
            .scopes
            .iter()
            .enumerate()
            .filter_map(|(n, s)| names::check(NameKind::Scope, s).err().map(|e| (n, e)))
        {
            bad(
                i,
                route_span(root, i, "scopes"),
                format!("route `{}`: scopes[{n}]: {e}", r.prefix),
            );
        }
        for place in r.key_in.iter().flatten() {
            if !matches!(place.as_str(), "authorization" | "x-api-key" | "query") {
                bad(
                    i,
                    route_span(root, i, "key_in"),
                    format!(
                        "route `{}`: key_in `{place}` is not one of authorization, x-api-key, query",
                        r.prefix
                    ),
                );
            }
        }
        if let Some(h) = &r.inject_header {
            if h.name.is_empty()
                || !h
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                bad(
                    i,
                    route_span(root, i, "inject_header"),
                    format!(
                        "route `{}`: inject_header name `{}` is not a header name",
                        r.prefix, h.name
                    ),
                );
            }
            if let Err(why) = check_template(&h.value) {
                bad(
                    i,
                    route_span(root, i, "inject_header"),
                    format!("route `{}`: inject_header value {why}", r.prefix),
                );
            }
        }
    }
    out
}

/// Each target parses (`http://`, `https://`, `unix:`), the list is not empty, the TLS keys
/// come with an `https` target (the client certificate with its key), `resolve_interval` is at
/// least a second, and a credential pool has a header name and values and no `inject_header`
/// beside it. Each problem: the field it is about and the message.
fn check_upstreams(r: &super::Route) -> Vec<(&'static str, String)> {
    use super::upstream::{Endpoint, Scheme};
    let mut out = Vec::new();
    let targets = r.upstream.targets();
    if targets.is_empty() {
        out.push((
            "upstream",
            "upstream is an empty list: give at least one target".into(),
        ));
    }
    let mut https = false;
    for t in targets {
        match Endpoint::parse(t) {
            Ok(e) => https |= e.scheme == Scheme::Https,
            Err(why) => out.push(("upstream", format!("upstream `{t}` {why}"))),
        }
    }
    let tls_keys = [
        ("upstream_ca", r.upstream_ca.is_some()),
        ("upstream_sni", r.upstream_sni.is_some()),
        ("upstream_client_cert", r.upstream_client_cert.is_some()),
        ("upstream_client_key", r.upstream_client_key.is_some()),
    ];
    for (key, set) in tls_keys {
        if set && !https {
            out.push((
                key,
                format!("{key} is set but no upstream target is https://"),
            ));
        }
    }
    if r.upstream_client_cert.is_some() != r.upstream_client_key.is_some() {
        out.push((
            "upstream_client_cert",
            "upstream_client_cert and upstream_client_key go together: set both or neither".into(),
        ));
    }
    if let Some(sni) = &r.upstream_sni
        && rustls_pki_types::ServerName::try_from(sni.as_str()).is_err()
    {
        out.push((
            "upstream_sni",
            format!("upstream_sni `{sni}` is not a DNS name or address"),
        ));
    }
    if r.resolve_interval < std::time::Duration::from_secs(1) {
        out.push((
            "resolve_interval",
            "resolve_interval must be at least 1s".into(),
        ));
    }
    if let Some(c) = &r.credentials {
        if r.inject_header.is_some() {
            out.push((
                "credentials",
                "has both inject_header and [route.credentials]: keep one (a pool of one value \
                 is an inject_header)"
                    .into(),
            ));
        }
        if c.name.is_empty()
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            out.push((
                "credentials",
                format!("credentials name `{}` is not a header name", c.name),
            ));
        }
        if c.values.is_empty() {
            out.push(("credentials", "credentials values is empty".into()));
        }
        for (n, v) in c.values.iter().enumerate() {
            if let Err(why) = check_template(v) {
                out.push(("credentials", format!("credentials values[{n}] {why}")));
            }
        }
    }
    out
}

/// `${NAME}` references must be closed and name an environment variable, and the text itself
/// must be sendable in a header: no CR, LF, NUL or other control byte but a tab (RFC 9110 §5.5).
/// (What `${NAME}` and `@/path` stand for is checked where it is read: `edgefilter run` and
/// `check-config`.)
fn check_template(v: &str) -> Result<(), String> {
    if let Some((at, b)) = v
        .bytes()
        .enumerate()
        .find(|&(_, b)| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        let name = match b {
            b'\r' => "a CR (\\r)".to_owned(),
            b'\n' => "an LF (\\n)".to_owned(),
            0 => "a NUL".to_owned(),
            _ => format!("the control byte 0x{b:02x}"),
        };
        return Err(format!(
            "holds {name} at byte {at}: a header value cannot hold one (it would split the \
             request sent upstream)"
        ));
    }
    let mut rest = v;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "has an unclosed `${`".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "names `${{{name}}}`, which is not an environment variable name"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}
