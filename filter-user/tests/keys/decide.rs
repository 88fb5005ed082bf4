//! In-process tests of the decision chain through `ShardGate`: one real key per failure mode of
//! SPEC §5, asserting code, status, hint and that no rendered output holds the key.

use std::net::IpAddr;
use std::time::Duration;

use edgefilter::auth::{KeyService, Now, ShardGate};
use edgefilter::codes::ErrorCode;
use edgefilter::config::Config;
use edgefilter::control::ControlPlane;
use edgefilter::gate::{Denial, GateRequest, Verdict};
use edgefilter::store::{KeyRef, KeyStore, NewKey, SqliteStore, UserStatus};

const CONFIG: &str = r#"
[keys]
environment = "live"
[[route]]
prefix = "/v1/"
upstream = "http://127.0.0.1:9"
scopes = ["ai:invoke"]
[[route]]
prefix = "/open/"
upstream = "http://127.0.0.1:9"
[[route]]
prefix = "/q/"
upstream = "http://127.0.0.1:9"
key_in_query = true
"#;
const V1: usize = 0;
const OPEN: usize = 1;
const Q: usize = 2;

const NOW: i64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: Config,
    store: SqliteStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(CONFIG, dir.path()).unwrap();
    let store = SqliteStore::open(&dir.path().join("var/keys.db")).unwrap();
    Fixture {
        _dir: dir,
        cfg,
        store,
    }
}

fn new_key(user: &str) -> NewKey {
    NewKey::new("acme", user, "live").with_scopes(["ai:invoke"])
}

impl Fixture {
    fn create(&mut self, k: NewKey) -> (String, String) {
        let c = self.store.create_keys(&[k], NOW - 100).unwrap().remove(0);
        (c.view.key.id.clone(), c.secret.expose().to_owned())
    }

    fn gate(&self) -> ShardGate {
        KeyService::load(&self.cfg, &self.store, 2)
            .unwrap()
            .gate(0)
            .unwrap()
    }
}

fn peer() -> IpAddr {
    "198.18.0.7".parse().unwrap()
}

fn check<'g>(
    gate: &'g mut ShardGate,
    route: usize,
    headers: &[(&str, &str)],
    query: Option<&str>,
) -> Verdict<'g> {
    check_at(gate, route, headers, query, NOW)
}

fn check_at<'g>(
    gate: &'g mut ShardGate,
    route: usize,
    headers: &[(&str, &str)],
    query: Option<&str>,
    now: i64,
) -> Verdict<'g> {
    let hs: Vec<httparse::Header<'_>> = headers
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let req = GateRequest {
        peer: peer(),
        method: "POST",
        path: "/v1/chat",
        query,
        headers: &hs,
        route,
        rules: None,
    };
    gate.check_at(&req, Now::at_secs(now))
}

/// Asserts nothing rendered from `d` holds any 8-character window of `key`'s random part.
fn assert_no_key(d: &Denial, key: &str) {
    let text = format!("{d:?} {} {}", d.message, d.hint.as_deref().unwrap_or(""));
    let body = &key[key.len() - 38..];
    for w in body.as_bytes().windows(8) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(!text.contains(w), "denial holds part of the key: {text}");
    }
}

fn denied(v: Verdict, code: ErrorCode, key: &str, hint_has: &[&str]) -> Denial {
    let Verdict::Deny(d) = v else {
        panic!("expected {code}, got {v:?}");
    };
    assert_eq!(d.code, code, "{d:?}");
    assert_no_key(&d, key);
    let hint = d.hint.clone().unwrap_or_default();
    for h in hint_has {
        assert!(hint.contains(h), "hint of {code} lacks {h:?}: {hint}");
    }
    d
}

fn allowed(v: &Verdict) -> bool {
    matches!(v, Verdict::Allow(Some(_)))
}

