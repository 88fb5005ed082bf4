//! The leak scanner itself: it finds a full key and only a full key, and fails a log or a
//! `keys create` output that shows one too often. Here, in one test binary, rather than in the
//! shared `support` module: a failing scan panics with a backtrace, whose symbolisation costs
//! tens of MiB that the memory test binary would otherwise see beside its uploads.

use crate::support::leaks::{Kind, key_runs, masked, scan, scan_created};

const KEY: &str = "ef_live_0123456789ABCDEFGHIJabcdefghij0123456789";

#[test]
fn finds_a_key_and_only_a_key() {
    assert_eq!(key_runs(KEY.as_bytes()), [(0, KEY.len())]);
    let line = format!("{{\"msg\":\"denied\",\"k\":\"{KEY}\"}}");
    assert_eq!(key_runs(line.as_bytes()).len(), 1);
    // Masked forms, ids and other prefixes are not keys.
    for fine in [
        "ef_live_0123…",
        "key_AAAAAAAAAAAAAAAAAAAA",
        "ef_LIVE_0123456789ABCDEFGHIJ",
        "ef__0123456789ABCDEFGHIJ",
        "ref_live_0123",
    ] {
        assert!(key_runs(fine.as_bytes()).is_empty(), "{fine}");
    }
    assert!(masked(KEY.as_bytes()).len() < 20);
}

#[test]
#[should_panic(expected = "key leak")]
fn a_key_in_a_log_fails() {
    scan(Kind::DaemonLog, "log", format!("x {KEY} y").as_bytes());
}

#[test]
#[should_panic(expected = "key leak")]
fn a_new_key_shown_twice_fails() {
    scan_created(Kind::Cli, "create", format!("{KEY}\n{KEY}\n").as_bytes());
}

#[test]
fn a_new_key_shown_once_passes() {
    scan_created(
        Kind::Cli,
        "create",
        format!("{{\"key\":\"{KEY}\"}}").as_bytes(),
    );
}
