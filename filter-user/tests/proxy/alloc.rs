//! Proves the per-request hot path allocates nothing: parse the head out of the read buffer,
//! match the route, call the gate, and serialise the upstream head into a reused buffer; and
//! read an LLM provider's usage report from a streamed response — counted by a `#[global_allocator]` that counts this thread's allocations.
//! The count is per thread, so the other tests of this binary, running in parallel threads,
//! neither add to it nor are slowed by more than a thread-local check per allocation.
//!
//! The counting allocator is the one `unsafe` in the test suite: `GlobalAlloc` cannot be
//! implemented without it. It only forwards to `System` and bumps a thread-local counter.
#![deny(unsafe_op_in_unsafe_fn)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};

use edgefilter::config::{AiProvider, Config};
use edgefilter::gate::{AllowAll, Gate, GateRequest, Identity, Verdict};
use edgefilter::names::{TenantName, UserName};
use edgefilter::proxy::head::{self, Framing, HeadCtx, Step};
use edgefilter::proxy::reqid::IdGen;
use edgefilter::proxy::route::RouteTable;
use edgefilter::proxy::usage::{Payload, Tokens, UsageScanner};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: the thread-locals may be gone while a thread is torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; the counter touches no allocator state.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(Cell::get)
}

/// A gate that allows with an identity lent from its own data (as the key cache lends it).
struct WithIdentity {
    key_id: String,
    tenant: TenantName,
    user: UserName,
}

impl Gate for WithIdentity {
    fn check(&mut self, req: &GateRequest<'_>) -> Verdict<'_> {
        let has_key = req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("authorization"));
        Verdict::Allow(has_key.then_some(Identity {
            key_id: &self.key_id,
            tenant: &self.tenant,
            user: &self.user,
            rate: None,
        }))
    }
}

const REQUEST: &[u8] = b"POST /v1/chat/completions?stream=true&api_key=ef_live_x HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Authorization: Bearer ef_live_0123456789abcdefghijABCDEFGHIJklmnop\r\n\
Content-Type: application/json\r\n\
X-Request-Id: req-abc.123\r\n\
Connection: keep-alive\r\n\
Content-Length: 42\r\n\r\n\
{\"model\":\"m\",\"messages\":[],\"stream\":true}";

#[test]
fn head_parse_route_gate_and_forward_serialisation_allocate_nothing() {
    let cfg = Config::parse(
        "[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n\
         [[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9000\"\nkey_in_query = true\n\
         inject_header = { name = \"Authorization\", value = \"Bearer sk-upstream\" }\n",
        std::path::Path::new("/"),
    )
    .unwrap();
    let routes = RouteTable::build(&cfg).unwrap();
    let mut ids = IdGen::new(0);
    let mut out = Vec::with_capacity(4096);
    let identity = WithIdentity {
        key_id: "key_0123456789ab".into(),
        tenant: TenantName::parse("acme").unwrap(),
        user: UserName::parse("alice").unwrap(),
    };
    let gates: [Box<dyn Gate>; 2] = [Box::new(AllowAll), Box::new(identity)];
    for mut gate in gates {
        let mut run = || {
            let mut ctx = HeadCtx {
                routes: &routes,
                max_header_bytes: 16384,
                max_body_bytes: 1 << 20,
                tls: false,
                peer: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                peer_text: "203.0.113.7",
                trusted_proxies: &[],
                gate: &mut *gate,
                gate_rules: None,
                ids: &mut ids,
            };
            head::process(REQUEST, &mut ctx, &mut out)
        };
        // Warm once, and check the result is what a forward should be.
        match run() {
            Step::Forward(p) => {
                assert_eq!(p.route, 1);
                assert_eq!(p.framing, Framing::Length(42));
                assert_eq!(p.request_id.as_str(), "req-abc.123");
            }
            other => panic!("not forwarded: {other:?}"),
        }
        let n = allocations(|| {
            for _ in 0..1000 {
                assert!(matches!(run(), Step::Forward(_)));
            }
        });
        assert_eq!(n, 0, "{n} allocations in 1000 requests");
        let sent = String::from_utf8(out.clone()).unwrap();
        assert!(sent.starts_with("POST /v1/chat/completions?stream=true HTTP/1.1\r\n"));
        assert!(sent.contains("Authorization: Bearer sk-upstream\r\n"));
        assert!(!sent.contains("ef_live_"));
    }
    // The counter itself works: an allocation is seen.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
}