#[test]
fn a_good_key_is_allowed_with_its_identity() {
    let mut f = fixture();
    let (id, key) = f.create(new_key("alice"));
    let mut g = f.gate();
    let bearer = format!("Bearer {key}");
    for hs in [
        [("Authorization", bearer.as_str())],
        [("x-api-key", key.as_str())],
    ] {
        let Verdict::Allow(Some(who)) = check(&mut g, V1, &hs, None) else {
            panic!("not allowed");
        };
        assert_eq!(who.key_id, id);
        assert_eq!((who.tenant.as_str(), who.user.as_str()), ("acme", "alice"));
        assert!(!format!("{who:?}").contains(&key[8..]));
    }
    let q = format!("x=1&api_key={key}");
    assert!(allowed(&check(&mut g, Q, &[], Some(&q))));
}

#[test]
fn missing_wrong_place_malformed_checksum_environment_unknown() {
    let mut f = fixture();
    let (_, key) = f.create(new_key("alice"));
    let mut g = f.gate();
    let d = denied(
        check(&mut g, V1, &[], None),
        ErrorCode::MissingKey,
        &key,
        &["Authorization: Bearer"],
    );
    assert_eq!(d.code.status(), 401);

    let q = format!("api_key={key}");
    denied(
        check(&mut g, V1, &[], Some(&q)),
        ErrorCode::KeyInWrongPlace,
        &key,
        &[
            "query parameter",
            "Authorization: Bearer <key>",
            "X-API-Key",
        ],
    );
    denied(
        check(&mut g, V1, &[("Authorization", &key)], None),
        ErrorCode::KeyInWrongPlace,
        &key,
        &["without the `Bearer` scheme"],
    );

    let trailing = format!("{key} ");
    let d = denied(
        check(&mut g, V1, &[("X-API-Key", &trailing)], None),
        ErrorCode::MalformedKey,
        &key,
        &["trailing whitespace"],
    );
    assert_eq!(d.code.status(), 400);
    denied(
        check(&mut g, V1, &[("X-API-Key", &format!("\"{key}\""))], None),
        ErrorCode::MalformedKey,
        &key,
        &["quotes"],
    );
    let mut bang = key.clone();
    bang.replace_range(16..17, "!");
    denied(
        check(&mut g, V1, &[("X-API-Key", &bang)], None),
        ErrorCode::MalformedKey,
        &key,
        &["character 17 is '!' which is not base62"],
    );
    denied(
        check(&mut g, V1, &[("X-API-Key", &key[..key.len() - 1])], None),
        ErrorCode::MalformedKey,
        &key,
        &["45 characters long, expected 46"],
    );

    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    denied(
        check(&mut g, V1, &[("X-API-Key", &typo)], None),
        ErrorCode::KeyChecksumMismatch,
        &key,
        &["mistyped or lost"],
    );

    let (_, test_key) = f.create(NewKey::new("acme", "tess", "test").with_scopes(["ai:invoke"]));
    let mut g = f.gate();
    denied(
        check(&mut g, V1, &[("X-API-Key", &test_key)], None),
        ErrorCode::WrongEnvironment,
        &test_key,
        &["serves `live` keys", "`test` key"],
    );

    // Well-formed, right environment, not in this store.
    let mut other = fixture();
    let (_, stranger) = other.create(new_key("zed"));
    denied(
        check(&mut g, V1, &[("X-API-Key", &stranger)], None),
        ErrorCode::UnknownKey,
        &stranger,
        &["not known here"],
    );
}

