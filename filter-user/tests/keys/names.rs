//! Names on the command line and in its output (issue 14, finding 1): a tenant, user or scope
//! that breaks its rule — the header-smuggling user name of the issue, CR, LF, ESC, DEL, empty,
//! 60 KB — is a usage error (exit 2) naming the argument and the rule, repeating nothing and
//! writing nothing; and whatever the store holds (a row written by hand, by SQL), `keys list`,
//! `keys show`, `users` and `audit` print no control character.

use std::process::Output;

use edgefilter::store::SqliteStore;
use serde_json::Value;

use crate::support::daemon::{Daemon, default_tables};

/// The user name of the issue: it ends `X-Edgefilter-User`, forges a tenant and smuggles a
/// second request to the upstream.
const SMUGGLER: &str = "u\r\nX-Edgefilter-Tenant: root\r\nContent-Length: 0\r\n\r\nGET /admin/pwned HTTP/1.1\r\nHost: upstream\r\n\r\n";

/// A config and store with no daemon running: every command works on the store itself.
fn edge() -> Daemon {
    Daemon::configure(&default_tables("127.0.0.1:9".parse().unwrap()))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Control characters other than the newline that ends a line.
fn controls(s: &str) -> Vec<char> {
    s.chars().filter(|c| c.is_control() && *c != '\n').collect()
}

#[test]
fn the_cli_refuses_names_that_break_the_rule_and_names_the_rule() {
    let d = edge();
    let long = "a".repeat(60 * 1024);
    // (argument, value, what the error must say). A NUL cannot reach a program's argv.
    let cases: [(&str, &str, &str); 10] = [
        (
            "--user",
            SMUGGLER,
            "holds a control character (U+000D) at byte 1",
        ),
        ("--user", "a\rb", "control character (U+000D)"),
        ("--user", "a\nb", "control character (U+000A)"),
        ("--user", "a\u{1b}[2Jb", "control character (U+001B)"),
        ("--user", "a\u{7f}", "control character (U+007F)"),
        ("--user", "", "user name is empty"),
        ("--user", &long, "user name is 61440 bytes long"),
        (
            "--tenant",
            "acme\r\nX-Edgefilter-User: root",
            "tenant name holds a control",
        ),
        ("--tenant", ".acme", "tenant name starts with `.`"),
        (
            "--scope",
            "ai:invoke\r\nX: y",
            "scope holds a control character",
        ),
    ];
    for (arg, value, says) in cases {
        let mut args = vec!["keys", "create", "--tenant", "acme", "--user", "alice"];
        match arg {
            "--scope" => args.extend(["--scope", value]),
            "--tenant" => args[3] = value,
            _ => args[5] = value,
        }
        let o = d.cli(&args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{arg} {value:?}: {out}{err}");
        assert!(out.is_empty(), "{arg} {value:?}: printed {out}");
        assert!(err.contains(&format!("invalid value for '{arg}")), "{err}");
        assert!(err.contains(says), "{arg} {value:?}: {err}");
        assert!(
            err.contains("1 to 128 bytes"),
            "the rule is not stated: {err}"
        );
        assert!(controls(&err).is_empty(), "{arg}: control bytes in {err:?}");
        assert!(!err.contains("X-Edgefilter") && !err.contains(&long));
    }
    for args in [
        &["users", "suspend", SMUGGLER][..],
        &["users", "delete", "bob\u{1b}]0;pwned\u{7}"],
        &["keys", "list", "--tenant", "acme\nroot"],
    ] {
        let o = d.cli(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("control character"), "{args:?}: {err}");
        assert!(controls(&err).is_empty(), "{err:?}");
    }
    // Nothing was written: no key, and the valid forms still work.
    assert_eq!(d.cli_ok(&["keys", "list", "--json"]).trim(), "[]");
    let email = "first.last+ops@example.com";
    let v: Value = serde_json::from_str(&d.cli_ok(&[
        "keys", "create", "--tenant", "acme", "--user", email, "--json",
    ]))
    .unwrap();
    assert_eq!(v["user"], email);
}

/// Rows written into the store by SQL, as a hand edit or an older version could leave them:
/// every text command prints them escaped; JSON carries them escaped by JSON.
#[test]
fn what_the_store_holds_reaches_no_terminal_raw() {
    let d = edge();
    let created: Value = serde_json::from_str(&d.cli_ok(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "mallory",
        "--scope",
        "ai:invoke",
        "--json",
    ]))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let db = d.dir.path().join("var/keys.db");
    drop(SqliteStore::open(&db).unwrap());
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute(
        "UPDATE users SET name = ?1 WHERE name = 'mallory'",
        [SMUGGLER],
    )
    .unwrap();
    sql.execute(
        "UPDATE tenants SET name = ?1 WHERE name = 'acme'",
        ["acme\u{1b}[2J\u{1b}]0;owned\u{7}"],
    )
    .unwrap();
    sql.execute(
        "UPDATE keys SET scopes = ?1 WHERE id = ?2",
        ["ai:invoke\u{8}\u{8}\u{8}admin", &id],
    )
    .unwrap();
    drop(sql);

    for args in [
        &["keys", "list"][..],
        &["keys", "list", "--json"],
        &["keys", "show", &id],
        &["keys", "show", &id, "--json"],
        &["audit"],
    ] {
        let o = d.cli(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(controls(&out).is_empty(), "{args:?} printed {out:?}");
        assert!(out.contains(&id), "{args:?}: {out}");
    }
    let table = d.cli_ok(&["keys", "list"]);
    assert!(table.contains(r"u\u{d}\u{a}X-Edgefilter-Tenant"), "{table}");
    let shown = d.cli_ok(&["keys", "show", &id]);
    assert!(
        shown.contains("not served:  its tenant name holds a control character (U+001B)"),
        "{shown}"
    );
    let listed: Value = serde_json::from_str(&d.cli_ok(&["keys", "list", "--json"])).unwrap();
    assert_eq!(
        listed[0]["user"], SMUGGLER,
        "JSON keeps the stored text, escaped"
    );

    // A valid user of the broken tenant: `users` prints the tenant escaped.
    let sql = rusqlite::Connection::open(&db).unwrap();
    sql.execute(
        "INSERT INTO users (tenant_id, name, status, created_at, updated_at) \
         SELECT tenant_id, 'bob', 'active', 0, 0 FROM users LIMIT 1",
        [],
    )
    .unwrap();
    drop(sql);
    let o = d.cli(&["users", "suspend", "bob"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        out.starts_with(r"user bob (tenant acme\u{1b}[2J"),
        "{out:?}"
    );
    assert!(controls(&out).is_empty(), "{out:?}");
}
