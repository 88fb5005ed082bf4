//! The key store's behaviour, one test body run against SQLite and against PostgreSQL (a real
//! server from Debian's package, started by the test): create, find by id or key, list, revoke,
//! approve, rotate with grace, suspend, the change log "since R", one snapshot for loading, and
//! for PostgreSQL a clear, quick error while the database is down and a reconnect after. The
//! audit trail the same way: each change made as an actor recorded once in its transaction,
//! refusals after, `since` and `limit`, never a key; and an older database upgraded in place.
//! The denylist the same way: bans as changes, read back after a revision, lifted, purged.
//! Keys counted per state by the database agree with the rule applied to each key.

use std::time::{Duration, Instant};

use edgefilter::store::audit::{self, A_KEY, OK};
use edgefilter::store::postgres::PgKeyStore;
use edgefilter::store::{
    Action, Actor, AuditEntry, Ban, BanReason, ChangeSubject, KeyRef, KeyStatus, KeyStore, NewKey,
    RateLimit, SqliteStore, StoreError, UserStatus,
};

use crate::support::pg::PgFixture;
use edgefilter::names::NameKind;
use edgefilter::store::rules::{KEY_STATES, key_state};

fn new_key(tenant: &str, user: &str, pending: bool) -> NewKey {
    let key = NewKey::new(tenant, user, "live")
        .with_scopes(["a:b", "c"])
        .with_not_before(5)
        .with_expiry(1_000_000)
        .with_cidrs([
            "198.18.0.0/15".parse().unwrap(),
            "fd00:ef::/64".parse().unwrap(),
        ])
        .with_rate(7, 9);
    if pending { key.pending() } else { key }
}