#[test]
fn a_query_key_is_percent_decoded_before_it_is_checked() {
    let mut f = fixture();
    let (id, key) = f.create(new_key("alice"));
    let (_, test_key) = f.create(NewKey::new("acme", "tess", "test").with_scopes(["ai:invoke"]));
    let mut g = f.gate();
    let encode_all = |k: &str| k.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    // Every character escaped: the same key, allowed as itself.
    let q = format!("x=1&api_key={}", encode_all(&key));
    let Verdict::Allow(Some(who)) = check(&mut g, Q, &[], Some(&q)) else {
        panic!("an escaped key is not allowed");
    };
    assert_eq!(who.key_id, id);
    // `%20` and `+` are a trailing space, `%0A` a newline: the answer a trailing space gets.
    for tail in ["%20", "+", "%0A", "%09"] {
        let q = format!("api_key={key}{tail}");
        let d = denied(
            check(&mut g, Q, &[], Some(&q)),
            ErrorCode::MalformedKey,
            &key,
            &["trailing whitespace; send the key exactly as it was issued"],
        );
        assert_eq!(d.code.status(), 400);
        assert_eq!(
            d.message,
            "The API key is not in the expected format: trailing whitespace."
        );
    }
    denied(
        check(&mut g, Q, &[], Some(&format!("api_key=+{key}"))),
        ErrorCode::MalformedKey,
        &key,
        &["leading whitespace"],
    );
    denied(
        check(&mut g, Q, &[], Some(&format!("api_key=%22{key}%22"))),
        ErrorCode::MalformedKey,
        &key,
        &["quotes"],
    );
    // Not an escape: the `%` itself is the bad character.
    let bad = format!("api_key={}%zz{}", &key[..20], &key[20..]);
    denied(
        check(&mut g, Q, &[], Some(&bad)),
        ErrorCode::MalformedKey,
        &key,
        &["character 21 is '%' which is not base62"],
    );
    // Longer than any key once decoded.
    let long = format!("api_key={key}{}", "%41".repeat(30));
    denied(
        check(&mut g, Q, &[], Some(&long)),
        ErrorCode::MalformedKey,
        &key,
        &["76 characters long, expected 46"],
    );
    // The environment of a decoded key is named in the answer.
    let q = format!("api_key={}", encode_all(&test_key));
    denied(
        check(&mut g, Q, &[], Some(&q)),
        ErrorCode::WrongEnvironment,
        &test_key,
        &["serves `live` keys", "`test` key"],
    );
}

#[test]
fn revoked_rotated_not_yet_valid_expired() {
    let mut f = fixture();
    let (rid, revoked) = f.create(new_key("alice"));
    f.store.revoke(KeyRef::Id(&rid), NOW - 50).unwrap();
    let (past_id, past) = f.create(new_key("alice"));
    f.store
        .rotate(KeyRef::Id(&past_id), Duration::from_secs(10), NOW - 20)
        .unwrap();
    let (in_id, in_grace) = f.create(new_key("alice"));
    let (_, new) = f
        .store
        .rotate(KeyRef::Id(&in_id), Duration::from_secs(3600), NOW - 20)
        .unwrap();
    let (_, early) = f.create(new_key("alice").with_not_before(NOW + 3600));
    let (ex_id, expired) = f.create(new_key("alice").with_expiry(NOW - 10));
    let mut g = f.gate();

    let d = denied(
        check(&mut g, V1, &[("X-API-Key", &revoked)], None),
        ErrorCode::KeyRevoked,
        &revoked,
        &["revoked at 2027-01-15T07:59:10Z", "new key is needed"],
    );
    assert_eq!(d.key_id.as_deref(), Some(rid.as_str()));
    denied(
        check(&mut g, V1, &[("X-API-Key", &past)], None),
        ErrorCode::KeyRevoked,
        &past,
        &["was rotated", "grace period ended at 2027-01-15T07:59:50Z"],
    );
    assert!(allowed(&check(
        &mut g,
        V1,
        &[("X-API-Key", &in_grace)],
        None
    )));
    assert!(allowed(&check(
        &mut g,
        V1,
        &[("X-API-Key", new.secret.expose())],
        None
    )));
    // The same key once its grace has run out.
    denied(
        check_at(&mut g, V1, &[("X-API-Key", &in_grace)], None, NOW + 3600),
        ErrorCode::KeyRevoked,
        &in_grace,
        &["grace period ended"],
    );
    denied(
        check(&mut g, V1, &[("X-API-Key", &early)], None),
        ErrorCode::KeyNotYetValid,
        &early,
        &["is valid from 2027-01-15T09:00:00Z"],
    );
    denied(
        check(&mut g, V1, &[("X-API-Key", &expired)], None),
        ErrorCode::KeyExpired,
        &expired,
        &[
            "expired at 2027-01-15T07:59:50Z",
            &format!("edgefilter keys rotate {ex_id}"),
        ],
    );
}

