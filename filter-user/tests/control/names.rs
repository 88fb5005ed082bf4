//! Names through the admin API of the real daemon (issue 14, finding 1): a tenant, user or scope
//! that breaks its rule — the header-smuggling user name of the issue, CR, LF, NUL, ESC, DEL,
//! empty, 60 KB — is `400 INVALID_NAME` with the field and the rule (as `docs/openapi.yaml`
//! documents it), nothing is created, the refusal is in the audit trail with the name made
//! harmless, and a valid e-mail user name is forwarded as it is.

use serde_json::{Value, json};

use crate::support::daemon::{Daemon, KeepAlive};
use crate::support::openapi::{assert_documented, openapi};
use crate::support::upstream;

/// The user name of the issue: it ends `X-Edgefilter-User`, forges a tenant and smuggles a
/// second request to the upstream.
const SMUGGLER: &str = "u\r\nX-Edgefilter-Tenant: root\r\nContent-Length: 0\r\n\r\nGET /admin/pwned HTTP/1.1\r\nHost: upstream\r\n\r\n";

/// Every byte but the unreserved ones as `%XX`.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Asserts an `INVALID_NAME` answer for `field` breaking `rule`, free of control characters.
fn assert_invalid(what: &str, status: u16, v: &Value, field: &str, rule: &str) {
    let e = &v["error"];
    assert_eq!(
        (
            status,
            e["code"].as_str(),
            e["field"].as_str(),
            e["rule"].as_str()
        ),
        (400, Some("INVALID_NAME"), Some(field), Some(rule)),
        "{what}: {v}"
    );
    let said = format!("{} {}", e["message"], e["hint"]);
    assert!(said.contains("1 to 128 bytes"), "{what}: no rule in {said}");
    assert!(
        !said.contains("X-Edgefilter") && !said.contains("pwned"),
        "{said}"
    );
    for t in [&e["message"], &e["hint"]] {
        let t = t.as_str().unwrap();
        assert!(!t.chars().any(char::is_control), "{what}: {t:?}");
    }
}

#[test]
fn names_that_break_the_rule_are_refused_with_the_field_and_rule() {
    let doc = openapi();
    let up = upstream::Upstream::start();
    let d = Daemon::start(up.addr);
    let token = d.token();
    let long = "a".repeat(60 * 1024);
    let user = |name: &str| json!({"tenant": "acme", "user": name, "scopes": ["ai:invoke"]});
    let cases = [
        ("the smuggler", user(SMUGGLER), "user", "control_character"),
        ("CR", user("a\rb"), "user", "control_character"),
        ("LF", user("a\nb"), "user", "control_character"),
        ("NUL", user("a\0b"), "user", "control_character"),
        ("ESC", user("a\u{1b}[2J"), "user", "control_character"),
        ("DEL", user("a\u{7f}"), "user", "control_character"),
        ("empty", user(""), "user", "empty"),
        ("60 KB", user(&long), "user", "too_long"),
        ("space", user("a b"), "user", "character_not_allowed"),
        (
            "tenant",
            json!({"tenant": "acme\r\nX-Edgefilter-User: root", "user": "alice"}),
            "tenant",
            "control_character",
        ),
        (
            "empty tenant",
            json!({"tenant": "", "user": "alice"}),
            "tenant",
            "empty",
        ),
        (
            "scope",
            json!({"tenant": "acme", "user": "alice", "scopes": ["ai:invoke\r\nX: y"]}),
            "scopes",
            "control_character",
        ),
    ];
    for (what, body, field, rule) in &cases {
        let (s, v) = d.admin_call("POST", "/v1/keys", Some(&token), Some(body));
        assert_invalid(what, s, &v, field, rule);
        assert_documented(&doc, "/v1/keys", "post", s, &v);
    }
    let path = format!("/v1/users/{}/suspend", pct(SMUGGLER));
    let (s, v) = d.admin_call("POST", &path, Some(&token), None);
    assert_invalid("suspend", s, &v, "user", "control_character");
    assert_documented(&doc, "/v1/users/{user}/suspend", "post", s, &v);
    let (s, v) = d.admin_call("GET", "/v1/keys?tenant=acme%0D%0Aroot", Some(&token), None);
    assert_invalid("list", s, &v, "tenant", "control_character");
    assert_documented(&doc, "/v1/keys", "get", s, &v);

    // Nothing was created; every refused change is in the audit trail, its object harmless.
    let (s, list) = d.admin_call("GET", "/v1/keys", Some(&token), None);
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");
    let (_, audit) = d.admin_call("GET", "/v1/audit", Some(&token), None);
    let refused: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"].as_str().unwrap().starts_with("INVALID_NAME: "))
        .collect();
    assert_eq!(refused.len(), cases.len() + 1, "{audit}");
    for e in &refused {
        let object = e["object"].as_str().unwrap();
        assert!(!object.chars().any(char::is_control), "{object:?}");
        assert!(object.chars().count() <= 200, "{object}");
    }

    // A valid name, an e-mail address, is created and forwarded as it is.
    let email = "first.last+ops@example.com";
    let (s, created) = d.admin_call("POST", "/v1/keys", Some(&token), Some(&user(email)));
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap();
    assert_eq!(
        KeepAlive::new(d.http).get("/v1/echo", key).unwrap().status,
        200
    );
    let heads = up.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].contains(&format!("\r\nX-Edgefilter-User: {email}\r\n")),
        "{}",
        heads[0]
    );
    // The CLI names it in a path segment through the daemon (`+` and `@` encoded).
    let out = d.cli_ok(&["users", "suspend", email]);
    assert_eq!(out.trim(), format!("user {email} (tenant acme): suspended"));
}