/// The semantics every backend must share.
fn behaves_like_a_key_store(st: &mut dyn KeyStore) {
    assert_eq!(st.revision().unwrap(), 0);
    let made = st
        .create_keys(
            &[
                new_key("acme", "alice", false),
                new_key("acme", "bob", true),
            ],
            100,
        )
        .unwrap();
    let (a, b) = (&made[0], &made[1]);
    let r1 = st.revision().unwrap();
    assert!(r1 >= 2, "each created key is a change");

    // Lookups by id and by the full key agree; the record round-trips.
    let by_id = st.find_key(KeyRef::Id(&a.view.key.id)).unwrap().unwrap();
    let by_key = st
        .find_key(KeyRef::from_arg(a.secret.expose()))
        .unwrap()
        .unwrap();
    assert_eq!(by_id, by_key);
    assert_eq!(by_id, a.view);
    assert_eq!(by_id.key.scopes, ["a:b", "c"]);
    assert_eq!(by_id.key.allow_cidrs.len(), 2);
    assert_eq!(
        by_id.key.rate,
        Some(RateLimit {
            per_sec: 7,
            burst: 9
        })
    );
    assert_eq!(
        by_id.key.hash,
        edgefilter::store::KeyHash::of(a.secret.expose())
    );
    assert_eq!(by_id.user.tenant, "acme");
    assert!(
        st.find_key(KeyRef::Id("key_000000000000"))
            .unwrap()
            .is_none()
    );
    assert_eq!(b.view.key.status, KeyStatus::Pending);

    // A user cannot move tenants.
    assert!(matches!(
        st.create_keys(&[new_key("other", "alice", false)], 100),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(st.revision().unwrap(), r1, "a refused change logs nothing");

    // A name that breaks its rule is refused by the store itself, whoever asks, before any
    // row is written (edgefilter::names).
    for (new, kind, rule) in [
        (
            new_key("acme", "u\r\nX-Edgefilter-Tenant: root", false),
            NameKind::User,
            "control_character",
        ),
        (
            new_key("acme\0", "carol", false),
            NameKind::Tenant,
            "control_character",
        ),
        (new_key("acme", "", false), NameKind::User, "empty"),
        (
            new_key("acme", &"c".repeat(60 * 1024), false),
            NameKind::User,
            "too_long",
        ),
        (
            new_key("acme", "carol", false).with_scopes(["a b"]),
            NameKind::Scope,
            "character_not_allowed",
        ),
    ] {
        match st.create_keys(std::slice::from_ref(&new), 100) {
            Err(StoreError::InvalidName(e)) => assert_eq!((e.kind, e.rule()), (kind, rule)),
            other => panic!("{kind:?} {rule}: {other:?}"),
        }
    }
    assert_eq!(st.revision().unwrap(), r1, "a refused name logs nothing");
    assert!(
        st.find_user("carol").unwrap().is_none(),
        "and makes no user"
    );

    let listed = st.list_keys(Some("acme")).unwrap();
    assert_eq!(
        listed.iter().map(|v| &v.key.id).collect::<Vec<_>>(),
        [&a.view.key.id, &b.view.key.id],
        "oldest first"
    );
    assert!(st.list_keys(Some("nobody")).unwrap().is_empty());

    // Approve, revoke (idempotent), rotate with grace, suspend.
    let approved = st.approve(KeyRef::Id(&b.view.key.id), 110).unwrap();
    assert_eq!(approved.key.status, KeyStatus::Active);
    let revoked = st.revoke(KeyRef::from_arg(b.secret.expose()), 120).unwrap();
    assert_eq!(revoked.key.status, KeyStatus::Revoked);
    assert_eq!(revoked.key.revoked_at, Some(120));
    let r2 = st.revision().unwrap();
    st.revoke(KeyRef::Id(&b.view.key.id), 130).unwrap();
    assert_eq!(st.revision().unwrap(), r2, "revoking twice changes nothing");
    assert!(matches!(
        st.approve(KeyRef::Id(&b.view.key.id), 130),
        Err(StoreError::Conflict(_))
    ));
    let (old, new) = st
        .rotate(KeyRef::Id(&a.view.key.id), Duration::from_secs(60), 200)
        .unwrap();
    assert_eq!(old.key.grace_until, Some(260));
    assert_eq!(
        old.key.rotated_to.as_deref(),
        Some(new.view.key.id.as_str())
    );
    assert_eq!(new.view.key.expires_at, Some(200 + 1_000_000 - 100));
    assert!(matches!(
        st.rotate(KeyRef::Id(&a.view.key.id), Duration::ZERO, 201),
        Err(StoreError::Conflict(_))
    ));
    let u = st
        .set_user_status("alice", UserStatus::Suspended, 300)
        .unwrap();
    assert_eq!(u.status, UserStatus::Suspended);
    st.set_user_status("bob", UserStatus::Deleted, 300).unwrap();
    assert!(matches!(
        st.set_user_status("bob", UserStatus::Active, 301),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        st.set_user_status("nobody", UserStatus::Active, 301),
        Err(StoreError::NoSuchUser(_))
    ));

    // The change log: every change after R, in order, naming its subject.
    let since = st.changes_since(r1).unwrap();
    let subjects: Vec<_> = since.iter().map(|c| c.subject.clone()).collect();
    assert_eq!(
        subjects,
        [
            ChangeSubject::Key(b.view.key.id.clone()),
            ChangeSubject::Key(b.view.key.id.clone()),
            ChangeSubject::Key(new.view.key.id.clone()),
            ChangeSubject::Key(a.view.key.id.clone()),
            ChangeSubject::User("alice".into()),
            ChangeSubject::User("bob".into()),
        ]
    );
    assert!(since.windows(2).all(|w| w[0].revision < w[1].revision));
    let last = since.last().unwrap().revision;
    assert_eq!(st.revision().unwrap(), last);
    assert!(st.changes_since(last).unwrap().is_empty());

    // One snapshot: users first, then every key, at the current revision.
    let (mut users, mut keys) = (Vec::new(), Vec::new());
    let rev = st
        .for_each_key(&mut |u| users.push(u.clone()), &mut |k, uid| {
            keys.push((k.id.clone(), uid))
        })
        .unwrap();
    assert_eq!(rev, last);
    assert_eq!(users.len(), 2);
    assert_eq!(keys.len(), 3);
    let alice = users.iter().find(|u| u.name == "alice").unwrap();
    assert_eq!(alice.status, UserStatus::Suspended);
    assert!(keys.contains(&(a.view.key.id.clone(), alice.id)));
}

/// The audit object for a key named by `arg`, as the CLI and the control plane compute it.
fn key_object(arg: &str) -> impl Fn(&dyn KeyStore) -> String + '_ {
    move |s| audit::key_object(s, arg)
}

/// The audit trail every backend must keep. `st` holds no audit entry yet.
fn keeps_an_audit_trail(st: &mut dyn KeyStore) {
    assert!(st.audit_since(None, 100).unwrap().is_empty());
    let alice = Actor::cli("root", Some("alice"));
    let admin = Actor::admin(Some([127, 0, 0, 1].into()), None);

    // Made as an actor: one entry each, in the change's transaction.
    st.act_as(Some(alice.clone()));
    let made = st
        .create_keys(&[new_key("audit", "ann", false)], 1_000)
        .unwrap();
    let (id, key) = (
        made[0].view.key.id.clone(),
        made[0].secret.expose().to_owned(),
    );
    st.act_as(Some(admin.clone()));
    st.revoke(KeyRef::from_arg(&key), 1_010).unwrap();
    st.revoke(KeyRef::Id(&id), 1_020).unwrap();
    st.set_user_status("ann", UserStatus::Suspended, 1_030)
        .unwrap();
    st.act_as(None);
    // Without an actor nothing is recorded (bulk loads, tests).
    let quiet = st
        .create_keys(&[new_key("audit", "ben", true)], 1_040)
        .unwrap();
    let quiet_id = quiet[0].view.key.id.clone();

    // Refused: recorded after, with the error; a full key never, its id when it is known.
    let rev = st.revision().unwrap();
    let e = audit::audited(
        st,
        &admin,
        Action::KeyApprove,
        &key_object(&key),
        2_000,
        |s| s.approve(KeyRef::from_arg(&key), 2_000),
    )
    .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let unknown = "ef_live_0123456789abcdefghijABCDEFGHIJ012345";
    audit::audited(
        st,
        &admin,
        Action::KeyRevoke,
        &key_object(unknown),
        2_010,
        |s| s.revoke(KeyRef::from_arg(unknown), 2_010),
    )
    .unwrap_err();
    let nobody = |_: &dyn KeyStore| "nobody".to_owned();
    audit::audited(st, &alice, Action::UserActivate, &nobody, 2_020, |s| {
        s.set_user_status("nobody", UserStatus::Active, 2_020)
    })
    .unwrap_err();
    // Made through `audited`: recorded once, by the store.
    audit::audited(
        st,
        &alice,
        Action::KeyApprove,
        &key_object(&quiet_id),
        2_030,
        |s| s.approve(KeyRef::Id(&quiet_id), 2_030),
    )
    .unwrap();
    // A change outside the store.
    st.record_audit(&AuditEntry::ok(
        3_000,
        &admin,
        Action::AllowAdd,
        "203.0.113.0/24",
    ))
    .unwrap();
    let mut bad = AuditEntry::ok(3_000, &admin, Action::AllowAdd, "x");
    bad.object = key.clone();
    assert!(matches!(
        st.record_audit(&bad),
        Err(StoreError::BadAuditEntry(_))
    ));
    assert_eq!(
        st.revision().unwrap(),
        rev + 1,
        "entries are not changes: only the approval took a revision"
    );

    let trail = st.audit_since(None, 100).unwrap();
    let rows: Vec<(i64, &str, &str, &str, &str)> = trail
        .iter()
        .map(|e| {
            let result = if e.is_ok() {
                OK
            } else {
                e.result.split(':').next().unwrap()
            };
            (
                e.at,
                e.actor.as_str(),
                e.action.as_str(),
                e.object.as_str(),
                result,
            )
        })
        .collect();
    let (a, m) = ("cli:root (sudo alice)", "admin@127.0.0.1");
    assert_eq!(
        rows,
        [
            (1_000, a, "key.create", id.as_str(), OK),
            (1_010, m, "key.revoke", id.as_str(), OK),
            (1_020, m, "key.revoke", id.as_str(), OK),
            (1_030, m, "user.suspend", "ann", OK),
            (2_000, m, "key.approve", id.as_str(), "CONFLICT"),
            (2_010, m, "key.revoke", A_KEY, "NOT_FOUND"),
            (2_020, a, "user.activate", "nobody", "NOT_FOUND"),
            (2_030, a, "key.approve", quiet_id.as_str(), OK),
            (3_000, m, "allow.add", "203.0.113.0/24", OK),
        ]
    );
    assert!(trail.windows(2).all(|w| w[0].id < w[1].id), "{trail:?}");
    assert!(trail.iter().all(|e| e.host == audit::this_host()));
    assert!(trail[4].result.contains("is revoked"), "{:?}", trail[4]);
    let text = format!("{trail:?}");
    assert!(
        !text.contains(&key[8..]) && !text.contains(&unknown[8..]),
        "{text}"
    );

    // Since a time, and the newest N (oldest first).
    let since: Vec<i64> = st
        .audit_since(Some(2_010), 100)
        .unwrap()
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(since, [2_010, 2_020, 2_030, 3_000]);
    let newest: Vec<i64> = st
        .audit_since(None, 2)
        .unwrap()
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(newest, [2_030, 3_000]);
    assert!(st.audit_since(Some(3_001), 100).unwrap().is_empty());
}

#[test]
fn sqlite_keeps_an_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    keeps_an_audit_trail(&mut st);
}

