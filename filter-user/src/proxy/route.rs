//! Routes compiled for the hot path: longest-prefix match on the path as the upstream will read
//! it, resolved upstream addresses, and the injected upstream credential (`${ENV}` expanded,
//! `@/path` read) resolved once at start-up.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::config::Config;
use crate::path::upstream_reading;

/// A route or its injected header cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The upstream is not `http://host:port`.
    #[error("route {prefix}: upstream `{upstream}` {why}")]
    Upstream {
        /// Route prefix.
        prefix: String,
        /// The configured upstream.
        upstream: String,
        /// What is wrong.
        why: String,
    },
    /// `${NAME}` names an unset environment variable.
    #[error("route {prefix}: inject_header needs environment variable {name}, which is not set")]
    MissingEnv {
        /// Route prefix.
        prefix: String,
        /// The variable.
        name: String,
    },
    /// `@/path` cannot be read.
    #[error("route {prefix}: inject_header secret file {}: {source}", path.display())]
    SecretFile {
        /// Route prefix.
        prefix: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The header name or the expanded value is not a valid header.
    #[error("route {prefix}: inject_header {what} is not a valid HTTP header {what}")]
    BadHeader {
        /// Route prefix.
        prefix: String,
        /// `name` or `value`.
        what: &'static str,
    },
    /// The prefix does not start with `/`.
    #[error("route prefix `{prefix}` must start with `/`")]
    BadPrefix { prefix: String },
}

/// One upstream origin.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Resolved address.
    pub addr: SocketAddr,
    /// `host:port` as written, sent as `Host`.
    pub authority: String,
}

/// A route ready for the hot path.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Path prefix, as configured.
    pub prefix: String,
    /// The prefix read as paths are read for matching (decoded, no `;parameters`).
    pub prefix_read: Vec<u8>,
    /// Index into [`RouteTable::upstreams`].
    pub upstream: usize,
    /// Remove the client's key (headers, `api_key` query parameter) before forwarding.
    pub strip_key: bool,
    /// `?api_key=` is accepted on this route.
    pub key_in_query: bool,
    /// Extra header names that may carry the key (lower case, from `key_in`).
    pub key_headers: Vec<String>,
    /// Resolved `(name, value)` to inject; never logged.
    pub inject: Option<(String, String)>,
    /// WebSocket upgrades are allowed (after the key check).
    pub websocket: bool,
}

/// Every route, plus the distinct upstreams they point at.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Routes in config order (so indices match `Config::routes`).
    pub routes: Vec<CompiledRoute>,
    /// Distinct upstream origins.
    pub upstreams: Vec<Upstream>,
    /// Route indices sorted by prefix length, longest first.
    by_len: Vec<usize>,
}

impl RouteTable {
    /// Compiles `cfg.routes`.
    ///
    /// # Errors
    /// An unusable upstream, prefix, or injected header (naming the variable or file).
    pub fn build(cfg: &Config) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for r in &cfg.routes {
            if !r.prefix.starts_with('/') {
                return Err(RouteError::BadPrefix {
                    prefix: r.prefix.clone(),
                });
            }
            let up = parse_upstream(&r.prefix, &r.upstream)?;
            let upstream = match table
                .upstreams
                .iter()
                .position(|u| u.authority == up.authority)
            {
                Some(i) => i,
                None => {
                    table.upstreams.push(up);
                    table.upstreams.len() - 1
                }
            };
            let inject = match &r.inject_header {
                Some(h) => Some(resolve_inject(cfg, &r.prefix, &h.name, &h.value)?),
                None => None,
            };
            let key_headers = r
                .key_in
                .iter()
                .flatten()
                .map(|s| s.to_ascii_lowercase())
                .filter(|s| s != "query" && s != "api_key")
                .collect();
            table.routes.push(CompiledRoute {
                prefix: r.prefix.clone(),
                prefix_read: upstream_reading(&r.prefix).collect(),
                upstream,
                strip_key: r.strip_key,
                key_in_query: r.key_in_query,
                key_headers,
                inject,
                websocket: r.websocket,
            });
        }
        table.by_len = (0..table.routes.len()).collect();
        table
            .by_len
            .sort_by_key(|&i| std::cmp::Reverse(table.routes[i].prefix_read.len()));
        Ok(table)
    }

    /// The route whose prefix is the longest one `path` starts with, read as the upstream will
    /// read it: percent-decoded, and without each segment's `;parameters` (which Tomcat, Jetty
    /// and Spring drop), so `/%61dmin/x` and `/admin;x/y` take the `/admin/` route. `path` has
    /// passed the path checks (`crate::path`).
    #[must_use]
    pub fn find(&self, path: &str) -> Option<usize> {
        let plain = !path.as_bytes().iter().any(|&b| b == b'%' || b == b';');
        self.by_len.iter().copied().find(|&i| {
            let prefix = self.routes[i].prefix_read.as_slice();
            if plain {
                path.as_bytes().starts_with(prefix)
            } else {
                let mut read = upstream_reading(path);
                prefix.iter().all(|&p| read.next() == Some(p))
            }
        })
    }
}

