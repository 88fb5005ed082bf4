//! The real `edgefilter` binary against a temp config and SQLite store: keys and users commands,
//! `explain` for each failure mode, JSON shapes, exit codes, durability, no secret echoed, and
//! the audit trail those commands leave (`edgefilter audit`).

use std::path::PathBuf;
use std::process::{Command, Output};

use edgefilter::store::{Action, Actor, AuditEntry, KeyRef, KeyStore, SqliteStore};
use serde_json::Value;

const CONFIG: &str = r#"
[store]
kind = "sqlite"
path = "var/keys.db"
[keys]
environment = "live"
[[route]]
prefix = "/v1/"
upstream = "http://127.0.0.1:9"
scopes = ["ai:invoke"]
"#;

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    /// Every key this test has seen; no later output may hold one.
    pub(crate) keys: Vec<String>,
}

impl Env {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ef.toml"), CONFIG).unwrap();
        Self {
            dir,
            keys: Vec::new(),
        }
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("ef.toml")
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("EDGEFILTER_CONFIG")
            .env_remove("SUDO_USER")
            .env(edgefilter::xdp::PIN_DIR_ENV, self.dir.path().join("pins"))
            .output()
            .unwrap();
        crate::support::leaks::scan_cli(args, &out);
        out
    }

    /// Runs and returns (exit code, stdout + stderr), asserting no known key is in the output
    /// unless `may_print` names it.
    pub(crate) fn out(&self, args: &[&str], may_print: Option<&str>) -> (i32, String) {
        let o = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        for k in &self.keys {
            if Some(k.as_str()) != may_print {
                assert!(
                    !text.contains(&k[8..]),
                    "`{}` printed a key:\n{text}",
                    args.join(" ").replace(k, "<key>")
                );
            }
        }
        (o.status.code().unwrap(), text)
    }

    pub(crate) fn create(&mut self, extra: &[&str]) -> (String, String) {
        let mut args = vec!["keys", "create", "--tenant", "acme", "--json"];
        args.extend_from_slice(extra);
        let (rc, text) = self.out(&args, None);
        assert_eq!(rc, 0, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let key = v["key"].as_str().unwrap().to_owned();
        self.keys.push(key.clone());
        (v["id"].as_str().unwrap().to_owned(), key)
    }

    pub(crate) fn explain(&self, key: &str, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["explain", "--key", key];
        args.extend_from_slice(extra);
        self.out(&args, None)
    }
}