/// A database an older build left (schema 2, before the audit trail) is upgraded in place by
/// the first open: its keys stay, the audit table is there and keeps the trail.
#[test]
fn postgres_upgrades_in_place_and_keeps_an_audit_trail() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let url = fx.postgres_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let audit_tables = |rt: &tokio::runtime::Runtime| -> i64 {
        rt.block_on(async {
            let c = edgefilter::store::postgres::connect(&url, Duration::from_secs(5))
                .await
                .unwrap();
            c.query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'audit'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
        })
    };
    rt.block_on(async {
        let mut c = edgefilter::store::postgres::connect(&url, Duration::from_secs(5))
            .await
            .unwrap();
        let v = edgefilter::store::postgres::migrate_with(
            &mut c,
            &edgefilter::store::postgres::MIGRATIONS[..2],
        )
        .await
        .unwrap();
        assert_eq!(v, 2);
        c.batch_execute(
            "INSERT INTO tenants (name, created_at) VALUES ('old', 1);
             INSERT INTO users (tenant_id, name, status, created_at, updated_at)
                 SELECT id, 'olduser', 'active', 1, 1 FROM tenants WHERE name = 'old';",
        )
        .await
        .unwrap();
    });
    assert_eq!(audit_tables(&rt), 0, "schema 2 has no audit table");
    let mut st = PgKeyStore::open(&url).unwrap();
    assert_eq!(audit_tables(&rt), 1, "the open upgraded the schema");
    assert_eq!(
        st.find_user("olduser").unwrap().map(|u| u.tenant),
        Some("old".to_owned())
    );
    keeps_an_audit_trail(&mut st);
}

