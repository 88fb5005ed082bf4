//! Every config key, and what a running daemon does when it changes: [`KEYS`] lists each key of
//! SPEC §6 that this version implements with how `SIGHUP` takes it ([`OnReload`]), and
//! [`changed`] names the keys whose value differs between two configs (the reload's diff).
//!
//! The diff is taken from the typed configs written out with serde, so a key added to
//! [`Config`] is in it without anyone remembering to add it here; a unit test fails when a key
//! of the typed config is missing from [`KEYS`].

use serde_json::Value;

use super::Config;

/// How a running daemon takes a changed key on `SIGHUP` (or `POST /v1/reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReload {
    /// Applied by the reload: new connections and requests (and the XDP maps) use it at once.
    Applied,
    /// Kept as it was until the daemon restarts; the reload logs the key as needing a restart.
    Restart,
}

/// One config key: its dotted path (`[[route]]` fields as `route.<field>`) and how a reload
/// takes a change of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// `section.field`.
    pub path: &'static str,
    /// What `SIGHUP` does with a change.
    pub on_reload: OnReload,
}

const fn applied(path: &'static str) -> Key {
    Key {
        path,
        on_reload: OnReload::Applied,
    }
}

const fn restart(path: &'static str) -> Key {
    Key {
        path,
        on_reload: OnReload::Restart,
    }
}

/// Every key this version reads, in SPEC §6 order.
pub const KEYS: &[Key] = &[
    restart("listen.http"),
    restart("listen.https"),
    applied("tls.cert"),
    applied("tls.key"),
    restart("runtime.shards"),
    applied("limits.max_header_bytes"),
    applied("limits.max_body_bytes"),
    applied("limits.client_timeout"),
    applied("limits.upstream_timeout"),
    applied("limits.max_connections"),
    applied("limits.max_connections_per_source"),
    applied("limits.drain_timeout"),
    restart("xdp.enabled"),
    restart("xdp.interfaces"),
    applied("xdp.mode"),
    restart("xdp.attach"),
    applied("xdp.protected_ports"),
    applied("xdp.allow"),
    applied("xdp.syn_rate"),
    applied("xdp.syn_burst"),
    restart("store.kind"),
    restart("store.path"),
    restart("store.url"),
    restart("store.reserve_bytes"),
    restart("store.check_interval"),
    restart("admin.listen"),
    restart("admin.token_file"),
    restart("keys.environment"),
    applied("keys.errors"),
    applied("keys.trusted_proxies"),
    applied("autoblock.enabled"),
    applied("autoblock.failures"),
    applied("autoblock.window"),
    applied("autoblock.ban"),
    applied("autoblock.ipv6_prefix"),
    applied("autoblock.exempt"),
    restart("log.format"),
    restart("log.access_log"),
    applied("route.prefix"),
    applied("route.upstream"),
    applied("route.scopes"),
    applied("route.key_in_query"),
    applied("route.key_in"),
    applied("route.strip_key"),
    applied("route.websocket"),
    applied("route.cost"),
    applied("route.inject_header"),
    applied("route.upstream_ca"),
    applied("route.upstream_sni"),
    applied("route.upstream_client_cert"),
    applied("route.upstream_client_key"),
    applied("route.resolve_interval"),
    applied("route.credentials"),
    applied("route.ai"),
];

/// The entry of [`KEYS`] for `path`.
#[must_use]
pub fn key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// The keys whose value differs between `old` and `new`, in [`KEYS`] order. A `[[route]]` field
/// counts as changed when it differs in any route (or a route came or went).
#[must_use]
pub fn changed(old: &Config, new: &Config) -> Vec<&'static Key> {
    let (a, b) = (leaves(old), leaves(new));
    KEYS.iter()
        .filter(|k| a.get(k.path) != b.get(k.path))
        .collect()
}