#[test]
fn escaped_paths_are_checked_and_routed_on_their_decoded_form_without_allocating() {
    let cfg = Config::parse(
        "[[route]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n\
         [[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9000\"\n",
        std::path::Path::new("/"),
    )
    .unwrap();
    let routes = RouteTable::build(&cfg).unwrap();
    let mut ids = IdGen::new(0);
    let mut out = Vec::with_capacity(4096);
    let mut gate = AllowAll;
    // Escapes, a parameter and a dot in names: the full path walk, and routing on `/v1/`.
    let request = b"GET /v%31;p=1/caf%C3%A9/file.json?x=%2e%2e HTTP/1.1\r\nHost: h\r\n\
                    X_Custom: kept\r\nX_Edgefilter_User: forged\r\n\r\n";
    let mut run = || {
        let mut ctx = HeadCtx {
            routes: &routes,
            max_header_bytes: 16384,
            max_body_bytes: 1 << 20,
            tls: false,
            peer: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            peer_text: "203.0.113.7",
            trusted_proxies: &[],
            gate: &mut gate,
            gate_rules: None,
            ids: &mut ids,
        };
        head::process(request, &mut ctx, &mut out)
    };
    match run() {
        Step::Forward(p) => assert_eq!(p.route, 1),
        other => panic!("not forwarded: {other:?}"),
    }
    let n = allocations(|| {
        for _ in 0..1000 {
            assert!(matches!(run(), Step::Forward(_)));
        }
    });
    assert_eq!(n, 0, "{n} allocations in 1000 requests");
    let sent = String::from_utf8(out.clone()).unwrap();
    assert!(
        sent.contains("X_Custom: kept\r\n") && !sent.contains("forged"),
        "{sent}"
    );
}

#[test]
fn a_percent_encoded_query_key_is_decoded_and_checked_without_allocating() {
    use edgefilter::auth::{KeyService, Now};
    use edgefilter::store::{KeyStore, NewKey, SqliteStore};

    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        "[[route]]\nprefix = \"/q/\"\nupstream = \"http://127.0.0.1:9\"\nkey_in_query = true\n",
        dir.path(),
    )
    .unwrap();
    let mut store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let new = NewKey::new("acme", "alice", "live");
    let made = store.create_keys(&[new], 100).unwrap();
    let key = made[0].secret.expose().to_owned();
    let mut gate = KeyService::load(&cfg, &store, 1).unwrap().gate(0).unwrap();
    // `_` escaped, so the value must be decoded before it is checked.
    let query = format!("x=1&api_key={}", key.replace('_', "%5F"));
    let req = GateRequest {
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method: "GET",
        path: "/q/x",
        query: Some(&query),
        headers: &[],
        route: 0,
        rules: None,
    };
    let now = Now::at_secs(1_800_000_000);
    assert!(matches!(gate.check_at(&req, now), Verdict::Allow(Some(_))));
    let n = allocations(|| {
        for _ in 0..1000 {
            assert!(matches!(gate.check_at(&req, now), Verdict::Allow(Some(_))));
        }
    });
    assert_eq!(n, 0, "{n} allocations in 1000 checks");
}

#[test]
fn reading_llm_usage_from_a_chunked_event_stream_allocates_nothing() {
    // Built outside the count (the test's input), then scanned chunk by chunk: a whole
    // scanner per response and every read, none allocating.
    let mut stream = Vec::new();
    let mut events = String::new();
    for i in 0..200 {
        events.push_str(&format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"delta\":{{\"content\":\"token {i} \\\"q\\\"\"}}}}],\"usage\":null}}\n\n"
        ));
    }
    events.push_str(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n",
    );
    for piece in events.as_bytes().chunks(37) {
        stream.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        stream.extend_from_slice(piece);
        stream.extend_from_slice(b"\r\n");
    }
    stream.extend_from_slice(b"0\r\n\r\n");
    let n = allocations(|| {
        for _ in 0..100 {
            let mut scanner = UsageScanner::new(AiProvider::Openai, Payload::EventStream, true);
            for read in stream.chunks(101) {
                scanner.feed(read);
            }
            std::hint::black_box(scanner.tokens());
        }
    });
    assert_eq!(n, 0, "{n} allocations in 100 streams");
    let mut scanner = UsageScanner::new(AiProvider::Openai, Payload::EventStream, true);
    scanner.feed(&stream);
    assert_eq!(
        scanner.tokens(),
        Tokens::Reported {
            prompt: 8,
            completion: 200
        }
    );
}