#[test]
fn create_prints_the_key_once_and_list_show_never_do() {
    let mut env = Env::new();
    let (id, key) = env.create(&[
        "--user",
        "alice",
        "--scope",
        "ai:invoke",
        "--expires",
        "90d",
        "--rate",
        "5/s",
        "--allow-cidr",
        "198.18.0.0/15",
    ]);
    assert!(id.starts_with("key_") && id.len() == 16);
    assert!(key.starts_with("ef_live_") && key.len() == 46);

    // Plain create prints the key on its first line and the id.
    let o = env.run(&["keys", "create", "--tenant", "acme", "--user", "bob"]);
    let text = String::from_utf8(o.stdout).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    assert!(first.starts_with("ef_live_"));
    assert!(text.contains("id: key_"));
    env.keys.push(first);

    let (rc, list) = env.out(&["keys", "list", "--json"], None);
    assert_eq!(rc, 0);
    let arr: Value = serde_json::from_str(&list).unwrap();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    for field in [
        "id",
        "tenant",
        "user",
        "status",
        "env",
        "scopes",
        "expires_at",
        "created_at",
    ] {
        assert!(arr[0].get(field).is_some(), "list lacks {field}");
    }
    assert!(arr[0].get("key").is_none());
    assert_eq!(arr[0]["scopes"], serde_json::json!(["ai:invoke"]));
    assert_eq!(
        (&arr[0]["rate"], &arr[0]["burst"]),
        (&serde_json::json!(5), &serde_json::json!(5))
    );
    assert!(arr[0]["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(arr[1]["expires_at"], Value::Null);

    let (rc, table) = env.out(&["keys", "list", "--tenant", "acme"], None);
    assert_eq!(rc, 0);
    assert!(table.contains(&id));
    let (_, none) = env.out(&["keys", "list", "--tenant", "nobody", "--json"], None);
    assert_eq!(none.trim(), "[]");

    // Show by id and by the full key name the same key and never print it.
    let (rc, by_id) = env.out(&["keys", "show", &id, "--json"], None);
    assert_eq!(rc, 0);
    let (rc, by_key) = env.out(&["keys", "show", &key, "--json"], None);
    assert_eq!(rc, 0);
    assert_eq!(by_id, by_key);
    let (rc, text) = env.out(&["keys", "show", &key], None);
    assert_eq!(rc, 0);
    assert!(text.contains(&id) && text.contains("198.18.0.0/15"));
}

#[test]
fn exit_codes() {
    let env = Env::new();
    assert_eq!(env.out(&["keys", "show", "key_000000000000"], None).0, 1);
    assert_eq!(env.out(&["keys", "revoke", "key_000000000000"], None).0, 1);
    assert_eq!(env.out(&["users", "suspend", "ghost"], None).0, 1);
    for bad in [
        &[
            "keys", "create", "--tenant", "a", "--user", "b", "--rate", "fast",
        ][..],
        &[
            "keys",
            "create",
            "--tenant",
            "a",
            "--user",
            "b",
            "--expires",
            "someday",
        ],
        &[
            "keys", "create", "--tenant", "a", "--user", "b", "--burst", "3",
        ],
        &["keys", "create", "--tenant", "a"],
        &["keys", "rotate", "key_000000000000", "--grace", "forever"],
        &["keys", "frobnicate"],
        &["explain"],
    ] {
        assert_eq!(env.out(bad, None).0, 2, "{bad:?}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .args(["--config", "/nonexistent/ef.toml", "keys", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_reported_write_is_in_the_store_after_reopening() {
    let mut env = Env::new();
    let (id, key) = env.create(&["--user", "alice"]);
    assert_eq!(env.out(&["keys", "revoke", &key], None).0, 0);
    let st = SqliteStore::open(&env.dir.path().join("var/keys.db")).unwrap();
    let v = st.find_key(KeyRef::from_arg(&key)).unwrap().unwrap();
    assert_eq!(v.key.id, id);
    assert_eq!(v.key.status.as_str(), "revoked");
    let (rc, text) = env.explain(&key, &[]);
    assert_eq!(rc, 1);
    assert!(
        text.contains("KEY_REVOKED") && text.contains("revoked at"),
        "{text}"
    );
}

#[test]
fn explain_names_the_check_and_the_fix_for_each_failure() {
    let mut env = Env::new();
    let (good_id, good) = env.create(&["--user", "alice", "--scope", "ai:invoke"]);
    let (rc, text) = env.explain(&good, &["--path", "/v1/chat", "--method", "POST"]);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains(&format!("verdict: ALLOW as {good_id}")));
    assert_eq!(text.matches("PASS").count(), 17, "{text}");

    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec![format!("{good} ")],
            "MALFORMED_KEY",
            "trailing whitespace",
        ),
        (
            vec![good.replace("ef_live", "ef_test")],
            "KEY_CHECKSUM_MISMATCH",
            "mistyped",
        ),
        (
            vec![good[..good.len() - 2].to_owned()],
            "MALFORMED_KEY",
            "characters long",
        ),
    ];
    for (args, code, why) in cases {
        let (rc, text) = env.explain(&args[0], &[]);
        assert_eq!(rc, 1);
        assert!(
            text.contains(&format!("{code} 400")) || text.contains(&format!("{code} 401")),
            "{text}"
        );
        assert!(text.contains(why), "{text}");
        assert!(text.contains("<- the answer"));
    }

    let (test_id, test_key) = env.create(&["--user", "tess", "--env", "test"]);
    let (rc, text) = env.explain(&test_key, &[]);
    assert_eq!(rc, 1);
    assert!(
        text.contains("WRONG_ENVIRONMENT")
            && text.contains(&format!("keys create --like {test_id} --env live")),
        "{text}"
    );

    // A key cannot be made expired (an expiry in the past is refused): one that expires in a
    // second, a little later.
    let (exp_id, expired) = env.create(&["--user", "alice", "--expires", "1s"]);
    let (_, shown) = env.out(&["keys", "show", &exp_id, "--json"], None);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let until = shown["expires_at"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (rc, text) = env.explain(&expired, &[]);
    assert_eq!(rc, 1);
    assert!(
        text.contains("KEY_EXPIRED") && text.contains(&until),
        "{text}"
    );
    // It had a lifetime (a second): a rotation gives a new key with one.
    assert!(
        text.contains(&format!("fix: edgefilter keys rotate {exp_id}")),
        "{text}"
    );

    let (_, early) = env.create(&["--user", "alice", "--not-before", "30d"]);
    let (rc, text) = env.explain(&early, &[]);
    assert_eq!(rc, 1);
    assert!(text.contains("KEY_NOT_YET_VALID") && text.contains("is valid from"));

    let (pid, pending) = env.create(&["--user", "alice", "--pending"]);
    let (rc, text) = env.explain(&pending, &[]);
    assert_eq!(rc, 1);
    assert!(
        text.contains(&format!("fix: edgefilter keys approve {pid}")),
        "{text}"
    );
    assert_eq!(env.out(&["keys", "approve", &pid], None).0, 0);
    assert_eq!(env.explain(&pending, &[]).0, 0);

    let (_, fenced) = env.create(&["--user", "alice", "--allow-cidr", "198.18.0.0/24"]);
    assert_eq!(env.explain(&fenced, &["--ip", "198.18.0.9"]).0, 0);
    let (rc, text) = env.explain(&fenced, &["--ip", "198.19.1.1"]);
    assert_eq!(rc, 1);
    assert!(
        text.contains("IP_NOT_ALLOWED") && text.contains("came from 198.19.1.1"),
        "{text}"
    );

    let (_, unscoped) = env.create(&["--user", "alice"]);
    assert_eq!(env.explain(&unscoped, &[]).0, 0);
    let (rc, text) = env.explain(&unscoped, &["--path", "/v1/chat"]);
    assert_eq!(rc, 1);
    assert!(
        text.contains("SCOPE_MISSING") && text.contains("--scope ai:invoke"),
        "{text}"
    );
    let (rc, text) = env.explain(&unscoped, &["--path", "/other"]);
    assert_eq!(rc, 1);
    assert!(text.contains("NO_ROUTE"));

    // Unknown: a valid key from another store.
    let mut other = Env::new();
    let (_, stranger) = other.create(&["--user", "zed"]);
    env.keys.push(stranger.clone());
    let (rc, text) = env.explain(&stranger, &[]);
    assert_eq!(rc, 1);
    assert!(text.contains("UNKNOWN_KEY"));
}

#[test]
fn rotate_suspend_activate_delete() {
    let mut env = Env::new();
    let (id, key) = env.create(&["--user", "alice"]);
    let (rc, text) = env.out(&["keys", "rotate", &key, "--grace", "1h", "--json"], None);
    assert_eq!(rc, 0, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let new = v["key"].as_str().unwrap().to_owned();
    assert_ne!(new, key);
    assert_eq!(v["replaces"]["id"], Value::from(id.clone()));
    env.keys.push(new.clone());
    // Within grace both keys work; explain says until when.
    let (rc, text) = env.explain(&key, &[]);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("rotated to key_") && text.contains("works until"));
    assert_eq!(env.explain(&new, &[]).0, 0);
    // Rotating again is refused; a grace of 0 ends the old key at once.
    assert_eq!(env.out(&["keys", "rotate", &id], None).0, 1);
    let (rc, text) = env.out(&["keys", "rotate", &new, "--grace", "0s"], None);
    assert_eq!(rc, 0);
    env.keys.push(text.lines().next().unwrap().to_owned());
    let (rc, text) = env.explain(&new, &[]);
    assert_eq!(rc, 1);
    assert!(
        text.contains("KEY_REVOKED") && text.contains("grace period ended"),
        "{text}"
    );

    let (_, bob) = env.create(&["--user", "bob"]);
    assert_eq!(env.out(&["users", "suspend", "bob"], None).0, 0);
    let (rc, text) = env.explain(&bob, &[]);
    assert_eq!(rc, 1);
    assert!(text.contains("USER_SUSPENDED") && text.contains("fix: edgefilter users activate bob"));
    assert_eq!(env.out(&["users", "activate", "bob"], None).0, 0);
    assert_eq!(env.explain(&bob, &[]).0, 0);
    assert_eq!(env.out(&["users", "delete", "bob"], None).0, 0);
    let (rc, text) = env.explain(&bob, &[]);
    assert_eq!(rc, 1);
    assert!(text.contains("USER_DELETED"));
    let (rc, text) = env.out(&["users", "activate", "bob"], None);
    assert_eq!(rc, 1);
    assert!(text.contains("deletion is final"));
    let (_, list) = env.out(&["keys", "list", "--json"], None);
    let states: Vec<String> = serde_json::from_str::<Value>(&list)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["in_grace", "rotated", "active", "deleted"]);
}

/// Every change the CLI makes without a daemon is in the audit trail once, with the local user,
/// the action, the key's id (never the key) and how it ended; `audit` reads it back as columns
/// or JSON, filtered by `--since`, cut by `--limit`, never printing a key or a control byte.
#[test]
fn every_change_without_a_daemon_is_in_the_audit_trail() {
    let mut env = Env::new();
    let (id, key) = env.create(&["--user", "alice", "--pending"]);
    assert_eq!(env.out(&["keys", "approve", &key], None).0, 0);
    let (rc, text) = env.out(&["keys", "rotate", &id, "--grace", "1h", "--json"], None);
    assert_eq!(rc, 0, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    env.keys.push(v["key"].as_str().unwrap().to_owned());
    assert_eq!(env.out(&["keys", "revoke", &key], None).0, 0);
    // Refused: approving a revoked key; a full key that is no key; an unknown user.
    assert_eq!(env.out(&["keys", "approve", &id], None).0, 1);
    let stranger = "ef_live_0123456789abcdefghijABCDEFGHIJ012345";
    env.keys.push(stranger.to_owned());
    assert_eq!(env.out(&["keys", "revoke", stranger], None).0, 1);
    assert_eq!(env.out(&["users", "suspend", "ghost"], None).0, 1);
    assert_eq!(env.out(&["users", "suspend", "alice"], None).0, 0);
    let o = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
        .arg("--config")
        .arg(env.config())
        .args(["users", "activate", "alice"])
        .env_remove("EDGEFILTER_CONFIG")
        .env("SUDO_USER", "sudoer")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(env.out(&["users", "delete", "alice"], None).0, 0);
    // The allowlist lives in a file and the XDP maps, its trail in the store.
    assert_eq!(env.out(&["allow", "add", "203.0.113.0/24"], None).0, 0);
    assert_eq!(env.out(&["allow", "remove", "203.0.113.0/24"], None).0, 0);
    assert_eq!(env.out(&["allow", "remove", "203.0.113.0/24"], None).0, 1);
    // Usage errors are not changes: nothing is recorded.
    assert_eq!(
        env.out(&["keys", "rotate", &id, "--grace", "forever"], None)
            .0,
        2
    );

    let (rc, text) = env.out(&["audit", "--json"], None);
    assert_eq!(rc, 0, "{text}");
    let trail: Value = serde_json::from_str(&text).unwrap();
    let trail = trail.as_array().unwrap();
    let me = crate::support::daemon::cli_actor();
    let sudo = if me == "cli:sudoer" {
        me.clone()
    } else {
        format!("{me} (sudo sudoer)")
    };
    let rows: Vec<(&str, &str, &str, &str)> = trail
        .iter()
        .map(|e| {
            let result = e["result"].as_str().unwrap();
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["object"].as_str().unwrap(),
                result.split(':').next().unwrap(),
            )
        })
        .collect();
    let m = me.as_str();
    assert_eq!(
        rows,
        [
            (m, "key.create", id.as_str(), "ok"),
            (m, "key.approve", id.as_str(), "ok"),
            (m, "key.rotate", id.as_str(), "ok"),
            (m, "key.revoke", id.as_str(), "ok"),
            (m, "key.approve", id.as_str(), "CONFLICT"),
            (m, "key.revoke", "(a key)", "NOT_FOUND"),
            (m, "user.suspend", "ghost", "NOT_FOUND"),
            (m, "user.suspend", "alice", "ok"),
            (sudo.as_str(), "user.activate", "alice", "ok"),
            (m, "user.delete", "alice", "ok"),
            (m, "allow.add", "203.0.113.0/24", "ok"),
            (m, "allow.remove", "203.0.113.0/24", "ok"),
            (m, "allow.remove", "203.0.113.0/24", "NOT_FOUND"),
        ],
        "{text}"
    );
    for e in trail {
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(e.get("host").is_some_and(Value::is_string), "{e}");
    }
    assert!(
        trail[4]["result"].as_str().unwrap().contains("is revoked"),
        "{text}"
    );

    // Columns, aligned, a row per entry; a control byte stored by someone else is escaped.
    let db = env.dir.path().join("var/keys.db");
    let mut st = SqliteStore::open(&db).unwrap();
    st.record_audit(&AuditEntry::ok(
        1_000,
        &Actor::cli("old", None),
        Action::AllowAdd,
        "198.51.100.0/24",
    ))
    .unwrap();
    drop(st);
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute(
        "INSERT INTO audit (at, actor, action, object, result, host)
         VALUES (unixepoch(), 'cli:x', 'user.suspend', 'evil\x1b[2J\u{202e}', 'ok', 'h')",
        [],
    )
    .unwrap();
    drop(raw);
    let (rc, table) = env.out(&["audit"], None);
    assert_eq!(rc, 0, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 15, "{table}");
    let col = |name: &str| lines[0].find(name).unwrap();
    assert_eq!(col("TIME"), 0);
    for l in &lines[1..] {
        assert_eq!(
            l.find(" key.")
                .or(l.find(" user."))
                .or(l.find(" allow."))
                .map(|i| i + 1),
            Some(col("ACTION")),
            "{table}"
        );
    }
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{202e}'),
        "{table:?}"
    );
    assert!(table.contains("evil\\u{1b}[2J\\u{202e}"), "{table}");
    // In the order they were written (not by their time).
    assert!(
        lines[14].contains("1970-01-01T00:16:40Z") && lines[14].contains("cli:old"),
        "{table}"
    );

    // --since: an RFC 3339 time or a duration back from now; --limit: the newest N.
    let count = |args: &[&str]| -> usize {
        let mut all = vec!["audit", "--json"];
        all.extend_from_slice(args);
        let (rc, text) = env.out(&all, None);
        assert_eq!(rc, 0, "{args:?}: {text}");
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&[]), 15);
    assert_eq!(
        count(&["--since", "1h"]),
        14,
        "the entry from 1970 is older"
    );
    assert_eq!(count(&["--since", "1970-01-01T00:16:40Z"]), 15);
    assert_eq!(count(&["--since", "1970-01-01T00:16:41Z"]), 14);
    assert_eq!(count(&["--since", "2999-01-01T00:00:00Z"]), 0);
    assert_eq!(count(&["--limit", "2"]), 2);
    let (_, last) = env.out(&["audit", "--json", "--limit", "1"], None);
    assert!(last.contains("evil"), "the newest: {last}");
    for bad in [&["--since", "yesterday"][..], &["--limit", "0"]] {
        let mut all = vec!["audit"];
        all.extend_from_slice(bad);
        assert_eq!(env.out(&all, None).0, 2, "{bad:?}");
    }
}