/// The config a reload runs with: `new`'s value of every [`OnReload::Applied`] key, `old`'s
/// (the running one) of every [`OnReload::Restart`] key. So the next reload's diff names the
/// keys still waiting for a restart again.
#[must_use]
pub fn running_with(old: &Config, new: &Config) -> Config {
    let mut run = new.clone();
    run.listen = old.listen.clone();
    run.runtime = old.runtime.clone();
    run.xdp.enabled = old.xdp.enabled;
    run.xdp.interfaces = old.xdp.interfaces.clone();
    run.xdp.attach = old.xdp.attach;
    run.store = old.store.clone();
    run.admin = old.admin.clone();
    run.keys.environment = old.keys.environment.clone();
    run.log = old.log.clone();
    run.base_dir = old.base_dir.clone();
    run
}

/// The typed config as `path → value` leaves; `[[route]]` fields as `route.<field>` → the
/// list of that field over every route (so adding or removing a route changes each).
pub(crate) fn leaves(cfg: &Config) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(Value::Object(top)) = serde_json::to_value(cfg) else {
        return out;
    };
    for (section, v) in top {
        match v {
            Value::Object(fields) => {
                for (field, v) in fields {
                    out.insert(format!("{section}.{field}"), v);
                }
            }
            Value::Array(routes) => {
                let mut by_field: std::collections::BTreeMap<String, Vec<Value>> =
                    std::collections::BTreeMap::new();
                let fields: std::collections::BTreeSet<String> = routes
                    .iter()
                    .filter_map(Value::as_object)
                    .flat_map(|r| r.keys().cloned())
                    .collect();
                for r in &routes {
                    for f in &fields {
                        by_field
                            .entry(f.clone())
                            .or_default()
                            .push(r.get(f).cloned().unwrap_or(Value::Null));
                    }
                }
                for (f, list) in by_field {
                    out.insert(format!("{section}.{f}"), Value::Array(list));
                }
            }
            // An absent optional section (`[tls]`): its keys are absent.
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/")).unwrap()
    }

    /// A config that sets every key (and a route with every field), so each shows in the diff.
    const FULL: &str = r#"
[listen]
http = ["127.0.0.1:8080"]
https = ["127.0.0.1:8443"]
[tls]
cert = "c.pem"
key = "k.pem"
[[route]]
prefix = "/v1/"
upstream = "http://127.0.0.1:9000"
scopes = ["a"]
key_in_query = true
key_in = ["x-api-key"]
strip_key = false
websocket = true
inject_header = { name = "A", value = "b" }
[[route]]
prefix = "/ai/"
upstream = ["https://a.example:8443", "https://b.example:8443"]
upstream_ca = "ca.pem"
upstream_sni = "gw.example"
upstream_client_cert = "c.pem"
upstream_client_key = "c.key"
resolve_interval = "5s"
credentials = { name = "Authorization", values = ["Bearer a", "Bearer b"], cooldown = "30s" }
ai = "anthropic"
"#;

    #[test]
    fn every_key_of_the_typed_config_is_listed_once() {
        let listed: std::collections::BTreeSet<&str> = KEYS.iter().map(|k| k.path).collect();
        assert_eq!(listed.len(), KEYS.len(), "a key is listed twice");
        let typed: std::collections::BTreeSet<String> = leaves(&parse(FULL)).into_keys().collect();
        let typed: std::collections::BTreeSet<&str> = typed.iter().map(String::as_str).collect();
        assert_eq!(
            typed, listed,
            "KEYS and the typed Config disagree: add the new key to KEYS with how a reload takes it"
        );
    }

    #[test]
    fn the_diff_names_exactly_the_keys_that_changed() {
        let old = parse(FULL);
        assert!(changed(&old, &parse(FULL)).is_empty());
        let new = parse(&format!(
            "{FULL}[limits]\nclient_timeout = \"5s\"\n[autoblock]\nexempt = [\"10.1.2.3/8\"]\n\
             [[route]]\nprefix = \"/v2/\"\nupstream = \"http://127.0.0.1:9001\"\n"
        ));
        let paths: Vec<&str> = changed(&old, &new).iter().map(|k| k.path).collect();
        assert_eq!(
            paths,
            [
                "limits.client_timeout",
                "autoblock.exempt",
                "route.prefix",
                "route.upstream",
                "route.scopes",
                "route.key_in_query",
                "route.key_in",
                "route.strip_key",
                "route.websocket",
                "route.cost",
                "route.inject_header",
                "route.upstream_ca",
                "route.upstream_sni",
                "route.upstream_client_cert",
                "route.upstream_client_key",
                "route.resolve_interval",
                "route.credentials",
                "route.ai",
            ]
        );
        // The defaults written out are the defaults: absent and explicit compare equal.
        let explicit = parse(&format!(
            "{FULL}[limits]\nclient_timeout = \"30s\"\n[autoblock]\nban = \"600s\"\n"
        ));
        assert!(changed(&old, &explicit).is_empty());
        // Losing `[tls]` changes both of its keys.
        let no_tls = parse(
            "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9000\"\nscopes = [\"a\"]\n\
             key_in_query = true\nkey_in = [\"x-api-key\"]\nstrip_key = false\nwebsocket = true\n\
             inject_header = { name = \"A\", value = \"b\" }\n\
             [[route]]\nprefix = \"/ai/\"\n\
             upstream = [\"https://a.example:8443\", \"https://b.example:8443\"]\n\
             upstream_ca = \"ca.pem\"\nupstream_sni = \"gw.example\"\n\
             upstream_client_cert = \"c.pem\"\nupstream_client_key = \"c.key\"\n\
             resolve_interval = \"5s\"\ncredentials = { name = \"Authorization\", \
             values = [\"Bearer a\", \"Bearer b\"], cooldown = \"30s\" }\n\
             ai = \"anthropic\"\n\
             [listen]\nhttp = [\"127.0.0.1:8080\"]\n",
        );
        let paths: Vec<&str> = changed(&old, &no_tls).iter().map(|k| k.path).collect();
        assert_eq!(paths, ["listen.https", "tls.cert", "tls.key"]);
    }

    /// [`running_with`] keeps exactly the restart keys: from a config that changes every key,
    /// what runs differs from the old in the applied keys only, and from the new in the restart
    /// keys only.
    #[test]
    fn a_reload_runs_with_the_applied_keys_only() {
        let old = parse(FULL);
        let new = parse(
            r#"
[listen]
http = ["127.0.0.1:8081"]
https = ["127.0.0.1:8444"]
[tls]
cert = "c2.pem"
key = "k2.pem"
[runtime]
shards = 3
[limits]
max_header_bytes = 2048
max_body_bytes = 10
client_timeout = "1s"
upstream_timeout = "2s"
max_connections = 100
max_connections_per_source = 0
drain_timeout = "3s"
[xdp]
enabled = false
interfaces = ["lo"]
mode = "monitor"
attach = "skb"
protected_ports = [1]
allow = ["10.0.0.0/8"]
syn_rate = "5/s"
syn_burst = 7
[store]
kind = "postgres"
path = "x.db"
url = "postgres://h/db"
reserve_bytes = 1
check_interval = "1s"
[admin]
listen = "127.0.0.1:1"
token_file = "t"
[keys]
environment = "test"
errors = "opaque"
trusted_proxies = ["10.0.0.1"]
[autoblock]
enabled = false
failures = 2
window = "1s"
ban = "1s"
ipv6_prefix = 48
exempt = ["10.0.0.0/8"]
[log]
format = "text"
access_log = "off"
[[route]]
prefix = "/v2/"
upstream = "http://127.0.0.1:9001"
"#,
        );
        assert_eq!(
            changed(&old, &new).len(),
            KEYS.len(),
            "the new config changes every key"
        );
        let run = running_with(&old, &new);
        for k in changed(&old, &run) {
            assert_eq!(k.on_reload, OnReload::Applied, "{} runs changed", k.path);
        }
        for k in changed(&run, &new) {
            assert_eq!(k.on_reload, OnReload::Restart, "{} waits", k.path);
        }
        assert_eq!(
            changed(&old, &run).len() + changed(&run, &new).len(),
            KEYS.len()
        );
    }

    #[test]
    fn durations_are_written_as_they_are_read() {
        use super::super::{format_duration, parse_duration};
        for s in ["500ms", "1500ms", "30s", "90s", "10m", "36h", "90d", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s, "{s}");
        }
        assert_eq!(format_duration(parse_duration("24h").unwrap()), "1d");
    }
}
