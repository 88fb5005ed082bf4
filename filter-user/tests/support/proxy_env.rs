//! Proxy test fixtures: an in-process proxy on ephemeral 127.0.0.1 ports in front of the test
//! origin, and a raw-socket HTTP/1.1 client that reads exactly one response at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use edgefilter::config::Config;
use edgefilter::gate::{AllowAll, GateFactory};
use edgefilter::proxy::{self, ProxyHandle};

use super::upstream::Upstream;

/// A proxy in front of a test origin.
pub struct Env {
    pub up: Upstream,
    pub proxy: Option<ProxyHandle>,
    pub addr: SocketAddr,
}

impl Env {
    /// Starts an origin and a proxy with `extra` config (TOML) and `AllowAll`.
    pub fn new(extra: &str) -> Self {
        Self::with_gates(extra, Box::new(|_| Box::new(AllowAll)))
    }

    /// Same, with a chosen gate. `extra` may use `UPSTREAM` for the origin's address; when it
    /// defines no route, one `/` route to the origin is added.
    pub fn with_gates(extra: &str, gates: GateFactory) -> Self {
        let up = Upstream::start();
        let cfg = config(extra, up.addr);
        let proxy = proxy::start(&cfg, gates).expect("proxy starts");
        let addr = proxy.local_addrs()[0];
        Self {
            up,
            proxy: Some(proxy),
            addr,
        }
    }

    /// A fresh client connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }
}

/// Builds a config: 2 shards, ephemeral port, `extra` appended.
pub fn config(extra: &str, upstream: SocketAddr) -> Config {
    let extra = extra.replace("UPSTREAM", &upstream.to_string());
    let route = if extra.contains("[[route]]") {
        String::new()
    } else {
        format!("[[route]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\n")
    };
    let head = if extra.contains("[listen]") {
        String::new()
    } else {
        "[listen]\nhttp = [\"127.0.0.1:0\"]\n".to_string()
    };
    let shards = if extra.contains("[runtime]") {
        ""
    } else {
        "[runtime]\nshards = 2\n"
    };
    let text = format!("{head}{shards}{extra}\n{route}");
    Config::parse(&text, std::path::Path::new("/")).expect("test config parses")
}

/// One parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (first, case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A raw HTTP/1.1 client over one TCP connection.
pub struct Client {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect to proxy");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).expect("write request");
    }

    /// Reads one response; `head_request` means no body follows.
    pub fn read(&mut self, head_request: bool) -> Response {
        self.try_read(head_request).expect("a response")
    }

    pub fn try_read(&mut self, head_request: bool) -> std::io::Result<Response> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status: u16 = head[9..12].parse().expect("status code");
        let mut resp = Response {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut line = String::new();
                self.r.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                    .expect("chunk size");
                if size == 0 {
                    loop {
                        let mut t = String::new();
                        self.r.read_line(&mut t)?;
                        if t == "\r\n" {
                            return Ok(resp);
                        }
                        resp.head.push_str(&t);
                    }
                }
                let mut data = vec![0; size + 2];
                self.r.read_exact(&mut data)?;
                resp.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.r.read_exact(&mut body)?;
            resp.body = body;
        } else {
            self.r.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }

    /// Sends `raw` and reads one response.
    pub fn call(&mut self, raw: &str) -> Response {
        self.send(raw.as_bytes());
        self.read(raw.starts_with("HEAD "))
    }

    /// Whether the proxy closed the connection (EOF within the read timeout).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }
}

/// `GET path` with a Host header, keep-alive.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n")
}