#[test]
fn sqlite_behaves_like_a_key_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    behaves_like_a_key_store(&mut st);
}

#[test]
fn postgres_behaves_like_a_key_store_and_fails_clearly_when_down() {
    let Some(mut fx) = PgFixture::start() else {
        return;
    };
    let mut st = PgKeyStore::open(&fx.postgres_url()).unwrap();
    behaves_like_a_key_store(&mut st);
    // The database holds hashes only.
    let made = st
        .create_keys(&[new_key("t", "carol", false)], 400)
        .unwrap();
    let id = made[0].view.key.id.clone();
    assert!(!format!("{made:?}").contains(&made[0].secret.expose()[8..]));

    // Reopening migrates nothing and sees everything.
    let again = PgKeyStore::open(&fx.postgres_url()).unwrap();
    assert_eq!(again.revision().unwrap(), st.revision().unwrap());
    drop(again);

    // Down: a change fails quickly with a message naming the database; nothing pretends.
    fx.stop();
    let t = Instant::now();
    let err = st.revoke(KeyRef::Id(&id), 500).unwrap_err();
    let msg = err.to_string();
    eprintln!(
        "revoke while the database is down: {msg} (after {:?})",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(
            err,
            StoreError::Postgres(edgefilter::store::postgres::PgError::Unreachable(_))
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("unreachable") && msg.contains("127.0.0.1"),
        "{msg}"
    );
    assert!(st.revision().is_err());
    let lag = st.lag().unwrap();
    assert!(lag > Duration::ZERO);

    // Back: the same store reconnects by itself (its first call is a write, on a connection
    // that died with the server); the key was not revoked while down.
    fx.start_again();
    st.create_keys(&[new_key("t", "erin", false)], 550)
        .expect("the first write after the restart succeeds");
    let v = st.find_key(KeyRef::Id(&id)).unwrap().unwrap();
    assert_eq!(v.key.status, KeyStatus::Active);
    assert!(st.lag().unwrap() < lag);
    st.revoke(KeyRef::Id(&id), 600).unwrap();

    // A restart between two calls: the held connection is dead, the next write still works.
    fx.stop();
    fx.start_again();
    st.create_keys(&[new_key("t", "frank", false)], 700)
        .expect("a write on a connection that died between calls is retried on a fresh one");
    assert_eq!(
        st.find_key(KeyRef::Id(&id)).unwrap().unwrap().key.status,
        KeyStatus::Revoked
    );
}

#[test]
fn postgres_store_works_and_drops_inside_another_runtime() {
    // What an async admin handler does: call the synchronous store from a runtime thread.
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let url = fx.postgres_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut st = PgKeyStore::open(&url).unwrap();
        let made = st.create_keys(&[new_key("t", "gina", false)], 1).unwrap();
        st.revoke(KeyRef::Id(&made[0].view.key.id), 2).unwrap();
        let (mut n, mut k) = (0, 0);
        st.for_each_key(&mut |_| n += 1, &mut |_, _| k += 1)
            .unwrap();
        assert_eq!((n, k), (1, 1));
        drop(st);
    });
}

