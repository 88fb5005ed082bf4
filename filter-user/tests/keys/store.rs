//! The SQLite key store: hashes only, revisions and the change log, migrations, durability.

use std::time::Duration;

use edgefilter::store::{
    ChangeSubject, KeyHash, KeyRef, KeyStatus, KeyStore, NewKey, SqliteStore, StoreError,
    UserStatus,
};

fn new_key(tenant: &str, user: &str) -> NewKey {
    NewKey::new(tenant, user, "live")
        .with_scopes(["a:b", "c"])
        .with_not_before(5)
        .with_expiry(1_000_000)
        .with_cidrs([
            "198.18.0.0/15".parse().unwrap(),
            "fd00:ef::/64".parse().unwrap(),
        ])
        .with_rate(7, 9)
        .pending()
}

#[test]
fn the_database_never_holds_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep/er/keys.db");
    let mut st = SqliteStore::open(&path).unwrap();
    let made = st.create_keys(&[new_key("acme", "alice")], 100).unwrap();
    let secret = made[0].secret.expose().to_owned();
    let (_, rotated) = st
        .rotate(
            KeyRef::Id(&made[0].view.key.id),
            Duration::from_secs(60),
            200,
        )
        .unwrap();
    drop(st);
    for f in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        for s in [&secret, rotated.secret.expose()] {
            let body = &s.as_bytes()[8..];
            assert!(
                !bytes.windows(body.len()).any(|w| w == body),
                "a key is in the database files"
            );
        }
    }
    assert!(!format!("{made:?}").contains(&secret[8..]));
}

#[test]
fn records_round_trip_and_lookups_by_id_or_key_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let c = st
        .create_keys(&[new_key("acme", "alice")], 100)
        .unwrap()
        .remove(0);
    let k = &c.view.key;
    assert!(k.id.starts_with("key_") && k.id.len() == 16);
    assert_eq!(k.hash, KeyHash::of(c.secret.expose()));
    assert_eq!(k.scopes, ["a:b", "c"]);
    assert_eq!(k.allow_cidrs.len(), 2);
    assert_eq!(k.status, KeyStatus::Pending);
    assert_eq!(
        (k.not_before, k.expires_at, k.created_at),
        (Some(5), Some(1_000_000), 100)
    );
    let by_key = st
        .find_key(KeyRef::from_arg(c.secret.expose()))
        .unwrap()
        .unwrap();
    assert_eq!(by_key, c.view);
    assert_eq!(st.find_key(KeyRef::Id("key_000000000000")).unwrap(), None);
    assert_eq!(st.find_key(KeyRef::from_arg("ef_live_nope")).unwrap(), None);

    // A user belongs to one tenant; a deleted user gets no new keys.
    let err = st
        .create_keys(&[new_key("other", "alice")], 100)
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m.contains("belongs to tenant acme")));
    st.set_user_status("alice", UserStatus::Deleted, 101)
        .unwrap();
    assert!(st.create_keys(&[new_key("acme", "alice")], 102).is_err());
    assert!(
        st.set_user_status("alice", UserStatus::Active, 103)
            .is_err()
    );
    // A failed batch leaves nothing behind.
    let before = st.revision().unwrap();
    let mut bad = new_key("acme", "bob");
    bad.env = "LIVE".into();
    assert!(st.create_keys(&[new_key("acme", "bob"), bad], 104).is_err());
    assert_eq!(st.revision().unwrap(), before);
    assert_eq!(st.list_keys(None).unwrap().len(), 1);
}

#[test]
fn every_change_bumps_the_revision_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    assert_eq!(st.revision().unwrap(), 0);
    let a = st
        .create_keys(&[new_key("acme", "alice"), new_key("acme", "bob")], 10)
        .unwrap();
    assert_eq!(st.revision().unwrap(), 2);
    let id = a[0].view.key.id.clone();
    st.approve(KeyRef::Id(&id), 11).unwrap();
    st.revoke(KeyRef::Id(&id), 12).unwrap();
    st.revoke(KeyRef::Id(&id), 13).unwrap(); // idempotent: no new revision
    assert_eq!(st.revision().unwrap(), 4);
    assert!(st.approve(KeyRef::Id(&id), 14).is_err());
    assert!(st.rotate(KeyRef::Id(&id), Duration::ZERO, 14).is_err());
    st.set_user_status("bob", UserStatus::Suspended, 15)
        .unwrap();
    st.set_user_status("bob", UserStatus::Suspended, 16)
        .unwrap();
    assert_eq!(st.revision().unwrap(), 5);
    let (old, new) = st
        .rotate(KeyRef::Id(&a[1].view.key.id), Duration::from_secs(30), 20)
        .unwrap();
    assert_eq!(old.key.grace_until, Some(50));
    assert_eq!(
        old.key.rotated_to.as_deref(),
        Some(new.view.key.id.as_str())
    );
    // The replacement keeps the policy and the lifetime length.
    assert_eq!(new.view.key.scopes, old.key.scopes);
    assert_eq!(new.view.key.expires_at, Some(20 + 1_000_000 - 10));
    assert!(
        st.rotate(KeyRef::Id(&old.key.id), Duration::ZERO, 21)
            .is_err()
    );
    assert_eq!(st.revision().unwrap(), 7);

    let changes = st.changes_since(4).unwrap();
    let revs: Vec<u64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revs, [5, 6, 7]);
    assert_eq!(changes[0].subject, ChangeSubject::User("bob".into()));
    assert_eq!(
        changes[1].subject,
        ChangeSubject::Key(new.view.key.id.clone())
    );
    assert_eq!(changes[2].subject, ChangeSubject::Key(old.key.id.clone()));
    assert!(st.changes_since(7).unwrap().is_empty());

    let mut n = 0;
    let rev = st.for_each_key(&mut |_| {}, &mut |_, _| n += 1).unwrap();
    assert_eq!((n, rev), (3, 7));
}

#[test]
fn reopening_keeps_every_reported_write_and_the_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let id = {
        let mut st = SqliteStore::open(&path).unwrap();
        let c = st.create_keys(&[new_key("acme", "alice")], 1).unwrap();
        st.revoke(KeyRef::Id(&c[0].view.key.id), 2).unwrap();
        c[0].view.key.id.clone()
    };
    let st = SqliteStore::open(&path).unwrap();
    let v = st.find_key(KeyRef::Id(&id)).unwrap().unwrap();
    assert_eq!(v.key.status, KeyStatus::Revoked);
    assert_eq!(v.key.revoked_at, Some(2));
    assert_eq!(st.revision().unwrap(), 2);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, edgefilter::store::sqlite::schema::VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A database from a newer edgefilter is refused, not damaged, and the error names it.
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = SqliteStore::open(&path).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(
        matches!(&e, StoreError::Open { source, .. }
            if matches!(**source, StoreError::TooNew { found: 99, .. })),
        "{e:?}"
    );
}
