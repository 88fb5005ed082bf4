//! Config parsing and validation tests.

use std::path::Path;
use std::time::Duration;

use super::{Config, XdpMode, parse_duration};

fn parse(text: &str) -> Result<Config, Vec<(usize, String)>> {
    Config::parse(text, Path::new("/etc/edgefilter"))
        .map_err(|ps| ps.into_iter().map(|p| (p.line, p.message)).collect())
}

const MINIMAL: &str = "[xdp]\ninterfaces = [\"lo\"]\nallow = [\"127.0.0.0/8\"]\n";

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../examples/edgefilter.toml");
    let cfg = parse(text).expect("example config parses");
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.protected_ports(), vec![8080]);
    assert_eq!(cfg.xdp.interfaces, vec!["lo".to_string()]);
}

#[test]
fn spec_shaped_config_is_valid() {
    let text = r#"
[listen]
http  = ["0.0.0.0:8080"]
https = ["0.0.0.0:8443"]
[tls]
cert = "cert.pem"
key  = "key.pem"
[runtime]
shards = 0
[limits]
max_header_bytes = 16384
max_body_bytes = 10485760
client_timeout = "30s"
upstream_timeout = "30s"
[xdp]
enabled = true
interfaces = ["eth0"]
mode = "monitor"
attach = "skb"
protected_ports = []
allow = ["203.0.113.0/24", "2001:db8::/32", "198.18.0.7"]
[store]
kind = "postgres"
path = "var/keys.db"
url  = "postgres://edge@db/keys"
[admin]
listen = "127.0.0.1:9901"
token_file = "var/admin.token"
[keys]
environment = "live"
errors = "opaque"
[autoblock]
enabled = true
failures = 50
window = "10s"
ban = "10m"
[log]
format = "json"
access_log = "stdout"
[[route]]
prefix = "/v1/"
upstream = "http://127.0.0.1:9000"
scopes = ["ai:invoke"]
key_in_query = false
websocket = true
inject_header = { name = "Authorization", value = "Bearer ${OPENAI_API_KEY}" }
[[route]]
prefix = "/v2/"
upstream = "http://127.0.0.1:9001"
"#;
    let cfg = parse(text).expect("SPEC §6 example parses");
    assert!(cfg.routes[0].websocket);
    assert!(
        !cfg.routes[1].websocket,
        "WebSocket upgrades are off by default"
    );
    assert_eq!(cfg.xdp.mode, XdpMode::Monitor);
    assert_eq!(
        cfg.protected_ports(),
        vec![8080, 8443],
        "empty protected_ports = the listen ports"
    );
    assert_eq!(
        cfg.xdp.allow[2].to_string(),
        "198.18.0.7/32",
        "a bare address is its host prefix"
    );
    assert_eq!(cfg.autoblock.ban, Duration::from_secs(600));
    assert_eq!(
        cfg.resolve(Path::new("cert.pem")),
        Path::new("/etc/edgefilter/cert.pem")
    );
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = r#"[listen]
http = ["127.0.0.1:8080"]
https = ["127.0.0.1:8443"]
bogus = 1

[limits]
client_timeout = "30 parsecs"

[xdp]
interfaces = ["lo"]
allow = ["10.0.0.0/33"]

[keys]
environment = "LIVE"

[[route]]
prefix = "/v1/"
upstream = "http://127.0.0.1:9000"

[[route]]
prefix = "v2"
upstream = "ftp://x"
inject_header = { name = "Authorization", value = "Bearer ${OPENAI" }

[mystery]
a = 1
"#;
    let problems = parse(text).expect_err("bad config");
    let lines: Vec<usize> = problems.iter().map(|p| p.0).collect();
    assert_eq!(lines, vec![4, 7, 11, 14, 21, 22, 23, 25], "{problems:#?}");
    let all = format!("{problems:?}");
    for needle in [
        "bogus",
        "parsecs",
        "10.0.0.0/33",
        "LIVE",
        "must start with /",
        "http://",
        "unclosed",
        "mystery",
    ] {
        assert!(all.contains(needle), "{needle} missing from {all}");
    }
}

#[test]
fn syntax_errors_name_their_line() {
    let problems = parse("[listen]\nhttp = [\"127.0.0.1:8080\"\n").expect_err("unclosed array");
    assert_eq!(problems[0].0, 2, "{problems:?}");
}