#[test]
fn suspended_deleted_pending_address_scope() {
    let mut f = fixture();
    let (_, sus) = f.create(new_key("sam"));
    f.store
        .set_user_status("sam", UserStatus::Suspended, NOW)
        .unwrap();
    let (_, del) = f.create(new_key("dora"));
    f.store
        .set_user_status("dora", UserStatus::Deleted, NOW)
        .unwrap();
    let (pid, pending) = f.create(new_key("alice").pending());
    let (_, fenced) = f.create(new_key("alice").with_cidrs(["198.19.0.0/16".parse().unwrap()]));
    let (_, scoped) = f.create(new_key("alice").with_scopes(["ai:read"]));
    let mut g = f.gate();

    denied(
        check(&mut g, V1, &[("X-API-Key", &sus)], None),
        ErrorCode::UserSuspended,
        &sus,
        &["sam", "suspended", "tenant admin"],
    );
    denied(
        check(&mut g, V1, &[("X-API-Key", &del)], None),
        ErrorCode::UserDeleted,
        &del,
        &["dora", "deleted"],
    );
    let d = denied(
        check(&mut g, V1, &[("X-API-Key", &pending)], None),
        ErrorCode::SubscriptionPending,
        &pending,
        &[&format!("edgefilter keys approve {pid}"), "acme"],
    );
    assert_eq!(d.code.status(), 403);
    denied(
        check(&mut g, V1, &[("X-API-Key", &fenced)], None),
        ErrorCode::IpNotAllowed,
        &fenced,
        &["came from 198.18.0.7"],
    );
    denied(
        check(&mut g, V1, &[("X-API-Key", &scoped)], None),
        ErrorCode::ScopeMissing,
        &scoped,
        &["needs scope `ai:invoke`", "ai:read"],
    );
    // A route without scopes lets the same key through.
    assert!(allowed(&check(
        &mut g,
        OPEN,
        &[("X-API-Key", &scoped)],
        None
    )));
}

#[test]
fn rate_limited_with_retry_after_and_ratelimit_values() {
    let mut f = fixture();
    let (_, key) = f.create(new_key("alice").with_rate(2, 2));
    let svc = KeyService::load(&f.cfg, &f.store, 2).unwrap();
    let (mut g0, mut g1) = (svc.gate(0).unwrap(), svc.gate(1).unwrap());
    let hs = [("X-API-Key", key.as_str())];
    assert!(allowed(&check(&mut g0, V1, &hs, None)));
    // The second shard draws from the same budget.
    assert!(allowed(&check(&mut g1, V1, &hs, None)));
    let d = denied(
        check(&mut g0, V1, &hs, None),
        ErrorCode::RateLimited,
        &key,
        &["2 requests/s", "retry after 1 s"],
    );
    let rate = d.rate.expect("rate info");
    assert_eq!((rate.limit, rate.remaining, rate.reset_secs), (2, 0, 1));
    assert_eq!(d.code.status(), 429);
    // A second later the bucket has refilled.
    assert!(allowed(&check_at(&mut g1, V1, &hs, None, NOW + 1)));
}

#[test]
fn store_changes_reach_every_shard_through_the_inbox() {
    let mut f = fixture();
    let (id, key) = f.create(new_key("alice"));
    let mut svc = KeyService::load(&f.cfg, &f.store, 2).unwrap();
    let factory = svc.gate_factory();
    let mut gates: Vec<Box<dyn edgefilter::gate::Gate>> = (0..2).map(&factory).collect();
    let hs = [httparse::Header {
        name: "X-API-Key",
        value: key.as_bytes(),
    }];
    let req = GateRequest {
        peer: peer(),
        method: "GET",
        path: "/v1/x",
        query: None,
        headers: &hs,
        route: V1,
        rules: None,
    };
    for g in &mut gates {
        assert!(allowed(&g.check(&req)));
    }
    assert_eq!(svc.poll(&f.store).unwrap(), None);
    f.store
        .set_user_status("alice", UserStatus::Suspended, NOW)
        .unwrap();
    let rev = svc.poll(&f.store).unwrap().expect("revision moved");
    for g in &mut gates {
        let Verdict::Deny(d) = g.check(&req) else {
            panic!("still allowed")
        };
        assert_eq!(d.code, ErrorCode::UserSuspended);
    }
    assert_eq!(svc.applied(), vec![rev, rev]);
    f.store
        .set_user_status("alice", UserStatus::Active, NOW)
        .unwrap();
    f.store.revoke(KeyRef::Id(&id), NOW).unwrap();
    svc.poll(&f.store).unwrap();
    for g in &mut gates {
        let Verdict::Deny(d) = g.check(&req) else {
            panic!("still allowed")
        };
        assert_eq!(d.code, ErrorCode::KeyRevoked);
        assert_eq!(d.key_id.as_deref(), Some(id.as_str()));
    }
}

