//! A small OpenAPI 3.0 response validator over `docs/openapi.yaml`, shared by the admin API
//! tests (in-process fake and real daemon).

use serde_json::Value;

/// The parsed document.
pub fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
    serde_yaml::from_str(&text).expect("openapi.yaml parses")
}

pub fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.strip_prefix('#').expect("local $ref");
            resolve(
                doc,
                doc.pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

/// Validates `v` against an OpenAPI 3.0 schema: `$ref`, `allOf`, `type`, `nullable`, `enum`,
/// `required`, `properties` (recursively) and `items`. Patterns and formats are not checked.
pub fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check(doc, s, v, at, errs);
        }
        return;
    }
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            errs.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    let ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errs.push(format!("{at}: {v} is not {:?}", schema.get("type")));
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} not in {e:?}"));
    }
    for req in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = req.as_str().expect("required names");
        if v.get(name).is_none() {
            errs.push(format!("{at}: missing required `{name}`"));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, s) in props {
            if let Some(field) = v.get(name) {
                check(doc, s, field, &format!("{at}.{name}"), errs);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), errs);
        }
    }
}

/// Asserts that the documented operation lists `status` and that `body` matches its schema.
pub fn assert_documented(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} not documented");
    let resp = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path}: status {status} not documented ({body})"));
    let resp = resolve(doc, resp);
    if let Some(schema) = resp.pointer("/content/application~1json/schema") {
        let mut errs = Vec::new();
        check(doc, schema, body, "$", &mut errs);
        assert!(
            errs.is_empty(),
            "{method} {path} {status}: {errs:?}\n{body}"
        );
    } else {
        assert!(
            resp.pointer("/content/text~1plain").is_some()
                || resp
                    .pointer("/content/application~1openmetrics-text")
                    .is_some(),
            "{method} {path}: no content"
        );
    }
}
