//! The operator's commands without a daemon, through the real binary: `keys create --like`,
//! `explain`'s fixes (run as printed, they give a key with the same policy), `explain --key -`,
//! `--method`, `explain --json`, `--json` on every changing command, and `keys list` columns
//! with long names. No output may hold a key it should not (see [`Env::out`]).

use std::io::Write;
use std::process::{Command, Stdio};

use edgefilter::store::{KeyStore, NewKey, RateLimit, SqliteStore};
use serde_json::{Value, json};

use super::cli::Env;

fn parsed(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `keys create ARGS --json`, exit 0; the new key is remembered (no other output may hold it).
fn create(env: &mut Env, args: &[&str]) -> Value {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    all.push("--json");
    let (rc, text) = env.out(&all, None);
    assert_eq!(rc, 0, "{all:?}: {text}");
    let v = parsed(&text);
    env.keys.push(v["key"].as_str().unwrap().to_owned());
    v
}

/// `keys show ID --json`.
fn show(env: &Env, id: &str) -> Value {
    let (rc, text) = env.out(&["keys", "show", id, "--json"], None);
    assert_eq!(rc, 0, "{text}");
    parsed(&text)
}

/// The policy `--like` copies, as `--json` shows it.
fn policy(v: &Value) -> Value {
    json!({
        "tenant": v["tenant"], "user": v["user"], "env": v["env"], "scopes": v["scopes"],
        "allowed_cidrs": v["allowed_cidrs"], "rate": v["rate"], "burst": v["burst"],
    })
}

/// `explain --key KEY EXTRA --json`: (exit code, the JSON).
fn explain_json(env: &Env, key: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["explain", "--key", key, "--json"];
    args.extend_from_slice(extra);
    let (rc, text) = env.out(&args, None);
    (rc, parsed(&text))
}

/// The failed check that decides the answer.
fn answer(v: &Value) -> &Value {
    let answers: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["answer"] == true)
        .collect();
    assert_eq!(answers.len(), 1, "one answer: {v}");
    answers[0]
}

/// Runs `command` as printed by `explain` (through `sh`, with this env's config and the
/// binary first on `PATH`) plus `--json`; returns the JSON and remembers the new key.
fn run_fix(env: &mut Env, command: &str) -> Value {
    assert!(command.starts_with("edgefilter "), "{command}");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_edgefilter"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} --json"))
        .env("PATH", path)
        .env("EDGEFILTER_CONFIG", env.config())
        .env_remove("SUDO_USER")
        .env(edgefilter::xdp::PIN_DIR_ENV, env.dir.path().join("pins"))
        .output()
        .unwrap();
    crate::support::leaks::scan_cli(&["keys", "create"], &o);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{command}: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for k in &env.keys {
        assert!(!text.contains(&k[8..]), "{command} printed an old key");
    }
    let v = parsed(&text);
    env.keys.push(v["key"].as_str().unwrap().to_owned());
    v
}

#[test]
fn like_copies_the_policy_and_options_replace_what_they_name() {
    let mut env = Env::new();
    let src = create(
        &mut env,
        &[
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--scope",
            "ai:invoke",
            "--scope",
            "ai:read",
            "--allow-cidr",
            "198.18.0.0/24",
            "--allow-cidr",
            "fd00:ef::/64",
            "--rate",
            "5/s",
            "--burst",
            "9",
            "--env",
            "test",
        ],
    );
    let id = src["id"].as_str().unwrap().to_owned();
    let key = src["key"].as_str().unwrap().to_owned();
    let copy = create(&mut env, &["--like", &id]);
    assert_ne!(copy["id"], src["id"]);
    assert_eq!(policy(&copy), policy(&src));
    assert_eq!(copy["status"], "active");
    // By the full key (never echoed: `Env::out` checks), with options that replace.
    let changed = create(
        &mut env,
        &[
            "--like", &key, "--scope", "ai:admin", "--user", "bob", "--burst", "2",
        ],
    );
    let mut want = policy(&src);
    want["scopes"] = json!(["ai:admin"]);
    want["user"] = json!("bob");
    want["burst"] = json!(2);
    assert_eq!(policy(&changed), want);

    // A key that is not there: exit 1, and the refusal is in the audit trail by id only.
    let stranger = "ef_live_0123456789abcdefghijABCDEFGHIJ012345";
    env.keys.push(stranger.to_owned());
    let (rc, text) = env.out(&["keys", "create", "--like", stranger], None);
    assert_eq!(rc, 1, "{text}");
    assert!(text.contains("no key to copy"), "{text}");
    let (rc, text) = env.out(&["keys", "create", "--like", "key_000000000000"], None);
    assert_eq!(rc, 1, "{text}");
    assert!(text.contains("key_000000000000"), "{text}");
    let (_, trail) = env.out(&["audit", "--json"], None);
    let refused: Vec<(String, String)> = parsed(&trail)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] != "ok")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["object"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("key.create".to_owned(), "(a key)".to_owned()),
            ("key.create".to_owned(), "key_000000000000".to_owned())
        ]
    );
    // Without --like, tenant and user are needed; --burst alone needs a rate to keep.
    assert_eq!(env.out(&["keys", "create", "--user", "x"], None).0, 2);
    let plain = create(&mut env, &["--tenant", "acme", "--user", "carol"]);
    let plain_id = plain["id"].as_str().unwrap().to_owned();
    let (rc, text) = env.out(
        &["keys", "create", "--like", &plain_id, "--burst", "3"],
        None,
    );
    assert_eq!(rc, 2, "{text}");
}