#[test]
fn credits_exhausted_after_the_rate_limit_saying_when_they_refill() {
    use edgefilter::store::{Refill, RefillPeriod};
    let mut f = fixture();
    let (id, key) = f.create(new_key("alice").with_credits(2, None));
    let refill = Refill {
        amount: 9,
        period: RefillPeriod::Day,
    };
    let (_, daily) = f.create(new_key("alice").with_credits(0, Some(refill)));
    let (_, both) = f.create(new_key("alice").with_rate(1, 1).with_credits(0, None));
    let svc = KeyService::load(&f.cfg, &f.store, 1).unwrap();
    let mut g = svc.gate(0).unwrap();
    // Before its lease a key has no credits to spend here: a lease is on its way.
    let d = denied(
        check(&mut g, V1, &[("x-api-key", &key)], None),
        ErrorCode::CreditsExhausted,
        &key,
        &["still fetching", "retry in a second"],
    );
    assert_eq!(d.rate.map(|r| r.reset_secs), Some(1));
    edgefilter::control::credits::lease_wanted(&mut f.store, &svc.credits());
    for _ in 0..2 {
        assert!(allowed(&check(&mut g, V1, &[("x-api-key", &key)], None)));
    }
    let d = denied(
        check(&mut g, V1, &[("x-api-key", &key)], None),
        ErrorCode::CreditsExhausted,
        &key,
        &[&id, "do not refill", "keys credits"],
    );
    assert_eq!(d.code.status(), 429);
    assert!(
        d.rate.is_none(),
        "no Retry-After when waiting does not help"
    );
    let d = denied(
        check(&mut g, V1, &[("x-api-key", &daily)], None),
        ErrorCode::CreditsExhausted,
        &daily,
        &["they refill at"],
    );
    assert!(d.rate.is_some_and(|r| r.reset_secs >= 1));
    // Credits given in the store by someone else (another host, SQL) reach this host's wallet
    // with the change: the key is fetching again, then allowed.
    f.store
        .change_credits(
            KeyRef::Id(&id),
            edgefilter::store::CreditChange::Add(1),
            NOW,
        )
        .unwrap();
    let mut svc = svc;
    svc.poll(&f.store).unwrap();
    denied(
        check(&mut g, V1, &[("x-api-key", &key)], None),
        ErrorCode::CreditsExhausted,
        &key,
        &["still fetching"],
    );
    edgefilter::control::credits::lease_wanted(&mut f.store, &svc.credits());
    assert!(allowed(&check(&mut g, V1, &[("x-api-key", &key)], None)));
    // SPEC §5 order: the rate limit answers first.
    denied(
        check(&mut g, V1, &[("x-api-key", &both)], None),
        ErrorCode::CreditsExhausted,
        &both,
        &[],
    );
    denied(
        check(&mut g, V1, &[("x-api-key", &both)], None),
        ErrorCode::RateLimited,
        &both,
        &[],
    );
}

#[test]
fn every_key_code_is_covered_here() {
    // Guards this file against a code added to SPEC §5 without a test above.
    let key_codes: Vec<_> = ErrorCode::ALL
        .iter()
        .take_while(|c| **c != ErrorCode::InvalidCredentials)
        .collect();
    assert_eq!(key_codes.len(), 16);
}

