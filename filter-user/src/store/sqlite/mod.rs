//! The embedded SQLite backend: WAL, `synchronous = FULL`, one transaction per change (with its
//! audit entry when an actor is set). Its migrations are in [`schema`].

pub mod schema;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::audit::{self, Action, Actor, AuditEntry};
use super::bans::{Ban, BanReason, BanRow, source_text};
use super::ids::new_key_id;
use super::model::{
    Change, ChangeSubject, CreatedKey, KeyHash, KeyRecord, KeyRef, KeyStatus, KeyView, NewKey,
    RateLimit, User, UserStatus,
};
use super::{KeyStore, Result, StoreError, rules};

/// A key store in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    /// On whose behalf changes are made (see [`KeyStore::act_as`]).
    actor: Option<Actor>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .finish()
    }
}

const SELECT_VIEW: &str = "SELECT k.id, k.hash, k.env, k.scopes, k.not_before, k.expires_at,
        k.allow_cidrs, k.rate, k.burst, k.status, k.revoked_at, k.grace_until, k.rotated_to,
        k.created_at, u.id, u.name, u.status, t.name
     FROM keys k JOIN users u ON u.id = k.user_id JOIN tenants t ON t.id = u.tenant_id";

fn corrupt(idx: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, what.into())
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(' ').filter(|w| !w.is_empty())
}

/// Decodes the key columns 0..=13 of [`SELECT_VIEW`] / [`SCAN_KEYS`].
fn row_to_record(r: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let hash: [u8; 32] = r
        .get_ref(1)?
        .as_blob()?
        .try_into()
        .map_err(|_| corrupt(1, "hash is not 32 bytes".into()))?;
    let scopes = r.get_ref(3)?.as_str()?;
    let cidrs = r.get_ref(6)?.as_str()?;
    let allow_cidrs = words(cidrs)
        .map(|c| c.parse().map_err(|_| corrupt(6, format!("bad CIDR {c}"))))
        .collect::<rusqlite::Result<_>>()?;
    let rate = match (r.get::<_, Option<u32>>(7)?, r.get::<_, Option<u32>>(8)?) {
        (Some(per_sec), Some(burst)) => Some(RateLimit { per_sec, burst }),
        _ => None,
    };
    let status = r.get_ref(9)?.as_str()?;
    Ok(KeyRecord {
        id: r.get(0)?,
        hash: KeyHash(hash),
        env: r.get(2)?,
        scopes: words(scopes).map(str::to_owned).collect(),
        not_before: r.get(4)?,
        expires_at: r.get(5)?,
        allow_cidrs,
        rate,
        status: KeyStatus::parse(status)
            .ok_or_else(|| corrupt(9, format!("key status {status}")))?,
        revoked_at: r.get(10)?,
        grace_until: r.get(11)?,
        rotated_to: r.get(12)?,
        created_at: r.get(13)?,
    })
}

/// Every key without its user (the caller joins users in memory); user id is column 14.
const SCAN_KEYS: &str = "SELECT k.id, k.hash, k.env, k.scopes, k.not_before, k.expires_at,
        k.allow_cidrs, k.rate, k.burst, k.status, k.revoked_at, k.grace_until, k.rotated_to,
        k.created_at, k.user_id
     FROM keys k";

const SELECT_USERS: &str = "SELECT u.id, u.name, u.status, t.name FROM users u
     JOIN tenants t ON t.id = u.tenant_id";

fn row_to_user(r: &Row<'_>) -> rusqlite::Result<User> {
    let s = r.get_ref(2)?.as_str()?;
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        status: UserStatus::parse(s).ok_or_else(|| corrupt(2, format!("user status {s}")))?,
        tenant: r.get(3)?,
    })
}

