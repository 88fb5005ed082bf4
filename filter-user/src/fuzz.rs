//! Fuzz entry points for the parsers that read untrusted bytes: client request heads (through
//! the real `proxy::head::process`, gate included), upstream response heads, chunked bodies, API
//! keys as they arrive in a header or a query string, the admin API's JSON bodies; and the
//! config parser with its validation. Each one runs the parser on arbitrary
//! bytes and checks the invariants the proxy relies on, panicking when one breaks.
//!
//! Two drivers use them: `fuzz/` (cargo-fuzz, coverage-guided, `cargo xtask fuzz`) and
//! `tests/proxy/fuzz_replay.rs` (the checked-in corpus plus seeded random mutations, on stable, in
//! every `cargo xtask test`). Not part of the public API.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use filter_common::apikey;

use crate::auth::extract::QueryKey;
use crate::config::Config;
use crate::gate::AllowAll;
use crate::proxy::body::{BodyError, Chunked};
use crate::proxy::head::{self, Framing, HeadCtx, Step};
use crate::proxy::reqid::{IdGen, RequestId};
use crate::proxy::response::{self, RespFraming, RespStep};
use crate::proxy::route::RouteTable;

/// Routes of the request-head target: a catch-all, and a `/v1/` route that takes keys from the
/// query and injects an upstream credential (so both header rewrites are exercised).
const ROUTES: &str = "[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n\
    [[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9000\"\nkey_in_query = true\n\
    inject_header = { name = \"Authorization\", value = \"Bearer sk-upstream\" }\n";

/// Header limit of the request-head target (small, so the fuzzer reaches it).
const MAX_HEADER_BYTES: usize = 4096;
/// Body limit of the request-head and chunked targets.
const MAX_BODY_BYTES: u64 = 1 << 20;

fn routes() -> &'static RouteTable {
    static ROUTE_TABLE: OnceLock<RouteTable> = OnceLock::new();
    ROUTE_TABLE.get_or_init(|| {
        let cfg = Config::parse(ROUTES, std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("fuzz routes: {e:?}"));
        RouteTable::build(&cfg).unwrap_or_else(|e| panic!("fuzz routes: {e}"))
    })
}

/// Runs `head::process` on `buf` with a fresh id maker (so two runs are comparable).
fn process_head(buf: &[u8], trusted: bool, out: &mut Vec<u8>) -> Step {
    let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
    let trusted_net = ["198.18.0.0/15".parse().unwrap_or_else(|_| unreachable!())];
    let mut gate = AllowAll;
    let mut ids = IdGen::new(0);
    let mut ctx = HeadCtx {
        routes: routes(),
        max_header_bytes: MAX_HEADER_BYTES,
        max_body_bytes: MAX_BODY_BYTES,
        tls: false,
        peer,
        peer_text: "198.18.0.7",
        trusted_proxies: if trusted { &trusted_net } else { &[] },
        gate: &mut gate,
        gate_rules: None,
        ids: &mut ids,
    };
    out.clear();
    head::process(buf, &mut ctx, out)
}

/// Values of every header named `name` (case-insensitive) in a parsed head.
fn values<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