#[test]
fn explain_fixes_keep_the_policy_and_work_as_printed() {
    let mut env = Env::new();
    let policy_args = [
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--scope",
        "ai:invoke",
        "--scope",
        "extra$1",
        "--allow-cidr",
        "198.18.0.0/24",
        "--rate",
        "7/s",
    ];
    let mut lasting = policy_args.to_vec();
    lasting.extend_from_slice(&["--expires", "30d"]);
    let revoked = create(&mut env, &lasting);
    let fenced = create(&mut env, &policy_args);
    let mut narrow = policy_args.to_vec();
    narrow.truncate(4);
    narrow.extend_from_slice(&[
        "--scope",
        "ai:read",
        "--scope",
        "it's$x",
        "--allow-cidr",
        "198.18.0.0/24",
    ]);
    let unscoped = create(&mut env, &narrow);
    let mut testing = policy_args.to_vec();
    testing.extend_from_slice(&["--env", "test"]);
    let wrong_env = create(&mut env, &testing);
    let k = |v: &Value| v["key"].as_str().unwrap().to_owned();
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    assert_eq!(env.out(&["keys", "revoke", &id(&revoked)], None).0, 0);
    // A key made 100 days ago with a 90-day lifetime: expired ten days ago.
    let old = {
        let mut st = SqliteStore::open(&env.dir.path().join("var/keys.db")).unwrap();
        let made = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .cast_signed()
            - 100 * 86_400;
        let new = NewKey {
            tenant: "acme".into(),
            user: "alice".into(),
            env: "live".into(),
            scopes: vec!["ai:invoke".into(), "extra$1".into()],
            not_before: None,
            expires_at: Some(made + 90 * 86_400),
            allow_cidrs: vec!["198.18.0.0/24".parse().unwrap()],
            rate: Some(RateLimit {
                per_sec: 7,
                burst: 7,
            }),
            credits: None,
            refill: None,
            pending: false,
        };
        let c = st.create_keys(&[new], made).unwrap().remove(0);
        let key = c.secret.expose().to_owned();
        env.keys.push(key.clone());
        json!({"id": c.view.key.id, "key": key})
    };
    let at = [
        "--ip",
        "198.18.0.9",
        "--path",
        "/v1/chat",
        "--method",
        "POST",
    ];

    // Each failure's fix: no placeholder, never the key, and run as printed it gives a key with
    // the same policy (plus only what the fix is about), which then passes.
    let cases: [(&Value, &[&str], &str, &str); 5] = [
        (&old, &at, "KEY_EXPIRED", "edgefilter keys rotate "),
        (
            &revoked,
            &at,
            "KEY_REVOKED",
            "edgefilter keys create --like ",
        ),
        (
            &fenced,
            &["--ip", "198.51.100.7", "--path", "/v1/chat"],
            "IP_NOT_ALLOWED",
            "edgefilter keys create --like ",
        ),
        (
            &unscoped,
            &at,
            "SCOPE_MISSING",
            "edgefilter keys create --like ",
        ),
        (
            &wrong_env,
            &at,
            "WRONG_ENVIRONMENT",
            "edgefilter keys create --like ",
        ),
    ];
    for (key, extra, code, starts) in cases {
        let (rc, v) = explain_json(&env, &k(key), extra);
        assert_eq!((rc, v["code"].as_str()), (1, Some(code)), "{v}");
        let failed = answer(&v);
        assert_eq!(failed["code"], code, "{v}");
        let command = failed["command"].as_str().unwrap_or_else(|| panic!("{v}"));
        let fix = failed["fix"].as_str().unwrap();
        assert!(
            command.starts_with(&format!("{starts}{}", id(key))),
            "{code}: {command}"
        );
        assert!(fix.contains(command), "{fix}");
        for placeholder in ["TENANT", "USER", "key_…", " T ", " U "] {
            assert!(!fix.contains(placeholder), "{code}: {fix}");
        }
        let new = run_fix(&mut env, command);
        let mut want = policy(&show(&env, &id(key)));
        match code {
            "IP_NOT_ALLOWED" => want["allowed_cidrs"] = json!(["198.18.0.0/24", "198.51.100.7/32"]),
            "SCOPE_MISSING" => want["scopes"] = json!(["ai:read", "it's$x", "ai:invoke"]),
            "WRONG_ENVIRONMENT" => want["env"] = json!("live"),
            _ => {}
        }
        assert_eq!(policy(&new), want, "{code}: {command}");
        let (rc, after) = explain_json(&env, &k(&new), extra);
        assert_eq!(rc, 0, "{code}: the fixed key still fails: {after}");
    }
    // Lifetimes are kept: the rotated key's, and the revoked key's through `--expires`.
    let rotated = show(&env, &id(&old))["rotated_to"]
        .as_str()
        .unwrap()
        .to_owned();
    let successor = show(&env, &rotated);
    assert!(successor["expires_at"].is_string(), "{successor}");
    assert_eq!(successor["state"], "active", "90 days from the rotation");
    let (_, v) = explain_json(&env, &k(&revoked), &at);
    let command = answer(&v)["command"].as_str().unwrap().to_owned();
    assert!(command.ends_with("--expires 30d"), "{command}");
    let (_, v) = explain_json(&env, &k(&old), &at);
    assert!(
        answer(&v)["fix"]
            .as_str()
            .unwrap()
            .contains("which replaced it"),
        "a rotated key points to its successor: {v}"
    );
    // A suspended user: activate them (by name, no placeholder).
    assert_eq!(env.out(&["users", "suspend", "alice"], None).0, 0);
    let (_, v) = explain_json(&env, &k(&fenced), &at);
    assert_eq!(
        answer(&v)["command"],
        "edgefilter users activate alice",
        "{v}"
    );
}

