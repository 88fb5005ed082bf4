//! `edgefilter check-config` through the real binary: exit codes and line-numbered errors; and
//! CLI output into a closed pipe (`… | head`) ending quietly.

use std::process::Command;

use crate::support::ports;

fn check_config(text: &str) -> (i32, String, String) {
    check_config_with(text, &[])
}

/// `check-config` on `text` with `env` set (as the daemon would have it).
fn check_config_with(text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgefilter.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run edgefilter");
    crate::support::leaks::scan_cli(&["check-config"], &out);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_config_exits_zero() {
    // The example's route injects `${DEMO_UPSTREAM_KEY}`, which `cargo xtask run` sets.
    let (code, stdout, stderr) = check_config_with(
        include_str!("../../../examples/edgefilter.toml"),
        &[("DEMO_UPSTREAM_KEY", "demo")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        !stdout.contains("note:"),
        "nothing in the example is unused: {stdout}"
    );
}

/// A key that another key's value makes moot is named, not silently ignored (the config is
/// still valid: SPEC §6's own example sets `store.url` beside `kind = "sqlite"`).
#[test]
fn a_set_key_that_nothing_reads_is_noted() {
    let (code, stdout, stderr) = check_config(
        "[xdp]\ninterfaces = [\"lo\"]\nallow = [\"127.0.0.0/8\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
         [store]\nkind = \"sqlite\"\nurl = \"postgres://edge@db/keys\"\n\
         [[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("note: [tls] is not used: listen.https is empty"),
        "{stdout}"
    );
    assert!(
        stdout.contains("note: store.url is not used: store.kind = \"sqlite\""),
        "{stdout}"
    );
}

#[test]
fn invalid_config_exits_two_and_names_every_line() {
    let (code, _, stderr) = check_config(
        "[listen]\nhttp = [\"127.0.0.1:8080\"]\nport = 1\n\n[xdp]\ninterfaces = [\"lo\"]\nallow = [\"nope\"]\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("edgefilter.toml:3: unknown field `port`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("edgefilter.toml:7: `nope` is not a CIDR"),
        "{stderr}"
    );
}

#[test]
fn a_bad_store_url_is_reported_on_its_line() {
    let (code, _, stderr) = check_config(
        "[xdp]\nenabled = false\n[store]\nkind = \"postgres\"\n\
         url = \"postgres://db/k?sslrootcert=/nonexistent/ca.pem\"\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("edgefilter.toml:5: store.url TLS: sslrootcert /nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[test]
fn missing_config_is_a_config_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .args(["check-config", "--config", "/nonexistent/edgefilter.toml"])
        .output()
        .expect("run edgefilter");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read config /nonexistent/edgefilter.toml")
    );
}

#[test]
fn config_path_comes_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.toml");
    std::fs::write(
        &path,
        "[xdp]\nenabled = false\n[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .arg("check-config")
        .env("EDGEFILTER_CONFIG", &path)
        .output()
        .expect("run edgefilter");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the binary with its stdout a pipe whose reading end is already closed (`… | head`
/// once `head` has what it wants): every write fails with EPIPE.
fn into_closed_pipe(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("EDGEFILTER_CONFIG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run edgefilter")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = ports::free_addr();
    let path = dir.path().join("edgefilter.toml");
    std::fs::write(
        &path,
        format!(
            "[xdp]\nenabled = false\n[store]\npath = \"keys.db\"\n\
             [admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n\
             [[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9\"\n"
        ),
    )
    .expect("write config");
    for args in [
        &["check-config"][..],
        &[
            "explain",
            "--key",
            "ef_live_not-a-key",
            "--path",
            "/v1/chat",
        ],
        &["keys", "list"],
        &["allow", "list"],
    ] {
        let out = into_closed_pipe(&path, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
