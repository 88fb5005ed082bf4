//! The deployment kit in `deploy/` is checked with the tools that will read it: `promtool check
//! rules` and `promtool test rules` for the alert rules and their unit tests (and for the
//! dashboard's queries, as recording rules), `systemd-analyze verify` for the unit (a copy whose
//! `ExecStart` is the binary under test), and `edgefilter check-config` for the sample config,
//! run on the file as shipped with the unit's environment file's variable set (check-config does
//! not need the store, token and log paths it names to exist). Every
//! metric name in an alert or a dashboard panel must be one of SPEC §8's, the unit and the
//! config must agree on where the state, the log and the pins live, and every runbook link
//! must name a section of docs/deploy.md.
//!
//! promtool and systemd-analyze come from Debian's `prometheus` and `systemd` packages (.ci/run
//! installs them). Without them a test prints SKIPPED; under `CI=true` it fails instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every metric name in SPEC §8.
const SPEC_METRICS: &[&str] = &[
    "edgefilter_requests_total",
    "edgefilter_request_duration_seconds",
    "edgefilter_upstream_duration_seconds",
    "edgefilter_xdp_packets_total",
    "edgefilter_revocation_propagation_seconds",
    "edgefilter_keys",
    "edgefilter_autoblocked_sources",
    "edgefilter_store_revision",
    "edgefilter_store_lag_seconds",
    "edgefilter_upstream_errors_total",
    "edgefilter_access_log_dropped_total",
    "edgefilter_llm_tokens_total",
    "edgefilter_upstream_credential_state",
];

/// The histograms among them: their series are `<name>_bucket`, `_sum` and `_count`.
const SPEC_HISTOGRAMS: &[&str] = &[
    "edgefilter_request_duration_seconds",
    "edgefilter_upstream_duration_seconds",
    "edgefilter_revocation_propagation_seconds",
];

/// The state directory the unit's `StateDirectory=edgefilter` creates.
const STATE_DIR: &str = "/var/lib/edgefilter";
/// The log directory the unit's `LogsDirectory=edgefilter` creates.
const LOGS_DIR: &str = "/var/log/edgefilter";
/// Where the unit installs the binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/edgefilter";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("reading deploy/{file}: {e}"))
}

/// `name` on `PATH`, or `None` after saying SKIPPED loudly; under `CI=true` a missing tool
/// fails the test, so CI never passes a check it did not run.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} not found on PATH, and under CI=true this check must run, not skip \
             (apt-get install {package}; .ci/run does)"
        );
        // Straight to stderr, past the test harness's capture, so a passing run still shows it.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!!!! SKIPPED: {name} not found on PATH (apt-get install {package}; .ci/run \
             does) !!!!!!!!!!\n"
        );
    }
    found
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Every string value in a JSON or YAML document (panel queries, templating, annotations...).
fn strings_in(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

/// The `edgefilter_*` names in a text.
fn metric_names(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("edgefilter_"))
}

fn is_spec_metric(name: &str) -> bool {
    SPEC_METRICS.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| SPEC_HISTOGRAMS.contains(&base))
        })
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("grafana/edgefilter.json")).expect("the dashboard is JSON")
}

fn rules() -> serde_json::Value {
    serde_yaml::from_str(&read("prometheus/edgefilter.rules.yml")).expect("the rules are YAML")
}

/// Every panel's query expressions, Grafana's variables replaced by what Prometheus accepts.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<String> {
    let panels = dash["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(!exprs.is_empty(), "panel {} has no query", panel["title"]);
        queries.extend(exprs.iter().map(|e| {
            e.replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        }));
    }
    queries
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let check = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("prometheus/edgefilter.rules.yml")));
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        show(&check)
    );
    let test = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(deploy("prometheus/edgefilter.rules.test.yml")));
    assert!(
        test.status.success(),
        "promtool test rules: {}",
        show(&test)
    );
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_queries(&dashboard()).iter().enumerate() {
        let quoted = serde_json::to_string(expr).expect("a string");
        rules.push_str(&format!(
            "      - record: dashboard:{i}\n        expr: {quoted}\n"
        ));
    }
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, rules).expect("write");
    let check = run(Command::new(promtool).args(["check", "rules"]).arg(&path));
    assert!(
        check.status.success(),
        "promtool on the dashboard's queries: {}",
        show(&check)
    );
}