#[test]
fn cross_field_checks() {
    let cases: &[(&str, &str)] = &[
        ("[listen]\nhttps = [\"127.0.0.1:8443\"]\n", "needs a [tls]"),
        ("[listen]\nhttp = []\n", "would not listen"),
        (
            "[xdp]\ninterfaces = []\nallow = [\"::/0\"]\n",
            "xdp.interfaces is empty",
        ),
        ("[store]\nkind = \"postgres\"\n", "needs store.url"),
        ("[limits]\nmax_header_bytes = 10\n", "max_header_bytes"),
        (
            "[limits]\nmax_connections = 0\n",
            "limits.max_connections must be more than 0",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\n[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\n",
            "appears twice",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:x\"\n",
            "has a bad port",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\nupstream_ca = \"ca.pem\"\n",
            "upstream_ca is set but no upstream target is https://",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"https://h\"\nupstream_client_cert = \"c.pem\"\n",
            "go together",
        ),
        ("[[route]]\nprefix = \"/a\"\nupstream = []\n", "empty list"),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\ninject_header = { name = \"A\", value = \"b\" }\n[route.credentials]\nname = \"A\"\nvalues = [\"b\"]\n",
            "keep one",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\n[route.credentials]\nname = \"A\"\nvalues = []\n",
            "values is empty",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\nkey_in = [\"cookie\"]\n",
            "key_in `cookie`",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\nscopes = [\"ok\", \"ai invoke\"]\n",
            "route `/a`: scopes[1]: scope holds U+0020 at byte 2, which is not allowed; a scope is 1 to 128 bytes",
        ),
        (
            "[[route]]\nprefix = \"/a\"\nupstream = \"http://h:1\"\nscopes = [\"a\\r\\nX: y\"]\n",
            "scopes[0]: scope holds a control character (U+000D)",
        ),
    ];
    for (body, needle) in cases {
        let text = if body.starts_with("[xdp]") {
            (*body).to_string()
        } else {
            format!("{MINIMAL}{body}")
        };
        let problems = parse(&text).expect_err(body);
        assert!(
            format!("{problems:?}").contains(needle),
            "{body}: wanted {needle}, got {problems:?}"
        );
        assert!(
            problems.iter().all(|p| p.0 > 0),
            "every problem has a line: {problems:?}"
        );
    }
}

#[test]
fn a_failed_section_does_not_produce_follow_on_errors() {
    // [xdp] fails to parse, so the "interfaces is empty" cross-check must not also fire.
    let problems = parse("[xdp]\ninterfaces = []\nmode = \"block\"\n").expect_err("bad mode");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, 3);
}

/// Every bad value of a section is reported, not only the first serde meets.
#[test]
fn every_bad_value_of_a_section_is_reported() {
    let problems = parse(&format!(
        "{MINIMAL}[limits]\nclient_timeout = \"30 parsecs\"\nmax_body_bytes = \"big\"\n\
         upstream_timeout = \"1s\"\nbogus = 1\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\nscopes = \"a\"\n\
         strip_key = 3\n"
    ))
    .expect_err("bad values");
    let lines: Vec<usize> = problems.iter().map(|p| p.0).collect();
    assert_eq!(lines, [5, 6, 8, 12, 13], "{problems:?}");
    assert!(problems[0].1.contains("parsecs"), "{problems:?}");
    assert!(
        problems[2].1.contains("unknown field `bogus`"),
        "{problems:?}"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
    assert!(parse_duration("h").is_err());
    assert!(parse_duration("10y").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn cidrs_keep_host_bits_until_a_list_masks_them() {
    assert_eq!(
        super::parse_cidr(" 10.1.2.3/8 ").map(|n| n.to_string()),
        Ok("10.1.2.3/8".into())
    );
    let cfg = parse("[xdp]\ninterfaces = [\"lo\"]\nallow = [\"10.1.2.3/8\", \"2001:db8::1/32\"]\n")
        .expect("valid");
    let allow: Vec<String> = cfg.xdp.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["10.0.0.0/8", "2001:db8::/32"]);
}

#[test]
fn autoblock_keys_parse_and_are_checked() {
    let cfg = parse(&format!(
        "{MINIMAL}[autoblock]\nenabled = true\nfailures = 5\nwindow = \"2s\"\nban = \"3s\"\n\
         ipv6_prefix = 56\nexempt = [\"10.0.0.0/8\", \"198.18.0.7\", \"fd00:ef::1/64\"]\n"
    ))
    .expect("valid");
    let a = &cfg.autoblock;
    assert_eq!((a.failures, a.ipv6_prefix), (5, 56));
    assert_eq!(a.ban, Duration::from_secs(3));
    let exempt: Vec<String> = a.exempt.iter().map(ToString::to_string).collect();
    assert_eq!(exempt, ["10.0.0.0/8", "198.18.0.7/32", "fd00:ef::/64"]);
    let defaults = parse(MINIMAL).expect("valid");
    assert_eq!(defaults.autoblock.ipv6_prefix, 64);
    assert!(defaults.autoblock.exempt.is_empty());

    for (body, line, needle) in [
        ("ipv6_prefix = 0\n", 5, "ipv6_prefix = 0 must be 1 to 128"),
        ("ipv6_prefix = 129\n", 5, "must be 1 to 128"),
        ("exempt = [\"10.0.0.0/33\"]\n", 5, "10.0.0.0/33"),
    ] {
        let problems = parse(&format!("{MINIMAL}[autoblock]\n{body}")).expect_err(body);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, line, "{problems:?}");
        assert!(problems[0].1.contains(needle), "{problems:?}");
    }
}

#[test]
fn syn_rates_parse_and_give_the_program_its_interval_and_window() {
    let cfg = parse(&format!("{MINIMAL}syn_rate = \"200/s\"\nsyn_burst = 400\n")).unwrap();
    assert_eq!(cfg.xdp.syn_limit(), Some((5_000_000, 2_000_000_000)));
    let cfg = parse(&format!("{MINIMAL}syn_rate = \"600/m\"\n")).unwrap();
    assert_eq!(
        cfg.xdp.syn_limit(),
        Some((100_000_000, 120_000_000_000)),
        "burst defaults to twice the count"
    );
    assert_eq!(parse("").unwrap().xdp.syn_limit(), None);
    for (bad, needle) in [
        ("syn_rate = \"200\"", "write N/s or N/m"),
        ("syn_rate = \"0/s\"", "would drop every new connection"),
        ("syn_rate = \"5/h\"", "write N/s or N/m"),
        ("syn_burst = 10", "needs xdp.syn_rate"),
        (
            "syn_rate = \"1/s\"\nsyn_burst = 0",
            "would drop every new connection",
        ),
    ] {
        let problems = parse(&format!("{MINIMAL}{bad}\n")).expect_err(bad);
        assert!(
            format!("{problems:?}").contains(needle),
            "{bad}: {problems:?}"
        );
    }
}

#[test]
fn every_key_spec_6_names_loads() {
    assert!(
        super::validate::NOT_YET.is_empty(),
        "a key of SPEC §6 is left unimplemented"
    );
    let text = r#"[xdp]
interfaces = ["lo"]
allow = ["127.0.0.0/8"]
syn_rate = "200/s"
syn_burst = 400
[[route]]
prefix = "/v1/"
upstream = ["https://api.example.com", "http://127.0.0.1:9001"]
upstream_ca = "ca.pem"
upstream_sni = "api.example.com"
upstream_client_cert = "c.pem"
upstream_client_key = "c.key"
resolve_interval = "30s"
scopes = ["ai:invoke"]
key_in_query = false
cost = 1
ai = "openai"
websocket = false
[route.credentials]
name = "Authorization"
values = ["Bearer x", "Bearer y"]
cooldown = "60s"
"#;
    let cfg = parse(text).expect("every SPEC §6 key loads");
    assert_eq!(cfg.routes[0].upstream.targets().len(), 2);
}

#[test]
fn upstream_targets_of_every_form_and_their_tls_keys_parse() {
    let cfg = parse(&format!(
        "{MINIMAL}[[route]]\nprefix = \"/v1/\"\n\
         upstream = [\"https://api.example.com\", \"http://[::1]:9000\", \"unix:/run/gw.sock\"]\n\
         upstream_ca = \"ca.pem\"\nupstream_sni = \"gw.example\"\n\
         upstream_client_cert = \"c.pem\"\nupstream_client_key = \"c.key\"\n\
         resolve_interval = \"5s\"\n\
         [route.credentials]\nname = \"Authorization\"\nvalues = [\"Bearer ${{A}}\", \"@/run/b\"]\n"
    ))
    .unwrap();
    let r = &cfg.routes[0];
    assert_eq!(r.upstream.targets().len(), 3);
    assert_eq!(r.resolve_interval, Duration::from_secs(5));
    let c = r.credentials.as_ref().unwrap();
    assert_eq!(c.values.len(), 2);
    assert_eq!(c.cooldown, Duration::from_secs(60), "the default");
}

#[test]
fn connection_limits_and_drain_timeout_parse_with_their_defaults() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.limits.max_connections, None, "derived at start");
    assert_eq!(
        cfg.limits.max_connections_per_source, None,
        "a tenth of the limit"
    );
    assert_eq!(cfg.limits.drain_timeout, Duration::from_secs(10));
    let cfg = parse(
        "[limits]\nmax_connections = 5000\nmax_connections_per_source = 0\ndrain_timeout = \"2500ms\"\n",
    )
    .unwrap();
    assert_eq!(cfg.limits.max_connections, Some(5000));
    assert_eq!(
        cfg.limits.max_connections_per_source,
        Some(0),
        "0: no per-source limit"
    );
    assert_eq!(cfg.limits.drain_timeout, Duration::from_millis(2500));
}