#[test]
fn postgres_notifier_wakes_on_a_commit_by_another_writer() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let mut writer = PgKeyStore::open(&fx.postgres_url()).unwrap();
    let from = writer.revision().unwrap();
    let n = PgKeyStore::notifier(&fx.postgres_url(), from).unwrap();
    let t = Instant::now();
    while !n.connected() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "notifier never connected"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !n.wait_for_change(Duration::from_millis(100)),
        "nothing changed yet"
    );
    let mut took = Vec::new();
    for i in 0..20 {
        writer
            .create_keys(&[new_key("t", "dave", false)], i)
            .unwrap();
        let t = Instant::now();
        assert!(
            n.wait_for_change(Duration::from_secs(2)),
            "no wake-up for change {i}"
        );
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "commit returned → notifier woke: p50 {:?}, max {:?}",
        took[took.len() / 2],
        took.last().unwrap()
    );
    assert!(n.lag() < Duration::from_secs(2));
    assert_eq!(n.last_revision(), writer.revision().unwrap());
    let t = Instant::now();
    for _ in 0..50 {
        writer.revision().unwrap();
    }
    eprintln!("revision() round trip: {:?}", t.elapsed() / 50);
}

#[test]
fn postgres_reopens_its_own_schema_and_refuses_a_newer_one() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let url = fx.postgres_url();
    let mut st = PgKeyStore::open(&url).unwrap();
    st.create_keys(&[new_key("acme", "alice", false)], 1)
        .unwrap();
    drop(st);
    // A database this build wrote opens again as it is.
    let st = PgKeyStore::open(&url).unwrap();
    assert_eq!(st.list_keys(None).unwrap().len(), 1);
    drop(st);
    // One from a newer edgefilter is refused, not touched.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = edgefilter::store::postgres::connect(&url, Duration::from_secs(5))
            .await
            .unwrap();
        c.execute(
            "INSERT INTO edgefilter_schema (version, name) VALUES (99, 'from the future')",
            &[],
        )
        .await
        .unwrap();
    });
    drop(rt);
    let e = PgKeyStore::open(&url).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Postgres(edgefilter::store::postgres::PgError::SchemaTooNew {
                found: 99,
                known
            }) if known == edgefilter::store::migrate::newest(edgefilter::store::postgres::MIGRATIONS)
        ),
        "{e}"
    );
}