/// A client request head. Invariants: no panic; every length stays inside the input; a
/// forwarded head is one complete request that httparse reads back whole, carries exactly the
/// framing the proxy decided (one `Content-Length`, or `Transfer-Encoding: chunked`, never both),
/// no hop-by-hop header, the proxy's `X-Forwarded-For`, and one `X-Request-Id`; and the head
/// alone (without what followed it) gives the same answer.
pub fn request_head(data: &[u8]) {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let trusted = flags & 1 == 1;
    let mut out = Vec::new();
    match process_head(buf, trusted, &mut out) {
        Step::Partial => assert!(buf.len() < MAX_HEADER_BYTES, "partial past the limit"),
        Step::Refuse(r) => {
            if let Some(n) = r.head_len {
                assert!(
                    n <= buf.len() && n <= MAX_HEADER_BYTES,
                    "refused head_len {n}"
                );
            }
        }
        Step::Forward(p) => {
            assert!(p.head_len <= buf.len() && p.head_len <= MAX_HEADER_BYTES);
            check_forwarded(&out, p.framing);
            let mut again = Vec::new();
            match process_head(&buf[..p.head_len], trusted, &mut again) {
                Step::Forward(q) => {
                    assert_eq!(q.head_len, p.head_len);
                    assert_eq!(q.framing, p.framing);
                    // Ids the proxy makes are random per id maker: compare with ours in place.
                    let again = replace(&again, q.request_id.as_bytes(), p.request_id.as_bytes());
                    assert_eq!(again, out, "the head alone forwards differently");
                }
                other => panic!("the head alone is not forwarded: {other:?}"),
            }
        }
    }
}

/// `data` with every `from` replaced by `to`.
fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if !from.is_empty() && data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// Checks a forwarded request head against the framing the proxy decided (see [`request_head`]).
pub fn check_forwarded(out: &[u8], framing: Framing) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the head"),
        other => panic!("forwarded head does not parse: {other:?}"),
    }
    let h = req.headers;
    let lengths = values(h, "content-length");
    let encodings = values(h, "transfer-encoding");
    match framing {
        Framing::Empty => {
            assert!(encodings.is_empty(), "empty body with Transfer-Encoding");
            assert!(
                lengths.iter().all(|v| *v == b"0"),
                "empty body with a length"
            );
        }
        Framing::Length(n) => {
            assert!(encodings.is_empty(), "Content-Length and Transfer-Encoding");
            assert_eq!(lengths, [n.to_string().as_bytes()], "forwarded length");
        }
        Framing::Chunked => {
            assert!(lengths.is_empty(), "chunked with Content-Length");
            assert_eq!(encodings, [b"chunked".as_slice()], "forwarded encoding");
        }
    }
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
    ] {
        assert!(values(h, hop).is_empty(), "hop-by-hop {hop} forwarded");
    }
    assert_eq!(values(h, "x-request-id").len(), 1, "X-Request-Id count");
    assert_eq!(
        values(h, "x-forwarded-for").len(),
        1,
        "X-Forwarded-For count"
    );
    assert_eq!(values(h, "host").len(), 1, "Host count");
}

/// An upstream response head. Invariants: no panic; lengths inside the input; a final head is
/// rewritten into one complete response that httparse reads back whole, with our
/// `X-Request-Id` once, no hop-by-hop header, and no `Content-Length` beside a
/// `Transfer-Encoding`.
pub fn response_head(data: &[u8]) {
    let Some((&flags, buf)) = data.split_first() else {
        return;
    };
    let is_head = flags & 1 == 1;
    let close_client = flags & 2 == 2;
    let id = RequestId::from_caller(b"fuzz-rid").unwrap_or_else(|| unreachable!());
    let mut out = Vec::new();
    match response::process(buf, is_head, &id, close_client, &mut out) {
        RespStep::Partial => assert!(buf.len() < response::MAX_RESPONSE_HEAD),
        RespStep::Bad => {}
        RespStep::Interim(n) => {
            assert!(n <= buf.len());
            if !out.is_empty() {
                check_response(&out);
            }
        }
        RespStep::Final(h) => {
            assert!(h.head_len <= buf.len());
            check_response(&out);
            if is_head {
                assert_eq!(h.framing, RespFraming::Empty, "a HEAD answer with a body");
            }
            if h.framing == RespFraming::UntilClose {
                assert!(h.close_client && !h.reusable, "read-until-close kept open");
            }
            if close_client {
                assert!(h.close_client);
            }
        }
        RespStep::Switch(h) => {
            assert!(h.head_len <= buf.len());
            assert_eq!(h.status, 101);
            assert!(
                h.close_client && !h.reusable,
                "a switched connection kept for HTTP"
            );
            check_switch(&out);
        }
    }
}