fn row_to_view(r: &Row<'_>) -> rusqlite::Result<KeyView> {
    let key = row_to_record(r)?;
    let user_status = r.get_ref(16)?.as_str()?;
    Ok(KeyView {
        key,
        user: User {
            id: r.get(14)?,
            name: r.get(15)?,
            status: UserStatus::parse(user_status)
                .ok_or_else(|| corrupt(16, format!("user status {user_status}")))?,
            tenant: r.get(17)?,
        },
    })
}

/// Bumps the revision and logs the change; returns the new revision.
fn bump(tx: &Transaction<'_>, now: i64, subject: &ChangeSubject) -> Result<u64> {
    let rev: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    let (kind, name) = match subject {
        ChangeSubject::Key(id) => ("key", id),
        ChangeSubject::User(u) => ("user", u),
        ChangeSubject::Ban(source) => ("ban", source),
    };
    tx.prepare_cached("INSERT INTO changes (revision, at, kind, subject) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![rev, now, kind, name])?;
    u64::try_from(rev).map_err(|_| StoreError::Corrupt(format!("revision {rev}")))
}

fn view_by(conn: &Connection, key: KeyRef<'_>) -> Result<Option<KeyView>> {
    let v = match key {
        KeyRef::Id(id) => conn
            .prepare_cached(&format!("{SELECT_VIEW} WHERE k.id = ?1"))?
            .query_row([id], row_to_view)
            .optional()?,
        KeyRef::Hash(h) => conn
            .prepare_cached(&format!("{SELECT_VIEW} WHERE k.hash = ?1"))?
            .query_row([&h.0[..]], row_to_view)
            .optional()?,
    };
    Ok(v)
}

fn must_view(conn: &Connection, key: KeyRef<'_>) -> Result<KeyView> {
    view_by(conn, key)?.ok_or_else(|| rules::no_such_key(key))
}

fn user_by_name(conn: &Connection, name: &str) -> Result<Option<User>> {
    Ok(conn
        .prepare_cached(&format!("{SELECT_USERS} WHERE u.name = ?1"))?
        .query_row([name], row_to_user)
        .optional()?)
}

/// The user to own a new key: created (with its tenant) when new.
fn ensure_user(tx: &Transaction<'_>, tenant: &str, user: &str, now: i64) -> Result<i64> {
    if let Some(u) = user_by_name(tx, user)? {
        rules::check_key_owner(&u, tenant)?;
        return Ok(u.id);
    }
    tx.prepare_cached("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?1, ?2)")?
        .execute(params![tenant, now])?;
    let tenant_id: i64 = tx
        .prepare_cached("SELECT id FROM tenants WHERE name = ?1")?
        .query_row([tenant], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO users (tenant_id, name, status, created_at, updated_at)
         VALUES (?1, ?2, 'active', ?3, ?3)",
    )?
    .execute(params![tenant_id, user, now])?;
    Ok(tx.last_insert_rowid())
}

fn insert_key(tx: &Transaction<'_>, new: &NewKey, now: i64) -> Result<CreatedKey> {
    let (secret, hash) = rules::new_key_secret(new)?;
    let user_id = ensure_user(tx, &new.tenant, &new.user, now)?;
    let id = new_key_id();
    let rev = bump(tx, now, &ChangeSubject::Key(id.clone()))?;
    let cidrs: Vec<String> = new.allow_cidrs.iter().map(ToString::to_string).collect();
    tx.prepare_cached(
        "INSERT INTO keys (id, hash, user_id, env, scopes, not_before, expires_at, allow_cidrs,
             rate, burst, status, created_at, updated_rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        id,
        &hash.0[..],
        user_id,
        new.env,
        new.scopes.join(" "),
        new.not_before,
        new.expires_at,
        cidrs.join(" "),
        new.rate.map(|r| r.per_sec),
        new.rate.map(|r| r.burst),
        if new.pending { "pending" } else { "active" },
        now,
        i64::try_from(rev).unwrap_or(i64::MAX),
    ])?;
    Ok(CreatedKey {
        view: must_view(tx, KeyRef::Id(&id))?,
        secret,
    })
}

