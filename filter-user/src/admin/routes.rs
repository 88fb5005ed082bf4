//! The admin API's route table (SPEC §7): method + path → [`Route`], or the right 404/405.

use hyper::Method;

use super::ops::{ApiError, UserAction};

/// One admin endpoint, with its path parameters decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz` (no token).
    Healthz,
    /// `GET /readyz` (no token).
    Readyz,
    /// `GET /metrics` (no token).
    Metrics,
    /// `POST /v1/keys`.
    CreateKey,
    /// `GET /v1/keys`.
    ListKeys,
    /// `GET /v1/keys/{id}`.
    ShowKey(String),
    /// `POST /v1/keys/{id}/revoke`.
    RevokeKey(String),
    /// `POST /v1/keys/{id}/rotate`.
    RotateKey(String),
    /// `POST /v1/keys/{id}/approve`.
    ApproveKey(String),
    /// `POST /v1/keys/{id}/credits`.
    KeyCredits(String),
    /// `POST /v1/users/{user}/suspend|activate|delete`.
    User(String, UserAction),
    /// `GET /v1/allowlist`.
    AllowList,
    /// `POST /v1/allowlist`.
    AllowAdd,
    /// `DELETE /v1/allowlist`.
    AllowRemove,
    /// `GET /v1/denylist`.
    DenyList,
    /// `POST /v1/denylist`.
    DenyAdd,
    /// `DELETE /v1/denylist`.
    DenyRemove,
    /// `POST /v1/explain`.
    Explain,
    /// `GET /v1/audit`.
    Audit,
    /// `GET /v1/stats`.
    Stats,
    /// `POST /v1/reload` (as `SIGHUP`).
    Reload,
}

impl Route {
    /// Whether the route is served without the admin token.
    #[must_use]
    pub fn is_public(&self) -> bool {
        matches!(self, Self::Healthz | Self::Readyz | Self::Metrics)
    }
}

/// Matches a request. Public routes match before any authentication; the caller authenticates
/// every other route before acting on it.
///
/// # Errors
/// 404 for an unknown path, 405 (with the allowed methods) for a known path and wrong method,
/// 400 for a path parameter that is not valid percent-encoded UTF-8.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    let m = method;
    let only = |want: &Method, allowed: &str, r: Route| {
        if m == want {
            Ok(r)
        } else {
            Err(ApiError::method_not_allowed(allowed))
        }
    };
    match segs.as_slice() {
        ["healthz"] => only(&Method::GET, "GET", Route::Healthz),
        ["readyz"] => only(&Method::GET, "GET", Route::Readyz),
        ["metrics"] => only(&Method::GET, "GET", Route::Metrics),
        ["v1", "keys"] => match *m {
            Method::GET => Ok(Route::ListKeys),
            Method::POST => Ok(Route::CreateKey),
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        },
        ["v1", "keys", id] => only(&Method::GET, "GET", Route::ShowKey(decode_component(id)?)),
        ["v1", "keys", id, action] => {
            let id = decode_component(id)?;
            let r = match *action {
                "revoke" => Route::RevokeKey(id),
                "rotate" => Route::RotateKey(id),
                "approve" => Route::ApproveKey(id),
                "credits" => Route::KeyCredits(id),
                _ => return Err(not_found()),
            };
            only(&Method::POST, "POST", r)
        }
        ["v1", "users", user, action] => {
            let action = UserAction::parse(action).ok_or_else(not_found)?;
            only(
                &Method::POST,
                "POST",
                Route::User(decode_component(user)?, action),
            )
        }
        ["v1", "allowlist"] => match *m {
            Method::GET => Ok(Route::AllowList),
            Method::POST => Ok(Route::AllowAdd),
            Method::DELETE => Ok(Route::AllowRemove),
            _ => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
        },
        ["v1", "denylist"] => match *m {
            Method::GET => Ok(Route::DenyList),
            Method::POST => Ok(Route::DenyAdd),
            Method::DELETE => Ok(Route::DenyRemove),
            _ => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
        },
        ["v1", "explain"] => only(&Method::POST, "POST", Route::Explain),
        ["v1", "audit"] => only(&Method::GET, "GET", Route::Audit),
        ["v1", "stats"] => only(&Method::GET, "GET", Route::Stats),
        ["v1", "reload"] => only(&Method::POST, "POST", Route::Reload),
        _ => Err(not_found()),
    }
}

/// The path may hold a full key (`/v1/keys/ef_…`): it is never echoed.
fn not_found() -> ApiError {
    ApiError::not_found("No such admin endpoint.")
        .with_hint("See docs/openapi.yaml for the endpoints.")
}

/// Percent-decodes one path segment or query value.
///
/// # Errors
/// 400 when it is empty or not valid percent-encoded UTF-8.
pub fn decode_component(seg: &str) -> Result<String, ApiError> {
    crate::percent::decode_utf8(seg)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("A path or query parameter is not valid percent-encoded UTF-8.")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_spec_endpoint() {
        let g = Method::GET;
        let p = Method::POST;
        assert_eq!(route(&g, "/healthz"), Ok(Route::Healthz));
        assert_eq!(route(&g, "/v1/keys/"), Ok(Route::ListKeys));
        assert_eq!(route(&p, "/v1/keys"), Ok(Route::CreateKey));
        assert_eq!(
            route(&g, "/v1/keys/key_abc"),
            Ok(Route::ShowKey("key_abc".into()))
        );
        assert_eq!(
            route(&p, "/v1/keys/k/rotate"),
            Ok(Route::RotateKey("k".into()))
        );
        assert_eq!(
            route(&p, "/v1/users/a%20b/suspend"),
            Ok(Route::User("a b".into(), UserAction::Suspend))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/allowlist"),
            Ok(Route::AllowRemove)
        );
        assert_eq!(route(&g, "/v1/denylist"), Ok(Route::DenyList));
        assert_eq!(route(&p, "/v1/denylist/"), Ok(Route::DenyAdd));
        assert_eq!(
            route(&Method::DELETE, "/v1/denylist"),
            Ok(Route::DenyRemove)
        );
        assert_eq!(
            route(&Method::PUT, "/v1/denylist").map_err(|e| e.status),
            Err(405)
        );
        assert_eq!(route(&p, "/v1/explain"), Ok(Route::Explain));
        assert_eq!(route(&g, "/v1/audit"), Ok(Route::Audit));
        assert_eq!(route(&p, "/v1/audit").map_err(|e| e.status), Err(405));
        assert_eq!(route(&g, "/v1/stats"), Ok(Route::Stats));
        assert_eq!(route(&p, "/v1/stats").map_err(|e| e.status), Err(405));
        assert_eq!(route(&p, "/v1/reload"), Ok(Route::Reload));
        assert_eq!(route(&g, "/v1/reload").map_err(|e| e.status), Err(405));
    }

    #[test]
    fn wrong_method_and_unknown_paths() {
        assert_eq!(
            route(&Method::GET, "/v1/explain").map_err(|e| e.status),
            Err(405)
        );
        assert_eq!(
            route(&Method::PUT, "/v1/keys").map_err(|e| e.status),
            Err(405)
        );
        assert_eq!(
            route(&Method::POST, "/v1/keys/k/burn").map_err(|e| e.status),
            Err(404)
        );
        assert_eq!(
            route(&Method::POST, "/v1/users/u/ban").map_err(|e| e.status),
            Err(404)
        );
        assert_eq!(route(&Method::GET, "/").map_err(|e| e.status), Err(404));
        assert_eq!(
            route(&Method::GET, "/v1/keys/%zz").map_err(|e| e.status),
            Err(400)
        );
    }
}
