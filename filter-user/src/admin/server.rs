//! The admin API server: HTTP/1.1 (hyper) on `admin.listen`, bearer-token auth, JSON in and out.
//!
//! Public endpoints (`/healthz`, `/readyz`, `/metrics`) need no token; every other request is
//! authenticated before its path parameters or body are looked at, so a caller without the
//! token learns nothing and changes nothing. Request bodies are size-limited and never logged.
//! A change is made by the token's holder at the caller's address ([`Actor::admin`]), which the
//! operation records in the audit trail.
//!
//! `POST /v1/reload` is served by a hook the daemon installs ([`AdminServer::on_reload`]): the
//! reload is the daemon's to run (it owns the proxy it retunes), one at a time with `SIGHUP`'s.
//!
//! For a hand-over to another daemon (`run --takeover`) the running server pauses: it stops
//! accepting (callers wait in the socket's queue for the next daemon), answers each open
//! connection's next request (one already on its way, say) with `Connection: close`, closes the
//! connections still idle after [`PAUSE_GRACE`], and reports when none is left; the listening
//! socket itself is lent to the next daemon, which serves it from then on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ops::{
    ACTOR_HEADER, AdminOps, ApiError, AuditQuery, ListKeysQuery, OpFuture, Readiness,
};
use super::routes::{Route, decode_component, route};
use super::token::{AdminToken, TokenError};
use crate::config::Config;
use crate::store::audit::MAX_LIMIT;
use crate::store::timefmt::parse_since;
use crate::store::{Actor, unix_now};

/// Largest request body accepted (JSON requests are small).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a connection idle when the server pauses may still bring one request.
pub const PAUSE_GRACE: Duration = Duration::from_secs(1);

/// Server start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The token file could not be read or created.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// `admin.listen` could not be bound.
    #[error("admin API: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The server's runtime or thread could not be started.
    #[error("admin API: {0}")]
    Runtime(std::io::Error),
}

/// What serves `POST /v1/reload`: reloads the config on behalf of the actor and answers what
/// was applied, what needs a restart and what was refused (see [`AdminServer::on_reload`]).
pub type ReloadHook = Arc<dyn Fn(Actor) -> OpFuture<'static> + Send + Sync>;

struct State {
    token: AdminToken,
    ops: Arc<dyn AdminOps>,
    ready: Arc<Readiness>,
    /// `POST /v1/reload`, once the daemon installed it.
    reload: OnceLock<ReloadHook>,
    /// Open connections.
    open: AtomicUsize,
    /// Paused for a hand-over: every answer closes its connection.
    paused: AtomicBool,
}

/// A bound, not yet serving, admin API server.
pub struct AdminServer {
    listener: std::net::TcpListener,
    state: Arc<State>,
    accepting: tokio::sync::watch::Sender<bool>,
}

/// A server running on its own thread; dropping it stops the server.
pub struct AdminHandle {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    accepting: tokio::sync::watch::Sender<bool>,
    state: Arc<State>,
    /// A second descriptor of the listening socket, to lend to a daemon taking over.
    socket: std::net::TcpListener,
}