/// Appends `e` to the audit trail.
fn insert_audit(conn: &Connection, e: &AuditEntry) -> Result<()> {
    audit::check(e)?;
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, object, result, host)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![e.at, e.actor, e.action, e.object, e.result, e.host])?;
    Ok(())
}

/// Records, inside the change's transaction, a change made on behalf of `by` (none: nothing).
fn audit_ok(
    tx: &Transaction<'_>,
    by: Option<&Actor>,
    action: Action,
    object: &str,
    now: i64,
) -> Result<()> {
    match by {
        Some(by) => insert_audit(tx, &AuditEntry::ok(now, by, action, object)),
        None => Ok(()),
    }
}

fn row_to_audit(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        object: r.get(4)?,
        result: r.get(5)?,
        host: r.get(6)?,
    })
}

fn set_rev(tx: &Transaction<'_>, id: &str, now: i64) -> Result<()> {
    let rev = bump(tx, now, &ChangeSubject::Key(id.to_owned()))?;
    tx.execute(
        "UPDATE keys SET updated_rev = ?1 WHERE id = ?2",
        params![i64::try_from(rev).unwrap_or(i64::MAX), id],
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed, with its directory) and migrates the database at `path`.
    ///
    /// # Errors
    /// Unopenable file, failed migration, schema newer than this build.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Self { conn, actor: None })
    }
}

impl SqliteStore {
    /// Sets SQLite's page cache size (KiB) for this connection: large for bulk loads, the
    /// default (2 MiB) for a daemon that should stay small.
    ///
    /// # Errors
    /// Database failures.
    pub fn set_cache_kib(&self, kib: u32) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))?;
        Ok(())
    }
}

