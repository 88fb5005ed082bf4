//! Request heads: parsed with httparse straight out of the connection's read buffer into a stack
//! array of borrowed headers, checked for smuggling shapes and for paths an upstream would
//! normalise (`crate::path`), routed on the path as the upstream reads it, passed to the
//! shard's gate, and serialised for the upstream into a reused buffer — without a heap
//! allocation.
//!
//! [`process`] is the whole per-request hot path before any I/O; it is public so the
//! counting-allocator test and the benches can drive it in isolation.

use std::any::Any;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use ipnet::IpNet;

use super::forward::{self, Forward, IdentitySpans, Unsafe};
pub use super::headers::Framing;
use super::headers::scan;
use super::reqid::{IdGen, RequestId};
use super::respond;
use super::route::RouteTable;
use crate::codes::{ErrorCode, Rule};
use crate::gate::{Denial, Gate, GateRequest, Identity, Verdict};
use crate::path;

/// Most request headers accepted (431 above).
pub const MAX_HEADERS: usize = 100;

/// Where the request line's method and target sit in the read buffer, for the access log
/// (offsets, so nothing is copied and nothing borrows the buffer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Line {
    method: (u32, u32),
    target: (u32, u32),
}

impl Line {
    /// The spans of `method` and `target`, both slices of `buf`.
    fn of(buf: &[u8], method: &str, target: &str) -> Self {
        let span = |s: &str| {
            let start = (s.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
            (
                u32::try_from(start).unwrap_or(0),
                u32::try_from(s.len()).unwrap_or(0),
            )
        };
        Self {
            method: span(method),
            target: span(target),
        }
    }

    fn slice(buf: &[u8], (start, len): (u32, u32)) -> &[u8] {
        let start = start as usize;
        buf.get(start..start + len as usize).unwrap_or_default()
    }

    /// The method, read back from the same buffer (before it is advanced).
    #[must_use]
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        Self::slice(buf, self.method)
    }

    /// The request target (path and query), read back from the same buffer.
    #[must_use]
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        Self::slice(buf, self.target)
    }
}

/// A request to forward: the forwarded head is already in the output buffer.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    /// Bytes of the read buffer the head used.
    pub head_len: usize,
    /// Body framing.
    pub framing: Framing,
    /// The client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// `HEAD` request (no response body).
    pub is_head: bool,
    /// A WebSocket upgrade (on a route that allows it), forwarded as one: a `101` answer
    /// turns the connection into a tunnel.
    pub upgrade: bool,
    /// Matched route index.
    pub route: usize,
    /// The request's id.
    pub request_id: RequestId,
    /// The method and target in the read buffer.
    pub line: Line,
    /// Where the caller's identity is in the forwarded head.
    pub identity: Option<IdentitySpans>,
    /// The route's target for the first attempt (its index in the route's targets).
    pub target: usize,
    /// The pooled credential value for the first attempt.
    pub credential: Option<usize>,
    /// Where the forwarded head's values are (a retry rewrites `Host` and the credential).
    pub written: forward::Written,
    /// The method is idempotent (RFC 9110 §9.2.2): sending it twice acts once.
    pub idempotent: bool,
    /// The key's rate limit after this request, for the answer's `RateLimit` fields.
    pub rate: Option<crate::gate::RateInfo>,
}

/// A request answered by the proxy itself.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Bytes of the head, when it could be parsed (`None`: the connection must close).
    pub head_len: Option<usize>,
    /// Body framing, when known.
    pub framing: Framing,
    /// The client wants the connection kept open.
    pub keep_alive: bool,
    /// The request's id.
    pub request_id: RequestId,
    /// The matched route, when routing got that far.
    pub route: Option<usize>,
    /// The method and target in the read buffer, when the head was parsed.
    pub line: Option<Line>,
    /// Why.
    pub denial: Denial,
    /// For `BAD_REQUEST`: the rule broken.
    pub rule: Option<Rule>,
}

/// What to do with the bytes read so far.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and matched at once; boxing `Prepared` would put a heap \
              allocation on the hot path, which allocates nothing"
)]
pub enum Step {
    /// The head is incomplete: read more.
    Partial,
    /// Forward; the upstream head is in `out`.
    Forward(Prepared),
    /// Answer with an error.
    Refuse(Box<Refusal>),
}