#[test]
fn explain_reads_the_key_from_stdin_and_keeps_its_whitespace() {
    let mut env = Env::new();
    let v = create(
        &mut env,
        &[
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--scope",
            "ai:invoke",
        ],
    );
    let key = v["key"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    let piped = |input: &str, extra: &[&str]| {
        let mut args = vec!["explain", "--key", "-"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgefilter"))
            .arg("--config")
            .arg(env.config())
            .args(&args)
            .env_remove("EDGEFILTER_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        crate::support::leaks::scan_cli(&args, &o);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains(&key[8..]), "explain printed the key");
        (o.status.code().unwrap(), text)
    };
    let (rc, text) = piped(&format!("{key}\n"), &["--path", "/v1/x"]);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains(&format!("verdict: ALLOW as {id}")), "{text}");
    let (rc, text) = piped(&key, &[]);
    assert_eq!(rc, 0, "without a newline: {text}");
    for (input, why) in [
        (format!(" {key}\n"), "leading whitespace"),
        (format!("{key} \n"), "trailing whitespace"),
        (format!("{key}\r\n"), "MALFORMED_KEY"),
        (format!("{key}\t\n"), "trailing whitespace"),
    ] {
        let (rc, text) = piped(&input, &[]);
        assert_eq!(rc, 1, "{input:?}: {text}");
        assert!(
            text.contains("MALFORMED_KEY") && text.contains(why),
            "{input:?}: {text}"
        );
    }
    for empty in ["", "\n"] {
        let (rc, text) = piped(empty, &[]);
        assert_eq!(rc, 2, "{empty:?}: {text}");
        assert!(text.contains("stdin holds no key"), "{text}");
    }
}

#[test]
fn explain_json_and_method_say_what_the_proxy_would() {
    let mut env = Env::new();
    let v = create(
        &mut env,
        &[
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--scope",
            "ai:invoke",
        ],
    );
    let key = v["key"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    let (rc, v) = explain_json(
        &env,
        &key,
        &["--method", "DELETE", "--path", "/v1/chat?x=1"],
    );
    assert_eq!(rc, 0, "{v}");
    assert_eq!(
        (&v["decision"], &v["code"], &v["status"], &v["key_id"]),
        (&json!("allow"), &Value::Null, &json!(200), &json!(id)),
        "{v}"
    );
    assert_eq!(v["request"]["method"], "DELETE");
    assert_eq!(v["request"]["path"], "/v1/chat?x=1");
    assert_eq!(v["request"]["route"], "/v1/");
    assert_eq!(v["request"]["environment"], "live");
    assert!(v["verdict"].as_str().unwrap().starts_with("verdict: ALLOW"));
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "method",
            "path",
            "route",
            "place",
            "format",
            "checksum",
            "environment",
            "known",
            "revoked",
            "not before",
            "expiry",
            "user",
            "approval",
            "address",
            "scopes",
            "rate",
            "credits"
        ]
    );
    for c in checks {
        for field in [
            "result", "passed", "code", "status", "answer", "rule", "detail", "fix", "command",
        ] {
            assert!(c.get(field).is_some(), "{field} missing: {c}");
        }
        assert_eq!((&c["result"], &c["passed"]), (&json!("pass"), &json!(true)));
    }
    // The text names the method in the request line.
    let (rc, text) = env.explain(&key, &["--method", "PATCH", "--path", "/v1/chat"]);
    assert_eq!(rc, 0);
    assert!(text.starts_with("PATCH /v1/chat from 127.0.0.1"), "{text}");
    assert!(text.contains("routes have no method rules"), "{text}");

    // A method the proxy's parser refuses: BAD_REQUEST head_syntax, before the key is read.
    for bad in ["GE T", "GET\r\nX-Injected: 1", "(GET)"] {
        let (rc, v) = explain_json(&env, &key, &["--method", bad, "--path", "/v1/chat"]);
        assert_eq!(rc, 1, "{v}");
        assert_eq!(
            (&v["code"], &v["status"], &v["rule"], &v["key_id"]),
            (
                &json!("BAD_REQUEST"),
                &json!(400),
                &json!("head_syntax"),
                &Value::Null
            ),
            "{bad:?}: {v}"
        );
        assert_eq!(answer(&v)["check"], "method");
        assert_eq!(v["checks"].as_array().unwrap().len(), 2, "{v}");
    }
    // A denial: one answer, the same code as the verdict, every later check still run.
    let (rc, v) = explain_json(&env, &key, &["--ip", "::1", "--path", "/v1/x"]);
    assert_eq!(rc, 0, "no networks: any address: {v}");
    let (_, unscoped) = env.create(&["--user", "bob"]);
    let (rc, v) = explain_json(&env, &unscoped, &["--path", "/v1/x"]);
    assert_eq!(rc, 1);
    let a = answer(&v);
    assert_eq!(
        (
            &a["check"],
            &a["code"],
            &a["status"],
            &a["result"],
            &a["passed"]
        ),
        (
            &json!("scopes"),
            &json!("SCOPE_MISSING"),
            &json!(403),
            &json!("fail"),
            &json!(false)
        )
    );
    assert_eq!(v["code"], "SCOPE_MISSING");
    assert!(a["detail"].as_str().unwrap().contains("ai:invoke"));
    // Without --path: path and scopes are skipped, said so.
    let (_, v) = explain_json(&env, &unscoped, &[]);
    let skipped: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == "skip")
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["path", "scopes"], "{v}");
}