impl KeyStore for SqliteStore {
    fn create_keys(&mut self, new: &[NewKey], now: i64) -> Result<Vec<CreatedKey>> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(new.len());
        for n in new {
            let created = insert_key(&tx, n, now)?;
            let id = &created.view.key.id;
            audit_ok(&tx, self.actor.as_ref(), Action::KeyCreate, id, now)?;
            out.push(created);
        }
        tx.commit()?;
        Ok(out)
    }

    fn find_key(&self, key: KeyRef<'_>) -> Result<Option<KeyView>> {
        view_by(&self.conn, key)
    }

    fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyView>> {
        let sql = format!("{SELECT_VIEW} WHERE ?1 IS NULL OR t.name = ?1 ORDER BY k.rowid");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([tenant], row_to_view)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        let tx = self.conn.transaction()?;
        let v = must_view(&tx, key)?;
        if rules::revoke_changes(&v.key) {
            tx.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = ?1 WHERE id = ?2",
                params![now, v.key.id],
            )?;
            set_rev(&tx, &v.key.id, now)?;
        }
        audit_ok(&tx, self.actor.as_ref(), Action::KeyRevoke, &v.key.id, now)?;
        let v = must_view(&tx, KeyRef::Id(&v.key.id))?;
        tx.commit()?;
        Ok(v)
    }

    fn approve(&mut self, key: KeyRef<'_>, now: i64) -> Result<KeyView> {
        let tx = self.conn.transaction()?;
        let v = must_view(&tx, key)?;
        if rules::approve_changes(&v.key)? {
            tx.execute(
                "UPDATE keys SET status = 'active' WHERE id = ?1",
                [&v.key.id],
            )?;
            set_rev(&tx, &v.key.id, now)?;
        }
        audit_ok(&tx, self.actor.as_ref(), Action::KeyApprove, &v.key.id, now)?;
        let v = must_view(&tx, KeyRef::Id(&v.key.id))?;
        tx.commit()?;
        Ok(v)
    }

    fn rotate(
        &mut self,
        key: KeyRef<'_>,
        grace: Duration,
        now: i64,
    ) -> Result<(KeyView, CreatedKey)> {
        let tx = self.conn.transaction()?;
        let old = must_view(&tx, key)?;
        let k = &old.key;
        let new = rules::rotation_successor(&old, now)?;
        let created = insert_key(&tx, &new, now)?;
        tx.execute(
            "UPDATE keys SET grace_until = ?1, rotated_to = ?2 WHERE id = ?3",
            params![rules::grace_until(now, grace), created.view.key.id, k.id],
        )?;
        set_rev(&tx, &k.id, now)?;
        audit_ok(&tx, self.actor.as_ref(), Action::KeyRotate, &k.id, now)?;
        let old = must_view(&tx, KeyRef::Id(&k.id))?;
        tx.commit()?;
        Ok((old, created))
    }

    fn set_user_status(&mut self, user: &str, status: UserStatus, now: i64) -> Result<User> {
        let tx = self.conn.transaction()?;
        let u = user_by_name(&tx, user)?.ok_or_else(|| StoreError::NoSuchUser(user.into()))?;
        if rules::user_status_changes(&u, status)? {
            tx.execute(
                "UPDATE users SET status = ?1, updated_at = ?2 WHERE id = ?3",
                params![status.as_str(), now, u.id],
            )?;
            bump(&tx, now, &ChangeSubject::User(user.to_owned()))?;
        }
        let action = Action::user_status(status);
        audit_ok(&tx, self.actor.as_ref(), action, &u.name, now)?;
        tx.commit()?;
        Ok(User { status, ..u })
    }

    fn for_each_key(
        &self,
        user: &mut dyn FnMut(&User),
        key: &mut dyn FnMut(&KeyRecord, i64),
    ) -> Result<u64> {
        let tx = self.conn.unchecked_transaction()?;
        let rev = read_revision(&tx)?;
        {
            let mut stmt = tx.prepare(SELECT_USERS)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                user(&row_to_user(r)?);
            }
            let mut stmt = tx.prepare(SCAN_KEYS)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                key(&row_to_record(r)?, r.get(14)?);
            }
        }
        tx.commit()?;
        Ok(rev)
    }

    fn find_user(&self, name: &str) -> Result<Option<User>> {
        user_by_name(&self.conn, name)
    }

    fn revision(&self) -> Result<u64> {
        read_revision(&self.conn)
    }

    fn count_key_states(&self, now: i64) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare(&super::rules::count_key_states_sql(now))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row?;
            out.push((state, u64::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    fn changes_since(&self, revision: u64) -> Result<Vec<Change>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT revision, at, kind, subject FROM changes WHERE revision > ?1 ORDER BY revision",
        )?;
        let rows = stmt.query_map([i64::try_from(revision).unwrap_or(i64::MAX)], |r| {
            let kind: String = r.get(2)?;
            let subject: String = r.get(3)?;
            Ok(Change {
                revision: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                at: r.get(1)?,
                subject: match kind.as_str() {
                    "user" => ChangeSubject::User(subject),
                    "ban" => ChangeSubject::Ban(subject),
                    _ => ChangeSubject::Key(subject),
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn act_as(&mut self, actor: Option<Actor>) {
        self.actor = actor;
    }

    fn record_audit(&mut self, entry: &AuditEntry) -> Result<()> {
        insert_audit(&self.conn, entry)
    }

    fn audit_since(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at, actor, action, object, result, host FROM (
                 SELECT * FROM audit WHERE ?1 IS NULL OR at >= ?1 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![since, limit], row_to_audit)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn put_ban(&mut self, ban: &Ban) -> Result<u64> {
        let source = source_text(&ban.source);
        let tx = self.conn.transaction()?;
        let rev = bump(
            &tx,
            ban.created_at_ms / 1000,
            &ChangeSubject::Ban(source.clone()),
        )?;
        tx.prepare_cached(
            "INSERT INTO bans (source, reason, host, created_at, expires_at, lifted, revision)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
             ON CONFLICT (source) DO UPDATE SET reason = excluded.reason, host = excluded.host,
                 created_at = excluded.created_at, expires_at = excluded.expires_at,
                 lifted = 0, revision = excluded.revision",
        )?
        .execute(params![
            source,
            ban.reason.as_str(),
            ban.host,
            ban.created_at_ms,
            ban.expires_at_ms,
            i64::try_from(rev).unwrap_or(i64::MAX),
        ])?;
        tx.commit()?;
        Ok(rev)
    }

    fn lift_ban(&mut self, source: &str, now_ms: i64) -> Result<Option<u64>> {
        let tx = self.conn.transaction()?;
        let holds: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM bans WHERE source = ?1 AND lifted = 0 AND expires_at > ?2)",
            params![source, now_ms],
            |r| r.get(0),
        )?;
        if !holds {
            return Ok(None);
        }
        let rev = bump(&tx, now_ms / 1000, &ChangeSubject::Ban(source.to_owned()))?;
        tx.execute(
            "UPDATE bans SET lifted = 1, expires_at = ?2, revision = ?3 WHERE source = ?1",
            params![source, now_ms, i64::try_from(rev).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(Some(rev))
    }

    fn bans_since(&self, revision: u64) -> Result<Vec<BanRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT source, reason, host, created_at, expires_at, lifted, revision FROM bans
             WHERE revision > ?1 ORDER BY revision",
        )?;
        let rows = stmt.query_map([i64::try_from(revision).unwrap_or(i64::MAX)], |r| {
            let source: String = r.get(0)?;
            let reason: String = r.get(1)?;
            Ok(BanRow {
                revision: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
                lifted: r.get(5)?,
                ban: Ban {
                    source: crate::config::parse_cidr(&source)
                        .map_err(|m| corrupt(0, format!("ban source: {m}")))?,
                    reason: BanReason::parse(&reason)
                        .ok_or_else(|| corrupt(1, format!("ban reason {reason}")))?,
                    host: r.get(2)?,
                    created_at_ms: r.get(3)?,
                    expires_at_ms: r.get(4)?,
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn purge_bans(&mut self, before_ms: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM bans WHERE expires_at < ?1", [before_ms])?)
    }
}

fn read_revision(conn: &Connection) -> Result<u64> {
    let rev: i64 = conn.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
        r.get(0)
    })?;
    u64::try_from(rev).map_err(|_| StoreError::Corrupt(format!("revision {rev}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrate::newest;

    /// A database an older build left (before the audit trail) is upgraded in place when
    /// opened: its keys stay, the audit table is there and works.
    #[test]
    fn a_database_from_before_the_audit_trail_upgrades_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            schema::migrate_with(&mut conn, &schema::MIGRATIONS[..1]).unwrap();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, 1);
            let audit_tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'audit'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(audit_tables, 0);
        }
        {
            // An older build's store, used as it was: keys and all.
            let mut old = SqliteStore {
                conn: Connection::open(&path).unwrap(),
                actor: None,
            };
            old.create_keys(&[NewKey::new("acme", "alice", "live")], 10)
                .unwrap();
        }
        let mut st = SqliteStore::open(&path).unwrap();
        let v: i64 = st
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, i64::from(newest(schema::MIGRATIONS)));
        assert_eq!(st.list_keys(None).unwrap().len(), 1);
        assert!(st.audit_since(None, 10).unwrap().is_empty());
        let by = Actor::cli("root", None);
        st.act_as(Some(by.clone()));
        let made = st
            .create_keys(&[NewKey::new("acme", "alice", "live")], 20)
            .unwrap();
        st.act_as(None);
        st.revoke(KeyRef::Id(&made[0].view.key.id), 30).unwrap();
        let trail = st.audit_since(None, 10).unwrap();
        assert_eq!(
            trail.len(),
            1,
            "only the change made as an actor: {trail:?}"
        );
        assert_eq!(
            (
                trail[0].actor.as_str(),
                trail[0].action.as_str(),
                trail[0].object.as_str()
            ),
            ("cli:root", "key.create", made[0].view.key.id.as_str())
        );
    }
}
