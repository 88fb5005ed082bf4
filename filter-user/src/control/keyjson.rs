//! The admin API's JSON shape of a key (`docs/openapi.yaml` `Key`) and its mapping to and from
//! the CLI's shape, so a command prints the same thing whether it went through the daemon or not.

use serde_json::{Value, json};

use crate::cli::keys::view_json;
use crate::store::KeyView;

/// A key as the admin API shows it (never its secret): the CLI's fields, with
/// `allowed_cidrs`, and `rate`/`burst` as plain integers.
#[must_use]
pub fn api_key(v: &KeyView, now: i64) -> Value {
    let mut out = view_json(v, now);
    if let Some(o) = out.as_object_mut() {
        if let Some(c) = o.remove("allow_cidrs") {
            o.insert("allowed_cidrs".into(), c);
        }
        o.insert("rate".into(), json!(v.key.rate.map(|r| r.per_sec)));
        o.insert("burst".into(), json!(v.key.rate.map(|r| r.burst)));
    }
    out
}

/// The CLI's shape of a key from the admin API's (the inverse of [`api_key`]); `revision`
/// is dropped, `key` (a created key's secret) is kept.
#[must_use]
pub fn cli_key(api: &Value) -> Value {
    let mut out = api.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("revision");
        if let Some(c) = o.remove("allowed_cidrs") {
            o.insert("allow_cidrs".into(), c);
        }
        let burst = o.remove("burst").unwrap_or(Value::Null);
        let rate = match o.remove("rate") {
            Some(Value::Null) | None => Value::Null,
            Some(r) => json!({"per_sec": r, "burst": burst}),
        };
        o.insert("rate".into(), rate);
    }
    out
}
