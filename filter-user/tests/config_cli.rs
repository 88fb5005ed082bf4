//! `edgefilter check-config` through the real binary: exit codes and line-numbered errors.

use std::process::Command;

fn check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgefilter.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run edgefilter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_config_exits_zero() {
    let (code, stdout, _) = check_config(include_str!("../../examples/edgefilter.toml"));
    assert_eq!(code, 0);
    assert!(stdout.contains("ok"), "{stdout}");
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
    std::fs::write(&path, "[xdp]\nenabled = false\n").expect("write config");
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