/// Everything [`process`] needs besides the bytes.
pub struct HeadCtx<'a> {
    /// Compiled routes.
    pub routes: &'a RouteTable,
    /// `limits.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `limits.max_body_bytes`.
    pub max_body_bytes: u64,
    /// The connection is TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// The socket peer.
    pub peer: IpAddr,
    /// `peer` as text (formatted once per connection, for `X-Forwarded-For`).
    pub peer_text: &'a str,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: &'a [IpNet],
    /// The shard's gate.
    pub gate: &'a mut dyn Gate,
    /// The gate's rules for `routes` (`None`: the gate's own).
    pub gate_rules: Option<&'a (dyn Any + Send + Sync)>,
    /// The shard's id maker.
    pub ids: &'a mut IdGen,
}

/// Parses, checks, routes, gates and serialises one request head from `buf`.
pub fn process(buf: &[u8], ctx: &mut HeadCtx<'_>, out: &mut Vec<u8>) -> Step {
    // Uninitialised: zeroing 100 headers per request would cost more than parsing them.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n <= ctx.max_header_bytes => n,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return refuse_head_too_large(ctx);
        }
        Ok(httparse::Status::Partial) if buf.len() < ctx.max_header_bytes => {
            return Step::Partial;
        }
        Ok(httparse::Status::Partial) => return refuse_head_too_large(ctx),
        Err(_) => return refuse(ctx, ErrorCode::BadRequest, Some(Rule::HeadSyntax)),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return refuse(ctx, ErrorCode::BadRequest, Some(Rule::HeadSyntax));
    };
    let scan = match scan(req.headers) {
        Ok(scan) => scan,
        Err(rule) => return refuse(ctx, ErrorCode::BadRequest, Some(rule)),
    };
    let line = Line::of(buf, method, target);
    let request_id = scan
        .request_id
        .and_then(RequestId::from_caller)
        .unwrap_or_else(|| ctx.ids.next_id());
    let keep_alive = if version == 1 {
        !scan.close
    } else {
        scan.keep_alive && !scan.close
    };
    let framing = match (scan.chunked, scan.content_length) {
        // Chunked framing does not exist in HTTP/1.0: a 1.0 request claiming it is faulty.
        (true, _) if version == 0 => return refuse_bad(request_id, Rule::ChunkedInHttp10),
        (true, Some(_)) => return refuse_bad(request_id, Rule::LengthWithChunked),
        (true, None) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    let max_body_bytes = ctx.max_body_bytes;
    let refuse_here = |code, rule| {
        let mut denial = Denial::new(code);
        if code == ErrorCode::PayloadTooLarge {
            denial.hint = Some(respond::body_limit_hint(max_body_bytes));
        }
        Step::Refuse(Box::new(Refusal {
            head_len: Some(head_len),
            framing,
            keep_alive,
            request_id,
            route: None,
            line: Some(line),
            denial,
            rule,
        }))
    };
    if version == 1 && scan.host.is_none() {
        return refuse_here(ErrorCode::BadRequest, Some(Rule::HostMissing));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if let Err(rule) = path::check(path, query) {
        return refuse_here(ErrorCode::BadRequest, Some(rule));
    }
    if matches!(framing, Framing::Length(n) if n > ctx.max_body_bytes) {
        return refuse_here(ErrorCode::PayloadTooLarge, None);
    }
    let Some(route) = ctx.routes.find(path) else {
        return refuse_here(ErrorCode::NoRoute, None);
    };
    // A WebSocket opening handshake (RFC 6455 §4.1); any other `Upgrade` is dropped as
    // hop-by-hop and the request forwarded as plain HTTP.
    let upgrade =
        method == "GET" && version == 1 && scan.connection_upgrade && scan.upgrade_websocket;
    // A refusal of a routed request whose head was understood (the connection may go on).
    let refuse_routed = |request_id, denial, rule| {
        Step::Refuse(Box::new(Refusal {
            head_len: Some(head_len),
            framing,
            keep_alive,
            request_id,
            route: Some(route),
            line: Some(line),
            denial,
            rule,
        }))
    };
    if upgrade && !ctx.routes.routes[route].websocket {
        let rule = Some(Rule::WebsocketNotAllowed);
        return refuse_routed(request_id, Denial::new(ErrorCode::BadRequest), rule);
    }
    let trusted = ctx.trusted_proxies.iter().any(|n| n.contains(&ctx.peer));
    let peer = client_ip(ctx.peer, trusted, scan.xff);
    let verdict = ctx.gate.check(&GateRequest {
        peer,
        method,
        path,
        query,
        headers: req.headers,
        route,
        rules: ctx.gate_rules,
    });
    let identity = match verdict {
        Verdict::Allow(id) => id,
        Verdict::Deny(denial) => return refuse_routed(request_id, denial, None),
    };
    let r = &ctx.routes.routes[route];
    let target = r.targets.pick(0).map_or(0, |(i, _)| i);
    let credential = match r.credentials.as_ref().map(|c| c.pick(0)) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(exhausted)) => {
            let denial = exhausted.denial(identity.map(|id| id.key_id));
            return refuse_routed(request_id, denial, None);
        }
    };
    let written = forward::write_head(
        out,
        &Forward {
            method,
            path,
            query,
            headers: req.headers,
            scan: &scan,
            route: r,
            authority: &r.targets.all()[target].endpoint.authority,
            credential: r
                .credentials
                .as_ref()
                .zip(credential)
                .map(|(c, i)| (c.name.as_str(), c.value(i))),
            peer: ctx.peer_text,
            trusted,
            tls: ctx.tls,
            request_id: &request_id,
            identity,
            framing,
            http10: version == 0,
            upgrade,
        },
    );
    let written = match written {
        Ok(written) => written,
        Err(unsafe_field) => {
            out.clear();
            return refuse_routed(request_id, unsafe_denial(unsafe_field, identity), None);
        }
    };
    Step::Forward(Prepared {
        head_len,
        framing,
        keep_alive,
        expect_continue: scan.expect_continue,
        is_head: method == "HEAD",
        upgrade,
        route,
        request_id,
        line,
        identity: written.identity,
        target,
        credential,
        written,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        rate: identity.and_then(|id| id.rate),
    })
}