#[test]
fn every_metric_in_the_rules_and_the_dashboard_is_a_spec_metric() {
    let rules = rules();
    let mut rule_texts = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert!(rule["expr"].is_string(), "rule without expr: {rule}");
            strings_in(rule, &mut rule_texts);
        }
    }
    let dash = dashboard();
    assert!(!dashboard_queries(&dash).is_empty());
    let mut dash_texts = Vec::new();
    strings_in(&dash, &mut dash_texts);

    let mut unknown = Vec::new();
    for (file, texts) in [("rules", &rule_texts), ("dashboard", &dash_texts)] {
        for name in texts.iter().flat_map(|t| metric_names(t)) {
            if !is_spec_metric(name) {
                unknown.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(unknown.is_empty(), "names not in SPEC §8: {unknown:#?}");

    // What the dashboard is for: each of these has a panel.
    let all_queries = dashboard_queries(&dash).join("\n");
    for wanted in SPEC_METRICS
        .iter()
        .filter(|m| !m.contains("llm_tokens") && !m.contains("credential_state"))
    {
        assert!(
            all_queries.contains(wanted),
            "no dashboard panel shows {wanted}"
        );
    }
}

/// The values of `key=` in a unit file (every occurrence, comments ignored).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let unit = read("systemd/edgefilter.service");
    let exec_start = unit_values(&unit, "ExecStart");
    assert_eq!(
        exec_start,
        [format!("{INSTALLED_BINARY} run --config /etc/edgefilter/edgefilter.toml").as_str()]
    );
    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    // systemd-analyze checks that ExecStart's binary exists: point it at the one under test.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("edgefilter.service");
    let copy = unit.replace(
        &format!("ExecStart={INSTALLED_BINARY} "),
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_edgefilter")),
    );
    std::fs::write(&path, copy).expect("write");
    let out = run(Command::new(analyze).arg("verify").arg(&path));
    // It may also warn about the host's own units; only lines about this one count.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(path.to_str().expect("utf-8")) || l.contains("edgefilter.service"))
        .collect();
    assert!(
        about_unit.is_empty() && out.status.success(),
        "systemd-analyze verify: {about_unit:#?}\n{}",
        show(&out)
    );
}

#[test]
fn the_unit_grants_only_the_four_capabilities_and_outwaits_the_drain() {
    let unit = read("systemd/edgefilter.service");
    let caps = "CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE";
    assert_eq!(unit_values(&unit, "AmbientCapabilities"), [caps]);
    assert_eq!(unit_values(&unit, "CapabilityBoundingSet"), [caps]);
    assert_eq!(unit_values(&unit, "User"), ["edgefilter"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(
        unit_values(&unit, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
    assert_eq!(unit_values(&unit, "KillSignal"), ["SIGTERM"]);
    let stop: u64 = unit_values(&unit, "TimeoutStopSec")
        .first()
        .and_then(|v| v.strip_suffix('s')?.parse().ok())
        .expect("TimeoutStopSec=<n>s");
    assert!(
        stop > edgefilter::proxy::DRAIN_DEADLINE.as_secs(),
        "TimeoutStopSec={stop}s must outlast the {:?} drain",
        edgefilter::proxy::DRAIN_DEADLINE
    );
    let pre = unit_values(&unit, "ExecStartPre").join("\n");
    assert!(
        pre.starts_with('+') && pre.contains(edgefilter::xdp::DEFAULT_PIN_DIR),
        "a privileged ExecStartPre prepares {}",
        edgefilter::xdp::DEFAULT_PIN_DIR
    );
    assert_eq!(unit_values(&unit, "StateDirectory"), ["edgefilter"]);
    assert_eq!(unit_values(&unit, "LogsDirectory"), ["edgefilter"]);
}

#[test]
fn the_sample_config_passes_check_config_and_keeps_state_in_the_units_directories() {
    let config = deploy("edgefilter.toml");
    let out = run(Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        // What the unit's EnvironmentFile= gives the daemon (docs/deploy.md).
        .env("UPSTREAM_API_KEY", "sk-deploy-test"));
    assert!(out.status.success(), "check-config: {}", show(&out));

    let cfg = edgefilter::config::Config::load(&config).expect("the sample config loads");
    for (what, path) in [
        ("store.path", cfg.resolve(&cfg.store.path)),
        ("admin.token_file", cfg.resolve(&cfg.admin.token_file)),
    ] {
        assert!(
            path.starts_with(STATE_DIR),
            "{what} = {} is outside the unit's StateDirectory {STATE_DIR}",
            path.display()
        );
    }
    let log = &cfg.log.access_log;
    assert!(
        log == "stdout" || log == "off" || Path::new(log).starts_with(LOGS_DIR),
        "log.access_log = {log} is outside the unit's LogsDirectory {LOGS_DIR}"
    );
}

#[test]
fn the_propagation_alert_threshold_is_a_bucket_boundary() {
    // histogram_quantile is exact only at bucket boundaries; the alert's 1 ms must be one.
    assert!(edgefilter::fanout::propagation::BUCKETS.contains(&0.001));
    let rules = read("prometheus/edgefilter.rules.yml");
    assert!(rules.contains("edgefilter_revocation_propagation_seconds_bucket[5m]))) > 0.001"));
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_runbook_link_names_a_section_of_the_deploy_page() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md"))
            .expect("docs/deploy.md");
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if let Some(heading) = line.strip_prefix('#').filter(|_| !in_code) {
            anchors.push(anchor(heading.trim_start_matches('#')));
        }
    }
    let texts = [
        read("prometheus/edgefilter.rules.yml"),
        read("grafana/edgefilter.json"),
        read("systemd/edgefilter.service"),
    ];
    let mut links = 0;
    for text in &texts {
        for (_, rest) in text
            .match_indices("docs/deploy.md#")
            .map(|(i, _)| text.split_at(i + 15))
        {
            let target: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                anchors.contains(&target),
                "docs/deploy.md has no section #{target}"
            );
            links += 1;
        }
    }
    assert!(
        links >= 7,
        "every alert names its runbook section ({links} links found)"
    );
}