/// The denylist every backend keeps: a ban is a change (revision, change log), read back after
/// a revision, replaced by a later ban of the same source, lifted as a tombstone, and purged.
fn keeps_a_denylist(st: &mut dyn KeyStore) {
    let now = 1_700_000_000_000_i64;
    let ban = |source: &str, reason, expires_at_ms| Ban {
        source: source.parse().unwrap(),
        reason,
        host: "edge-1".into(),
        created_at_ms: now,
        expires_at_ms,
    };
    let r0 = st.revision().unwrap();
    let v4 = ban("198.18.0.2/32", BanReason::Autoblock, now + 600_000);
    let v6 = ban("fd00:ef::/64", BanReason::Manual, now + 60_000);
    let r1 = st.put_ban(&v4).unwrap();
    let r2 = st.put_ban(&v6).unwrap();
    assert!(r0 < r1 && r1 < r2, "{r0} {r1} {r2}");
    assert_eq!(st.revision().unwrap(), r2, "a ban bumps the revision");
    let subjects: Vec<ChangeSubject> = st
        .changes_since(r0)
        .unwrap()
        .into_iter()
        .map(|c| c.subject)
        .collect();
    assert_eq!(
        subjects,
        [
            ChangeSubject::Ban("198.18.0.2".into()),
            ChangeSubject::Ban("fd00:ef::/64".into())
        ]
    );
    let all = st.bans_since(0).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].revision, &all[0].ban, all[0].lifted),
        (r1, &v4, false)
    );
    assert_eq!((all[1].revision, &all[1].ban), (r2, &v6));
    assert_eq!(st.bans_since(r1).unwrap().len(), 1);
    assert!(st.bans_since(r2).unwrap().is_empty());

    // A second ban of the source replaces the first.
    let longer = ban("198.18.0.2/32", BanReason::Manual, now + 3_600_000);
    let r3 = st.put_ban(&longer).unwrap();
    let after = st.bans_since(r2).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].revision, &after[0].ban), (r3, &longer));

    // Lifting leaves a tombstone other hosts read; a ban that does not hold cannot be lifted.
    let r4 = st.lift_ban("198.18.0.2", now + 1_000).unwrap().unwrap();
    assert!(r4 > r3);
    let lifted = st.bans_since(r3).unwrap();
    assert_eq!(lifted.len(), 1);
    assert!(lifted[0].lifted);
    assert_eq!(lifted[0].ban.expires_at_ms, now + 1_000);
    assert_eq!(st.lift_ban("198.18.0.2", now + 2_000).unwrap(), None);
    assert_eq!(st.lift_ban("198.18.0.9", now).unwrap(), None);
    assert_eq!(
        st.lift_ban("fd00:ef::/64", now + 60_000).unwrap(),
        None,
        "expired"
    );
    assert_eq!(st.revision().unwrap(), r4, "a refused lift changes nothing");

    // Purging drops what ended before the given time: the tombstone, then the expired ban.
    assert_eq!(st.purge_bans(now + 1_001).unwrap(), 1);
    assert_eq!(st.bans_since(0).unwrap().len(), 1);
    assert_eq!(st.purge_bans(now + 60_001).unwrap(), 1);
    assert!(st.bans_since(0).unwrap().is_empty());
}

#[test]
fn sqlite_keeps_a_denylist() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    keeps_a_denylist(&mut st);
}

#[test]
fn postgres_keeps_a_denylist() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let mut st = PgKeyStore::open(&fx.postgres_url()).unwrap();
    keeps_a_denylist(&mut st);
}

/// One key in every state `key_state` knows; the database's count per state
/// (`edgefilter_keys{status}`) must match the rule applied key by key, at two instants.
fn counts_keys_per_state(st: &mut dyn KeyStore) {
    let k = |user: &str| NewKey::new("acme", user, "live");
    let made = st
        .create_keys(
            &[
                k("active"),
                k("pending").pending(),
                k("early").with_not_before(5_000),
                k("old").with_expiry(150),
                k("gone"),
                k("rotating"),
                k("rotated"),
                k("paused"),
                k("erased"),
            ],
            100,
        )
        .unwrap();
    let id = |i: usize| made[i].view.key.id.clone();
    st.revoke(KeyRef::Id(&id(4)), 110).unwrap();
    st.rotate(KeyRef::Id(&id(5)), Duration::from_secs(10_000), 110)
        .unwrap();
    st.rotate(KeyRef::Id(&id(6)), Duration::from_secs(10), 110)
        .unwrap();
    st.set_user_status("paused", UserStatus::Suspended, 110)
        .unwrap();
    st.set_user_status("erased", UserStatus::Deleted, 110)
        .unwrap();

    for now in [200, 6_000] {
        let mut by_rule = std::collections::BTreeMap::<String, u64>::new();
        for v in st.list_keys(None).unwrap() {
            *by_rule.entry(key_state(&v, now).to_owned()).or_default() += 1;
        }
        let by_db: std::collections::BTreeMap<String, u64> =
            st.count_key_states(now).unwrap().into_iter().collect();
        assert_eq!(by_db, by_rule, "at {now}");
        assert!(by_db.keys().all(|s| KEY_STATES.contains(&s.as_str())));
        if now == 200 {
            for state in KEY_STATES {
                assert!(
                    by_db.contains_key(state),
                    "no key {state} at {now}: {by_db:?}"
                );
            }
        }
    }
}