impl AdminHandle {
    /// Where it listens.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, to hand over to a daemon taking over.
    #[must_use]
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Stops accepting (callers wait in the socket's queue); every open connection closes after
    /// its next answer, or after [`PAUSE_GRACE`] without a request.
    pub fn pause(&self) {
        self.state.paused.store(true, Ordering::Release);
        self.accepting.send_replace(false);
    }

    /// Accepts again after [`Self::pause`] (or a paused start).
    pub fn resume(&self) {
        self.state.paused.store(false, Ordering::Release);
        self.accepting.send_replace(true);
    }

    /// Waits up to `limit` until no connection is open; whether none is.
    #[must_use]
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if self.state.open.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl AdminServer {
    /// Binds `admin.listen` with the token from `admin.token_file` (created 0600 if missing).
    ///
    /// # Errors
    /// [`ServerError`] on a token-file or bind failure.
    pub fn from_config(
        cfg: &Config,
        ops: Arc<dyn AdminOps>,
        ready: Arc<Readiness>,
    ) -> Result<Self, ServerError> {
        let token = AdminToken::load_or_create(&cfg.resolve(&cfg.admin.token_file))?;
        Self::bind(cfg.admin.listen, token, ops, ready)
    }

    /// [`Self::from_config`] on `listener`, a socket bound to `admin.listen` already (handed
    /// over by the daemon this one takes over from).
    ///
    /// # Errors
    /// [`ServerError`] on a token-file failure, or when the socket cannot be made non-blocking.
    pub fn from_config_on(
        cfg: &Config,
        listener: std::net::TcpListener,
        ops: Arc<dyn AdminOps>,
        ready: Arc<Readiness>,
    ) -> Result<Self, ServerError> {
        let token = AdminToken::load_or_create(&cfg.resolve(&cfg.admin.token_file))?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Bind {
                addr: cfg.admin.listen,
                source,
            })?;
        Ok(Self::on(listener, token, ops, ready))
    }

    fn on(
        listener: std::net::TcpListener,
        token: AdminToken,
        ops: Arc<dyn AdminOps>,
        ready: Arc<Readiness>,
    ) -> Self {
        Self {
            listener,
            state: Arc::new(State {
                token,
                ops,
                ready,
                reload: OnceLock::new(),
                open: AtomicUsize::new(0),
                paused: AtomicBool::new(false),
            }),
            accepting: tokio::sync::watch::Sender::new(true),
        }
    }

    /// Serves `POST /v1/reload` with `hook` (without one it answers 503 `RELOAD_UNAVAILABLE`).
    /// A second hook is ignored.
    #[must_use]
    pub fn on_reload(self, hook: ReloadHook) -> Self {
        let _ = self.state.reload.set(hook);
        self
    }

    /// Starts paused: [`AdminHandle::resume`] starts accepting.
    #[must_use]
    pub fn paused(self) -> Self {
        self.accepting.send_replace(false);
        self
    }

    /// Binds `addr`.
    ///
    /// # Errors
    /// [`ServerError::Bind`].
    pub fn bind(
        addr: SocketAddr,
        token: AdminToken,
        ops: Arc<dyn AdminOps>,
        ready: Arc<Readiness>,
    ) -> Result<Self, ServerError> {
        let bind = |source| ServerError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Self::on(listener, token, ops, ready))
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves on the current tokio runtime until `shutdown` resolves.
    ///
    /// # Errors
    /// [`ServerError::Runtime`] if the listener cannot be registered with the runtime.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(ServerError::Runtime)?;
        let mut accepting = self.accepting.subscribe();
        tokio::pin!(shutdown);
        loop {
            if !*accepting.borrow_and_update() {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    r = accepting.changed() => if r.is_err() { return Ok(()) },
                }
                continue;
            }
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = accepting.changed() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin API: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let state = Arc::clone(&self.state);
            let open = OpenConnection::count(&self.state);
            let mut paused = self.accepting.subscribe();
            tokio::spawn(async move {
                let _open = open;
                let svc = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                // Paused for a hand-over: the next answer closes the connection (a request on
                // its way is served); one that stays idle is closed after the grace.
                let ended = tokio::select! {
                    r = conn.as_mut() => Some(r),
                    () = until_paused(&mut paused) => None,
                };
                let ended = match ended {
                    Some(r) => r,
                    None => match tokio::time::timeout(PAUSE_GRACE, conn.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    },
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "admin API connection ended");
                }
            });
        }
    }

    /// Serves on a dedicated thread with its own current-thread runtime.
    ///
    /// # Errors
    /// [`ServerError::Runtime`] if the runtime or thread cannot be created.
    pub fn spawn(self) -> Result<AdminHandle, ServerError> {
        let addr = self.local_addr().map_err(ServerError::Runtime)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let socket = self.listener.try_clone().map_err(ServerError::Runtime)?;
        let accepting = self.accepting.clone();
        let state = Arc::clone(&self.state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("admin-api".into())
            .spawn(move || {
                let stop = async {
                    let _ = rx.await;
                };
                if let Err(e) = rt.block_on(self.serve(stop)) {
                    tracing::error!(error = %e, "admin API stopped");
                }
            })
            .map_err(ServerError::Runtime)?;
        Ok(AdminHandle {
            addr,
            stop: Some(tx),
            thread: Some(thread),
            accepting,
            state,
            socket,
        })
    }
}

