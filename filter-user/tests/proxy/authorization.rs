//! `Authorization: Bearer` as clients really send it, through the real daemon: one or more spaces
//! or tabs after the scheme, a `Basic` header in front of the `Bearer` one, and two different
//! `Bearer` values (refused, not guessed at).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::upstream::Upstream;

/// `GET /v1/echo` with `auth_lines` (whole header lines, without CRLF); (status, body, raw).
fn get(proxy: SocketAddr, auth_lines: &[String]) -> (u16, Value, String) {
    let mut head = String::from("GET /v1/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for l in auth_lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        raw,
    )
}

#[test]
fn bearer_takes_tabs_and_repeated_spaces_and_is_found_behind_basic() {
    let up = Upstream::start();
    let d = Daemon::start(up.addr);
    let (_, key) = d.create_key("alice");
    for sep in ["\t", "  ", " \t ", " "] {
        let (status, _, raw) = get(d.http, &[format!("Authorization: Bearer{sep}{key}")]);
        assert_eq!(status, 200, "separator {sep:?}: {raw}");
    }
    let (status, _, raw) = get(d.http, &[format!("Authorization: bearer\t{key}")]);
    assert_eq!(status, 200, "{raw}");
    // A `Basic` header first no longer hides the `Bearer` one behind it.
    let (status, _, raw) = get(
        d.http,
        &[
            "Authorization: Basic Zm9vOmJhcg==".to_owned(),
            format!("Authorization: Bearer {key}"),
        ],
    );
    assert_eq!(status, 200, "{raw}");
    // Neither header reached the upstream: the key's header is stripped, whatever its scheme.
    let heads = up.heads().join("\n");
    assert!(!heads.contains(&key[8..]), "the key went upstream: {heads}");
    assert!(!heads.contains("Zm9vOmJhcg=="), "{heads}");
}

#[test]
fn two_different_bearer_values_are_refused() {
    let up = Upstream::start();
    let d = Daemon::start(up.addr);
    let (_, key) = d.create_key("alice");
    let (_, other) = d.create_key("bob");
    let (status, body, raw) = get(
        d.http,
        &[
            format!("Authorization: Bearer {key}"),
            format!("Authorization: Bearer {other}"),
        ],
    );
    assert_eq!(status, 400, "{raw}");
    assert_eq!(body["error"]["code"], "MALFORMED_KEY", "{raw}");
    let hint = body["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("two `Authorization: Bearer` headers"),
        "{raw}"
    );
    assert!(
        !raw.contains(&key[8..]) && !raw.contains(&other[8..]),
        "{raw}"
    );
    assert!(up.heads().is_empty(), "nothing was forwarded");
    // The same key twice is that key.
    let (status, _, raw) = get(
        d.http,
        &[
            format!("Authorization: Bearer {key}"),
            format!("Authorization: Bearer\t{key}"),
        ],
    );
    assert_eq!(status, 200, "{raw}");
}
