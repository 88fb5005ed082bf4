//! Routes compiled for the hot path: longest-prefix match on the path as the upstream will read
//! it, each route's targets ([`Targets`]: addresses, TLS, health) and its upstream credential
//! ([`Credentials`]: `${ENV}` expanded, `@/path` read), resolved when the config is loaded (at
//! start and on reload).

use std::path::PathBuf;
use std::sync::Arc;

use super::credentials::Credentials;
use super::upstream::Target;
use super::upstream::balance::Targets;
use crate::config::upstream::{Endpoint, Scheme};
use crate::config::{AiProvider, Config, Route};
use crate::obs::upstreams::UpstreamBoard;
use crate::path::upstream_reading;

/// A route or its injected header cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A target cannot be used (its form, its name, its TLS files).
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

/// A route ready for the hot path.
#[derive(Debug)]
pub struct CompiledRoute {
    /// Path prefix, as configured.
    pub prefix: String,
    /// The prefix read as paths are read for matching (decoded, no `;parameters`).
    pub prefix_read: Vec<u8>,
    /// Where requests go.
    pub targets: Targets,
    /// Remove the client's key (headers, `api_key` query parameter) before forwarding.
    pub strip_key: bool,
    /// `?api_key=` is accepted on this route.
    pub key_in_query: bool,
    /// Extra header names that may carry the key (lower case, from `key_in`).
    pub key_headers: Vec<String>,
    /// The credential injected towards the upstream; never logged.
    pub credentials: Option<Credentials>,
    /// WebSocket upgrades are allowed (after the key check).
    pub websocket: bool,
    /// Whose LLM token usage the responses report (`None`: not counted).
    pub ai: Option<AiProvider>,
}

impl CompiledRoute {
    /// The header the route injects its credential in, if it does.
    #[must_use]
    pub fn credential_header(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.name.as_str())
    }
}

/// Every route, plus every route's targets.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Routes in config order (so indices match `Config::routes`).
    pub routes: Vec<CompiledRoute>,
    /// Every target of every route, by slot (the pools' index).
    pub targets: Vec<Arc<Target>>,
    /// Route indices sorted by prefix length, longest first.
    by_len: Vec<usize>,
}

impl RouteTable {
    /// Compiles `cfg.routes`.
    ///
    /// # Errors
    /// An unusable upstream, prefix, or injected header (naming the variable or file).
    pub fn build(cfg: &Config) -> Result<Self, RouteError> {
        Self::build_after(cfg, None)
    }

    /// Compiles `cfg.routes` to replace `old`: a pooled credential value that `old` had for
    /// the same route keeps its state (a refused one keeps resting until its value changes).
    ///
    /// # Errors
    /// As [`RouteTable::build`].
    pub fn build_after(cfg: &Config, old: Option<&RouteTable>) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for r in &cfg.routes {
            if !r.prefix.starts_with('/') {
                return Err(RouteError::BadPrefix {
                    prefix: r.prefix.clone(),
                });
            }
            let targets = build_targets(cfg, r, &mut table.targets)?;
            let credentials = resolve_credentials(cfg, r)?;
            if let (Some(new), Some(old)) = (
                &credentials,
                old.and_then(|o| o.routes.iter().find(|o| o.prefix == r.prefix))
                    .and_then(|o| o.credentials.as_ref()),
            ) {
                new.carry_over(old);
            }
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
                targets,
                strip_key: r.strip_key,
                key_in_query: r.key_in_query,
                key_headers,
                credentials,
                websocket: r.websocket,
                ai: r.ai,
            });
        }
        table.by_len = (0..table.routes.len()).collect();
        table
            .by_len
            .sort_by_key(|&i| std::cmp::Reverse(table.routes[i].prefix_read.len()));
        Ok(table)
    }

    /// Lists every target and pooled credential on `board` (what `/metrics` shows).
    pub fn publish(&self, board: &UpstreamBoard) {
        let targets = self.targets.iter().map(|t| Arc::clone(&t.health)).collect();
        let credentials = self
            .routes
            .iter()
            .filter_map(|r| r.credentials.as_ref())
            .flat_map(|c| c.health().iter().cloned())
            .collect();
        board.publish(targets, credentials);
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

/// The route's targets, appended to `all` (their slots are their places in it).
fn build_targets(
    cfg: &Config,
    r: &Route,
    all: &mut Vec<Arc<Target>>,
) -> Result<Targets, RouteError> {
    let err = |upstream: &str, why: String| RouteError::Upstream {
        prefix: r.prefix.clone(),
        upstream: upstream.to_string(),
        why,
    };
    let texts = r.upstream.targets();
    if texts.is_empty() || texts.len() > 64 {
        return Err(err("[]", "must list 1 to 64 targets".into()));
    }
    let https = texts
        .iter()
        .any(|t| Endpoint::parse(t).is_ok_and(|e| e.scheme == Scheme::Https));
    let tls = if https {
        let config = super::upstream::tls::client_config(cfg, r)
            .map_err(|why| err(&r.upstream.to_string(), why))?;
        Some(config)
    } else {
        None
    };
    let mut list = Vec::with_capacity(texts.len());
    for text in texts {
        let t = Target::new(
            all.len(),
            &r.prefix,
            text,
            tls.as_ref(),
            r.upstream_sni.as_deref(),
            r.resolve_interval,
        )
        .map_err(|why| err(text, why))?;
        let t = Arc::new(t);
        all.push(Arc::clone(&t));
        list.push(t);
    }
    Ok(Targets::new(list))
}

/// The route's `inject_header` or `[route.credentials]`, each value resolved.
fn resolve_credentials(cfg: &Config, r: &Route) -> Result<Option<Credentials>, RouteError> {
    if let Some(h) = &r.inject_header {
        let (name, value) = resolve_inject(cfg, &r.prefix, &h.name, &h.value)?;
        return Ok(Some(Credentials::fixed(name, value)));
    }
    let Some(c) = &r.credentials else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(c.values.len());
    for v in &c.values {
        values.push(resolve_inject(cfg, &r.prefix, &c.name, v)?.1);
    }
    Ok(Some(Credentials::pool(
        &r.prefix,
        c.name.clone(),
        values,
        c.cooldown,
    )))
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
        assert_eq!(t.targets.len(), 3, "each route has its own targets");
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
        for up in [
            "http://127.0.0.1:1/base",
            "ftp://a",
            "https://surely-not-a-host.invalid",
        ] {
            let mut c = cfg("");
            c.routes.push(crate::config::Route {
                prefix: "/".into(),
                upstream: crate::config::upstream::Upstreams::One(up.into()),
                upstream_ca: None,
                upstream_sni: None,
                upstream_client_cert: None,
                upstream_client_key: None,
                resolve_interval: std::time::Duration::from_secs(30),
                scopes: Vec::new(),
                key_in_query: false,
                key_in: None,
                strip_key: true,
                websocket: false,
                cost: 1,
                inject_header: None,
                credentials: None,
                ai: None,
            });
            assert!(RouteTable::build(&c).is_err(), "{up}");
        }
    }
}