#[test]
fn every_changing_command_takes_json() {
    let mut env = Env::new();
    let v = create(
        &mut env,
        &["--tenant", "acme", "--user", "alice", "--pending"],
    );
    let key = v["key"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    let json_of = |env: &Env, args: &[&str]| {
        let (rc, text) = env.out(args, None);
        assert_eq!(rc, 0, "{args:?}: {text}");
        parsed(&text)
    };
    let v = json_of(&env, &["keys", "approve", &key, "--json"]);
    assert_eq!(
        (&v["action"], &v["id"], &v["status"], &v["key"]["id"]),
        (
            &json!("key.approve"),
            &json!(id),
            &json!("active"),
            &json!(id)
        ),
        "{v}"
    );
    assert!(v["key"].get("key").is_none(), "{v}");
    let (rc, text) = env.out(&["keys", "rotate", &id, "--json", "--grace", "1h"], None);
    assert_eq!(rc, 0);
    let rotated = parsed(&text);
    env.keys.push(rotated["key"].as_str().unwrap().to_owned());
    assert_eq!(rotated["replaces"]["id"], json!(id));
    let v = json_of(&env, &["keys", "revoke", &id, "--json"]);
    assert_eq!(
        (&v["action"], &v["id"], &v["status"], &v["state"]),
        (
            &json!("key.revoke"),
            &json!(id),
            &json!("revoked"),
            &json!("revoked")
        ),
        "{v}"
    );
    assert!(v["key"]["revoked_at"].as_str().unwrap().ends_with('Z'));
    for (verb, status) in [
        ("suspend", "suspended"),
        ("activate", "active"),
        ("delete", "deleted"),
    ] {
        let v = json_of(&env, &["users", verb, "alice", "--json"]);
        assert_eq!(
            v,
            json!({"action": format!("user.{verb}"), "user": "alice", "tenant": "acme",
                   "status": status, "keys": 2})
        );
    }
    let v = json_of(&env, &["allow", "add", "198.51.100.7", "--json"]);
    assert_eq!(
        (&v["action"], &v["cidr"], &v["changed"], &v["live"]),
        (
            &json!("allow.add"),
            &json!("198.51.100.7/32"),
            &json!(true),
            &json!(false)
        ),
        "{v}"
    );
    let v = json_of(&env, &["allow", "add", "198.51.100.7/32", "--json"]);
    assert_eq!(v["changed"], false, "{v}");
    let v = json_of(&env, &["allow", "remove", "198.51.100.7", "--json"]);
    assert_eq!(
        (&v["action"], &v["changed"]),
        (&json!("allow.remove"), &json!(true))
    );
    let v = json_of(&env, &["allow", "list", "--json"]);
    assert_eq!(v, json!([]));
}

#[test]
fn keys_list_columns_stay_aligned_with_long_names() {
    let mut env = Env::new();
    let long_tenant = format!("t{}", "x".repeat(99));
    let long_user = format!("u{}@example.com", "y".repeat(50));
    create(&mut env, &["--tenant", "acme", "--user", "al"]);
    create(
        &mut env,
        &[
            "--tenant",
            &long_tenant,
            "--user",
            &long_user,
            "--scope",
            "ai:invoke",
            "--scope",
            "a-rather-long-scope-name:with-more",
        ],
    );
    create(
        &mut env,
        &["--tenant", "b", "--user", "c", "--expires", "90d"],
    );
    let (rc, table) = env.out(&["keys", "list"], None);
    assert_eq!(rc, 0, "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header = lines[0];
    let starts: Vec<usize> = [
        "ID", "TENANT", "USER", "STATE", "ENV", "SCOPES", "EXPIRES", "CREATED",
    ]
    .iter()
    .map(|h| header.find(h).unwrap())
    .collect();
    let chars = |s: &str, byte: usize| s[..byte].chars().count();
    for row in &lines[1..] {
        // Every column starts where its heading does: after two spaces, a non-space.
        for &at in &starts[1..] {
            let col = chars(header, at);
            let before: String = row.chars().skip(col - 2).take(3).collect();
            assert!(
                before.starts_with("  ") && !before.ends_with(' '),
                "column at {col} broken in {row:?}\n{table}"
            );
        }
        assert!(row.chars().count() < 200, "{row}");
    }
    assert!(table.contains('…'), "a long tenant is cut: {table}");
    assert!(!table.contains(&long_tenant), "{table}");
    let (_, list) = env.out(&["keys", "list", "--json"], None);
    let list = parsed(&list);
    let names: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["tenant"].as_str().unwrap(), k["user"].as_str().unwrap()))
        .collect();
    assert!(
        names.contains(&(long_tenant.as_str(), long_user.as_str())),
        "--json keeps the names whole: {names:?}"
    );
}