fn parse_upstream(prefix: &str, upstream: &str) -> Result<Upstream, RouteError> {
    let err = |why: &str| RouteError::Upstream {
        prefix: prefix.to_string(),
        upstream: upstream.to_string(),
        why: why.to_string(),
    };
    let rest = upstream
        .strip_prefix("http://")
        .ok_or_else(|| err("must start with http:// (TLS to upstreams is not supported)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') {
        return Err(err("must be http://host:port with no path"));
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| err(&format!("does not resolve: {e}")))?
        .next()
        .ok_or_else(|| err("resolves to no address"))?;
    Ok(Upstream {
        addr,
        authority: authority.to_string(),
    })
}

fn resolve_inject(
    cfg: &Config,
    prefix: &str,
    name: &str,
    template: &str,
) -> Result<(String, String), RouteError> {
    let bad = |what| RouteError::BadHeader {
        prefix: prefix.to_string(),
        what,
    };
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(bad("name"));
    }
    let value = if let Some(path) = template.strip_prefix('@') {
        let path = cfg.resolve(std::path::Path::new(path));
        let text = std::fs::read_to_string(&path).map_err(|source| RouteError::SecretFile {
            prefix: prefix.to_string(),
            path: path.clone(),
            source,
        })?;
        text.trim_end_matches(['\r', '\n']).to_string()
    } else {
        expand_env(prefix, template)?
    };
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(bad("value"));
    }
    Ok((name.to_string(), value))
}

/// Expands every `${NAME}` from the environment.
fn expand_env(prefix: &str, template: &str) -> Result<String, RouteError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        let val = std::env::var(name).map_err(|_| RouteError::MissingEnv {
            prefix: prefix.to_string(),
            name: name.to_string(),
        })?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        let text = format!("[xdp]\nenabled = false\n{text}");
        Config::parse(&text, std::path::Path::new("/")).expect("config parses")
    }

    #[test]
    fn longest_prefix_wins() {
        let c = cfg(r#"
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:1"
[[route]]
prefix = "/v1/chat/"
upstream = "http://127.0.0.1:2"
[[route]]
prefix = "/v1/"
upstream = "http://127.0.0.1:1"
"#);
        let t = RouteTable::build(&c).unwrap();
        assert_eq!(t.find("/v1/chat/completions"), Some(1));
        assert_eq!(t.find("/v1/models"), Some(2));
        assert_eq!(t.find("/other"), Some(0));
        assert_eq!(t.upstreams.len(), 2);
    }

    #[test]
    fn routes_match_the_path_as_the_upstream_reads_it() {
        let c = cfg(r#"
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:1"
[[route]]
prefix = "/admin/"
upstream = "http://127.0.0.1:1"
"#);
        let t = RouteTable::build(&c).unwrap();
        for admin in [
            "/admin/x",
            "/%61dmin/x",
            "/%61%64%6D%69%6E/x",
            "/admin;x=1/y",
            "/adm%69n;jsessionid=2/y",
        ] {
            assert_eq!(t.find(admin), Some(1), "{admin}");
        }
        for other in ["/administrator/x", "/admin", "/x/admin/", "/ad;min/x"] {
            assert_eq!(t.find(other), Some(0), "{other}");
        }
    }

    #[test]
    fn prefixes_are_read_as_paths_are() {
        let c = cfg(r#"
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:1"
[[route]]
prefix = "/v%31;x/"
upstream = "http://127.0.0.1:1"
"#);
        let t = RouteTable::build(&c).unwrap();
        assert_eq!(t.routes[1].prefix_read, b"/v1/");
        assert_eq!(t.find("/v1/x"), Some(1));
        assert_eq!(t.find("/v%31/x"), Some(1));
    }

    #[test]
    fn missing_env_and_file_are_named() {
        let c = cfg(r#"
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:1"
inject_header = { name = "Authorization", value = "Bearer ${EDGEFILTER_TEST_SURELY_UNSET}" }
"#);
        let e = RouteTable::build(&c).unwrap_err().to_string();
        assert!(e.contains("EDGEFILTER_TEST_SURELY_UNSET"), "{e}");
        let c = cfg(r#"
[[route]]
prefix = "/"
upstream = "http://127.0.0.1:1"
inject_header = { name = "Authorization", value = "@/nonexistent/secret.txt" }
"#);
        let e = RouteTable::build(&c).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/secret.txt"), "{e}");
    }

    #[test]
    fn bad_upstreams_are_refused() {
        // check-config refuses these too; the route table must not rely on that.
        for up in ["https://x:1", "http://127.0.0.1:1/base", "ftp://a"] {
            let mut c = cfg("");
            c.routes.push(crate::config::Route {
                prefix: "/".into(),
                upstream: up.into(),
                scopes: Vec::new(),
                key_in_query: false,
                key_in: None,
                strip_key: true,
                websocket: false,
                inject_header: None,
            });
            assert!(RouteTable::build(&c).is_err(), "{up}");
        }
    }
}
