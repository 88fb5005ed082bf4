//! What the key checks need from the config: the edge's environment and, per route, where the
//! key may be and which scopes it needs. Built once, shared by every shard.

use std::fmt;

use crate::config::Config;

/// A place a key may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `X-API-Key: <key>`.
    XApiKey,
    /// `?api_key=<key>` (only where a route opts in).
    Query,
    /// `Authorization: <key>` without the `Bearer` scheme (never accepted).
    AuthorizationNoScheme,
}

impl Place {
    /// The config name (`route.key_in`).
    #[must_use]
    pub const fn config_name(self) -> &'static str {
        match self {
            Self::Bearer => "authorization",
            Self::XApiKey => "x-api-key",
            Self::Query => "query",
            Self::AuthorizationNoScheme => "authorization-without-bearer",
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bearer => "`Authorization: Bearer <key>`",
            Self::XApiKey => "`X-API-Key: <key>`",
            Self::Query => "the `api_key` query parameter",
            Self::AuthorizationNoScheme => "`Authorization` without the `Bearer` scheme",
        })
    }
}

/// Per-route key rules.
#[derive(Debug, Clone)]
pub struct RouteRules {
    /// Route prefix (for messages and `explain`).
    pub prefix: Box<str>,
    /// Accepted places, in the order they are looked at.
    pub accepted: Box<[Place]>,
    /// Scopes a key needs here.
    pub scopes: Box<[Box<str>]>,
    /// Credits a request here costs a usage-limited key.
    pub cost: u64,
}

impl RouteRules {
    /// "`Authorization: Bearer <key>` or `X-API-Key: <key>`".
    #[must_use]
    pub fn accepted_list(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.accepted.iter().enumerate() {
            if i > 0 {
                out.push_str(if i + 1 == self.accepted.len() {
                    " or "
                } else {
                    ", "
                });
            }
            out.push_str(&p.to_string());
        }
        out
    }
}

/// The checks' view of the config.
#[derive(Debug, Clone)]
pub struct AuthRules {
    /// The environment this edge serves.
    pub environment: Box<str>,
    /// One entry per `[[route]]`, same order.
    pub routes: Vec<RouteRules>,
}

/// A route's `key_in` names something unknown.
#[derive(Debug, thiserror::Error)]
#[error("route {prefix}: key_in entry `{name}` is not one of authorization, x-api-key, query")]
pub struct RulesError {
    /// The route.
    pub prefix: String,
    /// The bad entry.
    pub name: String,
}

impl AuthRules {
    /// Builds the rules from the config.
    ///
    /// # Errors
    /// An unknown `key_in` entry.
    pub fn from_config(cfg: &Config) -> Result<Self, RulesError> {
        let routes = cfg
            .routes
            .iter()
            .map(|r| {
                let mut accepted = Vec::new();
                let names: Vec<&str> = r.key_in.as_ref().map_or_else(
                    || vec!["authorization", "x-api-key"],
                    |v| v.iter().map(String::as_str).collect(),
                );
                for name in names {
                    let p = match name.to_ascii_lowercase().as_str() {
                        "authorization" | "bearer" => Place::Bearer,
                        "x-api-key" => Place::XApiKey,
                        "query" | "api_key" => Place::Query,
                        _ => {
                            return Err(RulesError {
                                prefix: r.prefix.clone(),
                                name: name.to_owned(),
                            });
                        }
                    };
                    if !accepted.contains(&p) {
                        accepted.push(p);
                    }
                }
                if r.key_in_query && !accepted.contains(&Place::Query) {
                    accepted.push(Place::Query);
                }
                Ok(RouteRules {
                    prefix: r.prefix.as_str().into(),
                    accepted: accepted.into(),
                    scopes: r.scopes.iter().map(|s| s.as_str().into()).collect(),
                    cost: r.cost,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            environment: cfg.keys.environment.as_str().into(),
            routes,
        })
    }

    /// The route whose prefix is the longest match for `path`.
    #[must_use]
    pub fn route_for_path(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&*r.prefix))
            .max_by_key(|(_, r)| r.prefix.len())
            .map(|(i, _)| i)
    }
}