#[test]
fn sqlite_counts_keys_per_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    counts_keys_per_state(&mut st);
}

#[test]
fn postgres_counts_keys_per_state() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let mut st = PgKeyStore::open(&fx.postgres_url()).unwrap();
    counts_keys_per_state(&mut st);
}

/// Credits, the same on every backend: a new key's, leases (durable, never more than is left),
/// gives back voided by a refill, refills reset to the amount, operator changes as changes, a
/// rotation moving them to the new key.
fn keeps_credits(st: &mut dyn KeyStore) {
    use edgefilter::store::{CreditChange, Refill, RefillPeriod};
    let refill = Refill {
        amount: 40,
        period: RefillPeriod::Hour,
    };
    let made = st
        .create_keys(
            &[NewKey::new("acme", "cred", "live").with_credits(150, Some(refill))],
            3_600 * 5 + 7,
        )
        .unwrap();
    let id = made[0].view.key.id.clone();
    let c = made[0].view.key.credits.unwrap();
    assert_eq!(
        (c.remaining, c.refill, c.refill_due),
        (150, Some(refill), Some(3_600 * 6))
    );
    let left = |st: &dyn KeyStore| {
        let v = st.find_key(KeyRef::Id(&id)).unwrap().unwrap();
        v.key.credits.unwrap().remaining
    };
    let l = st.lease_credits(&id, 100).unwrap().unwrap();
    assert_eq!(
        (l.granted, l.left, l.refill_due),
        (100, 50, Some(3_600 * 6))
    );
    let l = st.lease_credits(&id, 100).unwrap().unwrap();
    assert_eq!((l.granted, l.left), (50, 0));
    assert_eq!(st.lease_credits(&id, 100).unwrap().unwrap().granted, 0);
    st.return_credits(&id, 30, l.refill_due).unwrap();
    assert_eq!(left(st), 30);
    assert!(st.refill_credits(3_600 * 6 - 1).unwrap().is_empty());
    assert_eq!(
        st.refill_credits(3_600 * 6 + 1).unwrap(),
        std::slice::from_ref(&id)
    );
    assert_eq!(left(st), 40, "reset to the amount");
    st.return_credits(&id, 10, l.refill_due).unwrap();
    assert_eq!(left(st), 40, "credits held from the period before are void");
    let rev = st.revision().unwrap();
    let v = st
        .change_credits(KeyRef::Id(&id), CreditChange::Add(5), 3_600 * 6 + 2)
        .unwrap();
    assert_eq!(v.key.credits.unwrap().remaining, 45);
    assert!(st.revision().unwrap() > rev, "a change like any other");
    st.change_credits(KeyRef::Id(&id), CreditChange::Set(3), 3_600 * 6 + 3)
        .unwrap();
    assert_eq!(left(st), 3);
    let plain = st
        .create_keys(&[NewKey::new("acme", "cred", "live")], 10)
        .unwrap();
    assert_eq!(plain[0].view.key.credits, None);
    assert_eq!(st.lease_credits(&plain[0].view.key.id, 10).unwrap(), None);
    let (old, new) = st
        .rotate(KeyRef::Id(&id), Duration::from_secs(60), 3_600 * 6 + 4)
        .unwrap();
    assert_eq!(old.key.credits.unwrap().remaining, 0);
    assert_eq!(new.view.key.credits.unwrap().remaining, 3);
    assert_eq!(new.view.key.credits.unwrap().refill, Some(refill));
}

#[test]
fn sqlite_keeps_credits() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    keeps_credits(&mut st);
}

#[test]
fn postgres_keeps_credits() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let mut st = PgKeyStore::open(&fx.postgres_url()).unwrap();
    keeps_credits(&mut st);
}
