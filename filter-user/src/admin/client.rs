//! The CLI side of the admin API: finds the running daemon and calls it (blocking HTTP/1.1 over
//! a plain `TcpStream`; one request per connection).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::ops::ACTOR_HEADER;
use super::token::AdminToken;
use crate::config::Config;

/// How long `discover` waits for the daemon to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Failures talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, sending or receiving failed.
    #[error("admin API at {addr}: {source}")]
    Io {
        /// The daemon's admin address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The answer was not HTTP/JSON as expected.
    #[error("admin API at {addr}: unexpected response: {what}")]
    BadResponse {
        /// The daemon's admin address.
        addr: SocketAddr,
        /// What was wrong.
        what: String,
    },
}

/// A connection recipe for the running daemon's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: AdminToken,
    timeout: Duration,
    /// Sent as [`ACTOR_HEADER`]: on whose behalf the calls are made.
    on_behalf_of: Option<String>,
}

impl AdminClient {
    /// A client for `addr` with `token`. Requests time out after 60 s (key changes wait for
    /// every shard).
    #[must_use]
    pub fn new(addr: SocketAddr, token: AdminToken) -> Self {
        Self {
            addr,
            token,
            timeout: Duration::from_secs(60),
            on_behalf_of: None,
        }
    }

    /// Gives up on a call after `timeout` (connecting, sending or waiting for the answer).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Says in every call that it acts for `actor` (e.g. `cli:alice`); the daemon records it in
    /// the audit trail after the authenticated actor.
    #[must_use]
    pub fn on_behalf_of(mut self, actor: &str) -> Self {
        self.on_behalf_of = Some(actor.to_owned());
        self
    }

    /// The daemon's admin API if it is listening on `admin.listen` and the token file is
    /// readable; `None` means "no daemon: write the store directly".
    #[must_use]
    pub fn discover(cfg: &Config) -> Option<Self> {
        let token = AdminToken::load(&cfg.resolve(&cfg.admin.token_file)).ok()?;
        let mut addr = cfg.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
        Some(Self::new(addr, token))
    }

    /// The daemon's admin address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and returns the status and the JSON body (`Null` when empty, a
    /// string when the body is not JSON, e.g. `/metrics`).
    ///
    /// # Errors
    /// [`ClientError`] when the daemon cannot be reached or answers garbage.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let io = |source| ClientError::Io {
            addr: self.addr,
            source,
        };
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            self.token.expose(),
            payload.len()
        );
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(who) = self
            .on_behalf_of
            .as_deref()
            .filter(|w| !w.contains(['\r', '\n']))
        {
            head.push_str(&format!("{ACTOR_HEADER}: {who}\r\n"));
        }
        head.push_str("\r\n");
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(io)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(payload.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        self.parse(&raw)
    }

    fn parse(&self, raw: &[u8]) -> Result<(u16, Value), ClientError> {
        let bad = |what: &str| ClientError::BadResponse {
            addr: self.addr,
            what: what.to_string(),
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err(bad("truncated head")),
            Err(e) => return Err(bad(&e.to_string())),
        };
        let status = resp.code.ok_or_else(|| bad("no status"))?;
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        if header("transfer-encoding").is_some() {
            return Err(bad("chunked responses are not expected"));
        }
        let rest = &raw[len..];
        let body = match header("content-length").map(|v| v.parse::<usize>()) {
            Some(Ok(n)) if n <= rest.len() => &rest[..n],
            Some(_) => return Err(bad("body shorter than Content-Length")),
            None => rest,
        };
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        Ok((status, value))
    }
}