/// Checks a rewritten `101` head: one complete head, our `X-Request-Id` once, the upstream's
/// `Upgrade` kept, `Connection: Upgrade` alone, no body framing and no other hop-by-hop header.
fn check_switch(out: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the head"),
        other => panic!("rewritten 101 does not parse: {other:?}"),
    }
    let h = resp.headers;
    assert_eq!(values(h, "x-request-id"), [b"fuzz-rid".as_slice()]);
    assert_eq!(values(h, "connection"), [b"Upgrade".as_slice()]);
    assert!(!values(h, "upgrade").is_empty(), "a 101 without Upgrade");
    for hop in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "content-length",
        "transfer-encoding",
    ] {
        assert!(values(h, hop).is_empty(), "{hop} passed on in a 101");
    }
}

/// Checks a rewritten response head (see [`response_head`]); `X-Request-Id` must be `fuzz-rid`.
pub fn check_response(out: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the head"),
        other => panic!("rewritten response does not parse: {other:?}"),
    }
    let h = resp.headers;
    assert_eq!(values(h, "x-request-id"), [b"fuzz-rid".as_slice()]);
    assert!(
        values(h, "transfer-encoding").is_empty() || values(h, "content-length").is_empty(),
        "Content-Length beside Transfer-Encoding"
    );
    for hop in ["keep-alive", "proxy-connection", "te", "upgrade", "trailer"] {
        assert!(values(h, hop).is_empty(), "hop-by-hop {hop} passed on");
    }
    assert!(
        values(h, "connection")
            .iter()
            .all(|v| v.eq_ignore_ascii_case(b"close")),
        "a Connection header other than our close"
    );
}

/// What a chunked validator made of a whole input.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Ran out of input after this many bytes, body not finished.
    More(usize),
    /// The body ended after this many bytes.
    Done(usize),
    Failed(BodyError),
}

fn feed_in_pieces(data: &[u8], cuts: &[usize]) -> Outcome {
    let mut c = Chunked::new(MAX_BODY_BYTES);
    let mut at = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        let end = end.clamp(at, data.len());
        match c.feed(&data[at..end]) {
            Err(e) => return Outcome::Failed(e),
            Ok(n) => {
                assert!(n <= end - at);
                if c.done() {
                    return Outcome::Done(at + n);
                }
                assert_eq!(n, end - at, "stopped early without finishing");
                at = end;
            }
        }
    }
    Outcome::More(at)
}

/// A chunked body. Invariants: no panic; fed whole or cut anywhere, the validator reaches the
/// same outcome (same end, same error); a finished body's bytes alone finish it again.
pub fn chunked_body(data: &[u8]) {
    let Some((&cut_seed, body)) = data.split_first() else {
        return;
    };
    let whole = feed_in_pieces(body, &[]);
    let step = usize::from(cut_seed % 7) + 1;
    let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
    assert_eq!(feed_in_pieces(body, &cuts), whole, "cut every {step} bytes");
    if let Outcome::Done(n) = whole {
        assert_eq!(feed_in_pieces(&body[..n], &[]), Outcome::Done(n));
    }
}

/// An API key as a header value and as a `?api_key=` query value. Invariants: no panic; a
/// parsed key's parts are slices of the input; a query value decodes into at most its own
/// length and, when it decodes to text, that text parses the same as the header form would.
pub fn api_key(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = apikey::parse(text) {
            assert!(text.contains(key.env()) && text.contains(key.secret()));
        }
        let decoded = QueryKey::decode(text);
        if let Ok(plain) = decoded.text() {
            assert!(plain.len() <= text.len(), "decoding grew the key");
            if !text.contains(['%', '+']) {
                assert_eq!(plain, text, "a value without escapes changed");
            }
            // The decoded value goes to the same parser as a header value: it must not panic.
            let _ = apikey::parse(plain);
        } else {
            assert!(text.len() > crate::auth::extract::QUERY_KEY_CAP);
        }
    }
}

