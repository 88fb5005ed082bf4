//! How a route's `upstream` is written (SPEC §6): one target or a list of them, each
//! `http://host[:port]`, `https://host[:port]` or `unix:/path/to.sock`. One parser, used by the
//! config checks (so `check-config` names the bad target) and by the proxy's route table (so
//! both read a target the same way).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `upstream = "…"` or `upstream = ["…", "…"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Upstreams {
    /// One target.
    One(String),
    /// Several targets; requests are spread over them.
    Many(Vec<String>),
}

impl Upstreams {
    /// The targets as written.
    #[must_use]
    pub fn targets(&self) -> &[String] {
        match self {
            Self::One(t) => std::slice::from_ref(t),
            Self::Many(ts) => ts,
        }
    }
}

impl std::fmt::Display for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.targets().join(", "))
    }
}

/// How a target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1 over TCP.
    Http,
    /// HTTP/1.1 over TLS (rustls), chain and name verified.
    Https,
    /// Plain HTTP/1.1 over a Unix stream socket.
    Unix,
}

/// One parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// How it is reached.
    pub scheme: Scheme,
    /// Host name or address (brackets removed from IPv6); empty for `unix:`.
    pub host: String,
    /// Port (default 80 for http, 443 for https); 0 for `unix:`.
    pub port: u16,
    /// `Host` sent upstream: `host[:port]` as written (`localhost` for `unix:`).
    pub authority: String,
    /// The socket's path, for `unix:`.
    pub socket: Option<PathBuf>,
}

impl Endpoint {
    /// Parses one target.
    ///
    /// # Errors
    /// What is wrong with it, to follow "upstream `…` ".
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err("must be unix:/absolute/path/to.sock".into());
            }
            return Ok(Self {
                scheme: Scheme::Unix,
                host: String::new(),
                port: 0,
                authority: "localhost".into(),
                socket: Some(PathBuf::from(path)),
            });
        }
        let (scheme, rest, default_port) = if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest, 80)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest, 443)
        } else {
            return Err("must start with http://, https:// or unix:".into());
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err("must be scheme://host[:port] with no path, query or user".into());
        }
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(Self {
            scheme,
            host: host.to_string(),
            port: port.unwrap_or(default_port),
            authority: authority.to_string(),
            socket: None,
        })
    }

    /// Whether `host` is an IP address (never re-resolved).
    #[must_use]
    pub fn host_is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || format!("has a bad port in `{authority}`");
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "has an unclosed `[`".to_string())?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("has `[{host}]`, which is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => {
                let p = after.strip_prefix(':').ok_or_else(bad_port)?;
                Ok((host, Some(p.parse().map_err(|_| bad_port())?)))
            }
        };
    }
    match authority.rsplit_once(':') {
        None => Ok((authority, None)),
        Some((host, p)) => {
            if host.contains(':') {
                return Err("holds an IPv6 address without brackets: write [addr]:port".into());
            }
            Ok((host, Some(p.parse().map_err(|_| bad_port())?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_parses() {
        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Http, "127.0.0.1", 9000)
        );
        assert!(e.host_is_ip());
        let e = Endpoint::parse("https://api.example.com/").unwrap();
        assert_eq!((e.scheme, e.port), (Scheme::Https, 443));
        assert_eq!(e.authority, "api.example.com");
        assert!(!e.host_is_ip());
        let e = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert_eq!(e.authority, "[::1]:8080");
        let e = Endpoint::parse("unix:/run/gw.sock").unwrap();
        assert_eq!(
            e.socket.as_deref(),
            Some(std::path::Path::new("/run/gw.sock"))
        );
        assert_eq!(e.authority, "localhost");
    }

    #[test]
    fn bad_targets_say_why() {
        for (t, why) in [
            ("ftp://x", "must start with"),
            ("http://", "no path"),
            ("http://a/b", "no path"),
            ("http://a:x", "bad port"),
            ("http://a:70000", "bad port"),
            ("http://::1:80", "without brackets"),
            ("http://[zz]:80", "not an IPv6"),
            ("unix:run.sock", "absolute"),
            ("http://user@a:80", "no path, query or user"),
        ] {
            let e = Endpoint::parse(t).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
    }

    #[test]
    fn one_or_many() {
        let one: Upstreams = serde_json::from_str("\"http://a:1\"").unwrap();
        assert_eq!(one.targets(), ["http://a:1"]);
        let many: Upstreams = serde_json::from_str("[\"http://a:1\",\"http://b:1\"]").unwrap();
        assert_eq!(many.targets().len(), 2);
        assert_eq!(many.to_string(), "http://a:1, http://b:1");
    }
}