#[test]
fn debug_output_never_holds_the_key() {
    use edgefilter::auth::extract::extract;
    use edgefilter::auth::{Decision, decide};

    let mut f = fixture();
    let (id, key) = f.create(new_key("alice"));
    let (rid, revoked) = f.create(new_key("alice"));
    f.store.revoke(KeyRef::Id(&rid), NOW).unwrap();
    let svc = KeyService::load(&f.cfg, &f.store, 2).unwrap();
    let gate = svc.gate(0).unwrap();
    let route = edgefilter::auth::AuthRules::from_config(&f.cfg).unwrap();
    let route = &route.routes[V1];
    let mut seen = vec![format!("{svc:?} {gate:?}")];
    for k in [&key, &revoked] {
        let hs = [httparse::Header {
            name: "X-API-Key",
            value: k.as_bytes(),
        }];
        let found = extract(route, &hs, None);
        let d = decide(
            gate.cache(),
            route,
            "live",
            found,
            peer(),
            Now::at_secs(NOW),
        );
        seen.push(format!("{found:?} {d:?}"));
        if let Decision::Allow(e, _) = d {
            assert_eq!(&**e.key_id(), id);
        }
    }
    for text in &seen {
        for k in [&key, &revoked] {
            for w in k.as_bytes()[8..].windows(8) {
                let w = std::str::from_utf8(w).unwrap();
                assert!(!text.contains(w), "Debug output holds a key: {text}");
            }
        }
    }
    assert!(seen[2].contains(&rid), "{}", seen[2]);
}

#[test]
fn the_watcher_thread_carries_a_revocation_to_running_gates() {
    let mut f = fixture();
    let (id, key) = f.create(new_key("alice"));
    let mut svc = KeyService::load(&f.cfg, &f.store, 2).unwrap();
    let factory = svc.gate_factory();
    let mut gates: Vec<Box<dyn edgefilter::gate::Gate>> = (0..2).map(&factory).collect();
    let watcher_store =
        SqliteStore::open(&f.cfg.resolve(std::path::Path::new("var/keys.db"))).unwrap();
    let plane = ControlPlane::new(
        std::sync::Arc::new(f.cfg.clone()),
        svc,
        Box::new(watcher_store),
    );
    let _watcher = plane.spawn_watcher(Duration::from_millis(20), None);
    let hs = [httparse::Header {
        name: "X-API-Key",
        value: key.as_bytes(),
    }];
    let req = GateRequest {
        peer: peer(),
        method: "GET",
        path: "/v1/x",
        query: None,
        headers: &hs,
        route: V1,
        rules: None,
    };
    for g in &mut gates {
        assert!(allowed(&g.check(&req)));
    }
    f.store.revoke(KeyRef::Id(&id), NOW).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for g in &mut gates {
        loop {
            match g.check(&req) {
                Verdict::Deny(d) => {
                    assert_eq!(d.code, ErrorCode::KeyRevoked);
                    break;
                }
                Verdict::Allow(_) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "revocation never arrived"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

#[test]
fn a_changed_key_keeps_its_rate_budget() {
    let mut f = fixture();
    let (id, key) = f.create(new_key("alice").with_rate(1, 2));
    let mut svc = KeyService::load(&f.cfg, &f.store, 2).unwrap();
    let factory = svc.gate_factory();
    let mut gates: Vec<Box<dyn edgefilter::gate::Gate>> = (0..2).map(&factory).collect();
    let hs = [httparse::Header {
        name: "X-API-Key",
        value: key.as_bytes(),
    }];
    let req = GateRequest {
        peer: peer(),
        method: "GET",
        path: "/v1/x",
        query: None,
        headers: &hs,
        route: V1,
        rules: None,
    };
    assert!(allowed(&gates[0].check(&req)));
    assert!(allowed(&gates[1].check(&req)));
    // Rotating replaces the old key's record in every shard; its spent budget stays spent.
    f.store
        .rotate(
            KeyRef::Id(&id),
            Duration::from_secs(3600),
            edgefilter::store::unix_now(),
        )
        .unwrap();
    svc.poll(&f.store).unwrap().expect("revision moved");
    for g in &mut gates {
        let Verdict::Deny(d) = g.check(&req) else {
            panic!("budget was reset by the update")
        };
        assert_eq!(d.code, ErrorCode::RateLimited);
    }
}