/// A check of the layers above `config` that finds fault with every route's `upstream` and with
/// `listen.https`, so the `config` target exercises how their problems are placed on lines.
fn every_route_at_fault(cfg: &Config) -> Vec<crate::config::ValueProblem> {
    use crate::config::ValueProblem;
    let mut out: Vec<ValueProblem> = (0..cfg.routes.len())
        .map(|i| ValueProblem::in_route(i, &["route", "upstream"], "fuzz: at fault"))
        .collect();
    out.push(ValueProblem::at(&["listen", "https"], "fuzz: at fault"));
    out
}

/// The config parser and validation, from bytes (text that is not UTF-8 is no config).
/// Invariants: no panic; every problem has a message and a line inside the text (or 0); a
/// config that is valid is written out (`toml`) and reads back the same, key for key; and a
/// layer's problems (one per route here) come back among the others on lines inside the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count() + 1;
    let base = std::path::Path::new("/nonexistent-fuzz-base");
    let check_lines = |problems: &[crate::config::ConfigProblem]| {
        for p in problems {
            assert!(!p.message.trim().is_empty(), "a problem without a message");
            assert!(p.line <= lines, "line {} of {lines}: {}", p.line, p.message);
        }
    };
    match Config::parse_with(text, base, crate::daemon::CONFIG_CHECKS) {
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            check_lines(&problems);
        }
        Ok(cfg) => {
            let written = toml::to_string(&cfg)
                .unwrap_or_else(|e| panic!("a valid config cannot be written out: {e}"));
            let again = Config::parse_with(&written, base, crate::daemon::CONFIG_CHECKS)
                .unwrap_or_else(|p| panic!("a config written out does not read back: {p:?}"));
            assert_eq!(
                crate::config::keys::leaves(&cfg),
                crate::config::keys::leaves(&again),
                "a config written out reads back different"
            );
            let problems = Config::parse_with(text, base, &[every_route_at_fault])
                .expect_err("the layer's problems are reported");
            check_lines(&problems);
            assert!(
                problems.len() > cfg.routes.len(),
                "a layer's problem went missing"
            );
        }
    }
}

/// Every admin API JSON body type, parsed from the same bytes as the server parses them.
/// Invariants: no panic; a refusal is a 400 whose message and hint never repeat a key from the
/// body (anything starting `ef_`) and stay short; an explain request's `Debug` never shows its key.
pub fn admin_json(data: &[u8]) {
    use crate::admin::server::parse_json;
    use crate::admin::{
        AllowlistRequest, ApiError, CreateKeyRequest, DenylistRequest, ExplainRequest,
        RotateRequest,
    };
    let refused = |e: ApiError| {
        assert_eq!(e.status, 400, "{e}");
        let said = format!("{} {}", e.message, e.hint.unwrap_or_default());
        assert!(!said.contains("ef_"), "a refusal repeats a key: {said}");
        assert!(said.len() < 600, "a refusal of {} bytes", said.len());
    };
    if let Err(e) = parse_json::<CreateKeyRequest>(data) {
        refused(e);
    }
    if let Err(e) = parse_json::<RotateRequest>(data) {
        refused(e);
    }
    if let Err(e) = parse_json::<AllowlistRequest>(data) {
        refused(e);
    }
    if let Err(e) = parse_json::<DenylistRequest>(data) {
        refused(e);
    }
    match parse_json::<ExplainRequest>(data) {
        Err(e) => refused(e),
        Ok(req) => {
            let shown = format!("{req:?}");
            let elsewhere = format!("{:?} {:?} {:?}", req.ip, req.method, req.path);
            if req.key.len() >= 8 && !elsewhere.contains(&req.key) {
                assert!(!shown.contains(&req.key), "Debug shows the key");
            }
        }
    }
}
