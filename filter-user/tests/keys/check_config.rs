//! `check-config` runs every check `run` makes before it starts, through the real binary: one
//! test per config `run` refuses (unset `${ENV}`, TLS key not matching its certificate, a
//! missing key file, CR/LF in `inject_header`, no route), one config with several problems
//! reported whole, `run` exiting 2 on a config error, a store error naming its file, and the
//! warning for an `admin.listen` off loopback.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::daemon::Process;
use crate::support::ports::free_addr;
use crate::support::tls::Pki;

/// A config file in a temp dir of its own, with what it refers to beside it.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    /// `tables` after a fixed head: loopback listener, XDP off, store and token in the dir.
    fn new(tables: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, admin) = (free_addr(), free_addr());
        let text = format!(
            "[listen]\nhttp = [\"{http}\"]\n[xdp]\nenabled = false\n[store]\npath = \"keys.db\"\n\
             [admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n{tables}"
        );
        std::fs::write(dir.path().join("ef.toml"), text).unwrap();
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("ef.toml")
    }

    /// The line of the config on which `needle` first appears (1-based).
    fn line_of(&self, needle: &str) -> usize {
        let text = std::fs::read_to_string(self.config()).unwrap();
        1 + text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` not in the config"))
    }

    /// `edgefilter --config … ARGS` with `env` set; its output.
    fn edgefilter(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("EDGEFILTER_CONFIG")
            .envs(env.iter().copied())
            .output()
            .expect("run edgefilter");
        crate::support::leaks::scan_cli(args, &out);
        out
    }

    /// `check-config`: (exit code, stderr).
    fn check(&self, env: &[(&str, &str)]) -> (i32, String) {
        let out = self.edgefilter(&["check-config"], env);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Asserts `check-config` exits 2 and reports `message` on the line holding `needle`.
    fn assert_refused_at(&self, needle: &str, message: &str) {
        let (code, stderr) = self.check(&[]);
        assert_eq!(code, 2, "{stderr}");
        let at = format!("ef.toml:{}: ", self.line_of(needle));
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&at) && l.contains(message)),
            "expected `{at}…{message}` in:\n{stderr}"
        );
    }
}

fn route(extra: &str) -> String {
    format!("[[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9\"\n{extra}\n")
}

/// The TLS tables for `pki`'s files.
fn tls(pki: &Pki) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    )
}

/// Adds `https` to the `[listen]` table of `c`'s config.
fn listen_https(c: &Case, https: std::net::SocketAddr) {
    let text = std::fs::read_to_string(c.config()).unwrap().replacen(
        "[listen]\n",
        &format!("[listen]\nhttps = [\"{https}\"]\n"),
        1,
    );
    std::fs::write(c.config(), text).unwrap();
}

#[test]
fn an_unset_env_in_inject_header_is_refused() {
    let c = Case::new(&route(
        "inject_header = { name = \"Authorization\", value = \"Bearer ${EF_TEST_SURELY_UNSET_1}\" }",
    ));
    c.assert_refused_at(
        "inject_header",
        "needs environment variable EF_TEST_SURELY_UNSET_1, which is not set",
    );
    // Set, as the daemon would have it: the same config is fine.
    let (code, stderr) = c.check(&[("EF_TEST_SURELY_UNSET_1", "sk-upstream")]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_missing_secret_file_in_inject_header_is_refused() {
    let c = Case::new(&route(
        "inject_header = { name = \"Authorization\", value = \"@upstream.secret\" }",
    ));
    c.assert_refused_at("inject_header", "upstream.secret");
    std::fs::write(c.dir.path().join("upstream.secret"), "Bearer sk\n").unwrap();
    let (code, stderr) = c.check(&[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn cr_lf_in_inject_header_is_refused() {
    // A literal CR LF in the TOML value ...
    let c = Case::new(&route(
        "inject_header = { name = \"X-Upstream\", value = \"a\\r\\nX-Evil: 1\" }",
    ));
    c.assert_refused_at("inject_header", "holds a CR (\\r) at byte 1");
    // ... and one that arrives through the environment.
    let c = Case::new(&route(
        "inject_header = { name = \"X-Upstream\", value = \"${EF_TEST_CRLF}\" }",
    ));
    let (code, stderr) = c.check(&[("EF_TEST_CRLF", "a\r\nX-Evil: 1")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("ef.toml:{}: ", c.line_of("inject_header")))
            && stderr.contains("inject_header value is not a valid HTTP header value"),
        "{stderr}"
    );
}

#[test]
fn a_config_without_a_route_is_refused() {
    let c = Case::new("");
    let (code, stderr) = c.check(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ef.toml: no [[route]]"), "{stderr}");
}

#[test]
fn a_tls_key_that_does_not_match_its_certificate_is_refused() {
    let pki = Pki::new("a");
    let https = free_addr();
    // The leaf and its own key: fine.
    let c = Case::new(&format!("{}{}", tls(&pki), route("")));
    listen_https(&c, https);
    let (code, stderr) = c.check(&[]);
    assert_eq!(code, 0, "{stderr}");
    // The old key beside a new leaf: refused on the key's line.
    let old_key = std::fs::read(&pki.key).unwrap();
    pki.issue("b");
    std::fs::write(&pki.key, old_key).unwrap();
    c.assert_refused_at("key = ", "TLS key");
    let (_, stderr) = c.check(&[]);
    assert!(
        stderr.contains("match") || stderr.contains("consistent"),
        "the reason names the mismatch: {stderr}"
    );
}

#[test]
fn a_missing_tls_key_file_is_refused() {
    let pki = Pki::new("a");
    let https = free_addr();
    let c = Case::new(&format!("{}{}", tls(&pki), route("")));
    listen_https(&c, https);
    std::fs::remove_file(&pki.key).unwrap();
    c.assert_refused_at("key = ", &format!("TLS key {}", pki.key.display()));
}

/// Several problems in several sections and routes: every one is reported, each on its line.
#[test]
fn every_problem_of_a_config_is_reported() {
    let c = Case::new(
        "[tls]\ncert = \"missing-cert.pem\"\nkey = \"missing-key.pem\"\n\
         [limits]\nclient_timeout = \"0s\"\n\
         [autoblock]\nwindow = \"10 parsecs\"\nban = \"forever\"\n\
         [[route]]\nprefix = \"/a/\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject_header = { name = \"Authorization\", value = \"Bearer ${EF_TEST_SURELY_UNSET_2}\" }\n\
         [[route]]\nprefix = \"/b/\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject_header = { name = \"X-B\", value = \"b\\nc\" }\n\
         [[route]]\nprefix = \"/c/\"\nupstream = \"http://127.0.0.1:9\"\n\
         inject_header = { name = \"X-C\", value = \"@missing.secret\" }\n",
    );
    listen_https(&c, free_addr());
    let (code, stderr) = c.check(&[]);
    assert_eq!(code, 2, "{stderr}");
    let expected = [
        ("cert = ", "missing-cert.pem"),
        ("key = ", "missing-key.pem"),
        (
            "client_timeout",
            "limits.client_timeout must be more than 0",
        ),
        // Two bad values in one section: both.
        ("window", "unknown unit `parsecs`"),
        ("ban = ", "`forever` is not a duration"),
        (
            "EF_TEST_SURELY_UNSET_2",
            "EF_TEST_SURELY_UNSET_2, which is not set",
        ),
        ("X-B", "holds an LF (\\n)"),
        ("missing.secret", "missing.secret"),
    ];
    for (needle, message) in expected {
        let at = format!("ef.toml:{}: ", c.line_of(needle));
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&at) && l.contains(message)),
            "expected `{at}…{message}` in:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), expected.len(), "{stderr}");
}

/// `run` refuses what `check-config` refuses, with the same lines, and exits 2 (SPEC §3).
#[test]
fn run_exits_two_on_a_config_error() {
    let c = Case::new(&route(
        "inject_header = { name = \"Authorization\", value = \"Bearer ${EF_TEST_SURELY_UNSET_3}\" }",
    ));
    let out = c.edgefilter(&["run", "--no-xdp"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let at = format!("ef.toml:{}: ", c.line_of("inject_header"));
    assert!(
        stderr.contains(&at) && stderr.contains("EF_TEST_SURELY_UNSET_3"),
        "{stderr}"
    );
    // No route at all: also 2.
    let out = Case::new("").edgefilter(&["run", "--no-xdp"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A store that cannot be opened is named, whichever command meets it.
#[test]
fn a_store_error_names_the_file() {
    let c = Case::new(&route(""));
    assert!(c.edgefilter(&["keys", "list"], &[]).status.success());
    let db = c.dir.path().join("keys.db");
    // A schema from a newer edgefilter: refused before anything reads it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    for args in [&["keys", "list"][..], &["run", "--no-xdp"]] {
        let out = c.edgefilter(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("key store {}", db.display())) && stderr.contains("newer"),
            "{args:?}: {stderr}"
        );
    }
}

/// An admin API on a public address is valid, and warned about by `check-config` and `run`.
#[test]
fn a_public_admin_listen_is_warned_about() {
    let c = Case::new(&route(""));
    let text = std::fs::read_to_string(c.config()).unwrap();
    let public = text
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                "listen = \"0.0.0.0:1\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(c.config(), public).unwrap();
    let (code, stderr) = c.check(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: admin.listen = \"0.0.0.0:1\" is not a loopback address"),
        "{stderr}"
    );
    // `run` warns at start, before it binds anything: a store it cannot open stops it there,
    // so the test never listens on a public address.
    std::fs::create_dir(c.dir.path().join("keys.db")).unwrap();
    let mut run = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(c.config())
            .args(["run", "--no-xdp"])
            .env_remove("EDGEFILTER_CONFIG"),
    );
    let status = run.wait_for(Duration::from_secs(20)).expect("run stops");
    assert_eq!(status.code(), Some(1), "{}", run.log());
    let log = run.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("admin.listen = \\\"0.0.0.0:1\\\" is not a loopback address")),
        "{log}"
    );
    // A loopback admin address is not warned about.
    let quiet = Case::new(&route(""));
    let (code, stderr) = quiet.check(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}