/// Counts an open connection until dropped.
struct OpenConnection(Arc<State>);

impl OpenConnection {
    fn count(state: &Arc<State>) -> Self {
        state.open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(state))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once accepting is paused (never, if the server goes away first).
async fn until_paused(accepting: &mut tokio::sync::watch::Receiver<bool>) {
    if accepting.wait_for(|on| !*on).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type Resp = Response<Full<Bytes>>;

async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let request_id = request_id(&req);
    let matched = route(req.method(), req.uri().path());
    let public = matches!(&matched, Ok(r) if r.is_public());
    if !public && !authorized(&state.token, &req) {
        tracing::info!(%request_id, status = 401, "admin API: missing or wrong token");
        return error_response(&ApiError::unauthorized(), &request_id);
    }
    let result = match matched {
        Ok(r) => dispatch(state, r, actor(peer, &req), req).await,
        Err(e) => Err(e),
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => error_response(&e, &request_id),
    };
    tracing::debug!(%request_id, status = resp.status().as_u16(), "admin API request");
    let mut resp = with_request_id(resp, &request_id);
    if state.paused.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Who an authenticated request comes from: the token's holder at `peer`, and whom the caller
/// says it acts for ([`ACTOR_HEADER`]).
fn actor(peer: SocketAddr, req: &Request<Incoming>) -> Actor {
    let claim = req
        .headers()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    Actor::admin(Some(peer.ip()), claim)
}

async fn dispatch(
    state: &State,
    r: Route,
    by: Actor,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let ops = &*state.ops;
    let value = match r {
        Route::Healthz => json!({"status": "ok"}),
        Route::Readyz => {
            let (xdp, store, shards) = state.ready.parts();
            let ready = xdp && store && shards;
            let body = json!({
                "ready": ready, "xdp": xdp, "store": store, "shards": shards,
                "reasons": state.ready.reasons(),
            });
            let status = if ready { 200 } else { 503 };
            return Ok(json_response(status, &body));
        }
        Route::Metrics => {
            let mut resp = Response::new(Full::new(Bytes::from(ops.metrics())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return Ok(resp);
        }
        Route::CreateKey => {
            let body = json_body(req).await?;
            let v = ops.create_key(by, body).await?;
            return Ok(json_response(201, &v));
        }
        Route::ListKeys => ops.list_keys(list_query(req.uri().query())?).await?,
        Route::ShowKey(id) => ops.show_key(id).await?,
        Route::RevokeKey(id) => ops.revoke_key(by, id).await?,
        Route::RotateKey(id) => {
            let body = optional_json_body(req).await?;
            ops.rotate_key(by, id, body).await?
        }
        Route::ApproveKey(id) => ops.approve_key(by, id).await?,
        Route::KeyCredits(id) => ops.key_credits(by, id, json_body(req).await?).await?,
        Route::User(user, action) => ops.user_action(by, user, action).await?,
        Route::AllowList => ops.allowlist().await?,
        Route::AllowAdd => ops.allowlist_add(by, json_body(req).await?).await?,
        Route::AllowRemove => ops.allowlist_remove(by, json_body(req).await?).await?,
        Route::DenyList => ops.denylist().await?,
        Route::DenyAdd => ops.denylist_add(by, json_body(req).await?).await?,
        Route::DenyRemove => ops.denylist_remove(by, json_body(req).await?).await?,
        Route::Explain => ops.explain(json_body(req).await?).await?,
        Route::Audit => ops.audit(audit_query(req.uri().query())?).await?,
        Route::Stats => ops.stats().await?,
        Route::Reload => match state.reload.get() {
            Some(hook) => hook(by).await?,
            None => {
                return Err(ApiError::new(
                    503,
                    "RELOAD_UNAVAILABLE",
                    "This server cannot reload a config.",
                ));
            }
        },
    };
    Ok(json_response(200, &value))
}

fn authorized(token: &AdminToken, req: &Request<Incoming>) -> bool {
    let Some(v) = req.headers().get(AUTHORIZATION) else {
        return false;
    };
    let v = v.as_bytes();
    let scheme = b"bearer ";
    if v.len() <= scheme.len() || !v[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return false;
    }
    token.matches(v[scheme.len()..].trim_ascii())
}

fn list_query(q: Option<&str>) -> Result<ListKeysQuery, ApiError> {
    let mut out = ListKeysQuery::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "tenant" => out.tenant = Some(decode_component(&v.replace('+', " "))?),
            _ => {
                return Err(ApiError::bad_request("Unknown query parameter.")
                    .with_hint("GET /v1/keys accepts only `tenant`."));
            }
        }
    }
    Ok(out)
}

/// `since` (RFC 3339, or a duration back from now such as `1h`) and `limit` (1 to
/// [`MAX_LIMIT`]) of `GET /v1/audit`.
fn audit_query(q: Option<&str>) -> Result<AuditQuery, ApiError> {
    let mut out = AuditQuery::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode_component(&v.replace('+', " "))?;
        match k {
            "since" => {
                let t = parse_since(&v, unix_now()).map_err(|m| {
                    ApiError::bad_request(format!("`since`: {m}"))
                        .with_hint("An RFC 3339 time, or a duration back from now such as `1h`.")
                })?;
                out.since = Some(t);
            }
            "limit" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`limit` must be a number from 1 to {MAX_LIMIT}."
                        ))
                    })?;
                out.limit = Some(n);
            }
            _ => {
                return Err(ApiError::bad_request("Unknown query parameter.")
                    .with_hint("GET /v1/audit accepts `since` and `limit`."));
            }
        }
    }
    Ok(out)
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::payload_too_large(MAX_BODY_BYTES))
        }
        Err(_) => Err(ApiError::bad_request("The request body could not be read.")),
    }
}