/// A refusal before the head was understood: the connection closes after it.
fn refuse(ctx: &mut HeadCtx<'_>, code: ErrorCode, rule: Option<Rule>) -> Step {
    refuse_id(ctx.ids.next_id(), code, rule)
}

/// `HEADERS_TOO_LARGE`, its hint stating the limits; the connection closes after it.
fn refuse_head_too_large(ctx: &mut HeadCtx<'_>) -> Step {
    let Step::Refuse(mut r) = refuse(ctx, ErrorCode::HeadersTooLarge, None) else {
        unreachable!("refuse always refuses")
    };
    r.denial.hint = Some(respond::head_limit_hint(ctx.max_header_bytes, MAX_HEADERS));
    Step::Refuse(r)
}

/// A `BAD_REQUEST` for `rule` whose framing cannot be trusted: the connection closes after it.
fn refuse_bad(request_id: RequestId, rule: Rule) -> Step {
    refuse_id(request_id, ErrorCode::BadRequest, Some(rule))
}

fn refuse_id(request_id: RequestId, code: ErrorCode, rule: Option<Rule>) -> Step {
    Step::Refuse(Box::new(Refusal {
        head_len: None,
        framing: Framing::Empty,
        keep_alive: false,
        request_id,
        route: None,
        line: None,
        denial: Denial::new(code),
        rule,
    }))
}

/// The answer when the head writer refused a field (a value the proxy adds holds a control
/// byte): `INTERNAL`, naming the header, and one error line for the operator (the header and
/// the key id, never the value).
fn unsafe_denial(field: Unsafe, identity: Option<Identity<'_>>) -> Denial {
    // A key id that is itself the unsafe value is neither logged nor answered.
    let key_id = identity
        .map(|id| id.key_id)
        .filter(|_| field.0 != "X-Edgefilter-Key-Id");
    tracing::error!(
        header = field.0,
        key_id = key_id.unwrap_or("-"),
        "not forwarded: a value the proxy adds holds a byte not allowed in a header (CR, LF, NUL \
         or another control character); correct it where it is stored or configured"
    );
    let mut denial = Denial::new(ErrorCode::Internal);
    denial.hint = Some(format!(
        "The value of {} that the edge adds holds a character not allowed in a header; nothing \
         was forwarded. The operator must correct it.",
        field.0
    ));
    denial.key_id = key_id.map(std::sync::Arc::from);
    denial
}

/// The client address the gate sees: the socket peer, or behind a trusted proxy the right-most
/// `X-Forwarded-For` entry.
fn client_ip(peer: IpAddr, trusted: bool, xff: Option<&str>) -> IpAddr {
    if trusted
        && let Some(xff) = xff
        && let Some(Ok(ip)) = xff.rsplit(',').next().map(|s| s.trim().parse())
    {
        return ip;
    }
    peer
}