async fn json_body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes = read_body(req).await?;
    parse_json(&bytes)
}

/// For endpoints whose body is optional: an empty body means all defaults.
async fn optional_json_body<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = read_body(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

/// Parses a JSON body; the error says what is wrong without echoing any value (a body may
/// hold a key). (Crate-visible for the `admin_json` fuzz target.)
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let echoes_value = ["invalid type", "invalid value", "ef_"]
            .iter()
            .any(|s| msg.contains(s));
        let safe = !echoes_value && msg.len() < 200;
        let what = if safe {
            msg
        } else {
            format!(
                "a field has the wrong type or value at line {} column {}",
                e.line(),
                e.column()
            )
        };
        ApiError::bad_request(format!("Invalid JSON body: {what}."))
            .with_hint("See docs/openapi.yaml for this endpoint's request schema.")
    })
}

fn request_id(req: &Request<Incoming>) -> String {
    let sane = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if let Some(v) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        && sane(v)
    {
        return v.to_string();
    }
    let n: u128 = rand::random();
    format!("{n:032x}")
}

fn json_response(status: u16, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(e: &ApiError, request_id: &str) -> Resp {
    let mut body = json!({"error": {
        "code": e.code,
        "message": e.message,
        "hint": e.hint,
        "request_id": request_id,
    }});
    if let (Some(field), Some(rule)) = (e.field, e.rule) {
        body["error"]["field"] = json!(field);
        body["error"]["rule"] = json!(rule);
    }
    let mut resp = json_response(e.status, &body);
    if e.status == 401 {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"edgefilter-admin\""),
        );
    }
    with_request_id(resp, request_id)
}

fn with_request_id(mut resp: Resp, request_id: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
