//! Key, user and allowlist commands through the running daemon's admin API (SPEC §3): a key
//! change returns only once every shard has applied it, and the daemon records it in the audit
//! trail (with the local user as the one it was made for). `None` from [`discover`] means "no
//! daemon: write the store (or `allowlist.json`) directly".

use serde_json::Value;

use super::audit::local_actor;
use crate::admin::AdminClient;
use crate::config::Config;

/// The running daemon's admin API, if one is listening, calling on behalf of the local user.
#[must_use]
pub fn discover(cfg: &Config) -> Option<AdminClient> {
    AdminClient::discover(cfg).map(|c| c.on_behalf_of(local_actor().as_str()))
}

/// Calls the daemon; any non-2xx answer is an error naming the daemon, the code and the hint.
///
/// # Errors
/// The daemon cannot be reached, or refused or failed the change.
pub fn call(
    client: &AdminClient,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let (status, v) = client.call(method, path, body)?;
    if (200..300).contains(&status) {
        return Ok(v);
    }
    Err(refused(client, status, &v))
}

/// [`call`], except that `404 Not Found` is `None`: what the request names is not there.
///
/// # Errors
/// The daemon cannot be reached, or refused or failed the request otherwise.
pub fn call_found(
    client: &AdminClient,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Option<Value>> {
    let (status, v) = client.call(method, path, body)?;
    match status {
        200..=299 => Ok(Some(v)),
        404 => Ok(None),
        _ => Err(refused(client, status, &v)),
    }
}

/// The error for a refusal: the daemon, the status, the code, the message and the hint.
fn refused(client: &AdminClient, status: u16, v: &Value) -> anyhow::Error {
    let e = &v["error"];
    let code = e["code"].as_str().unwrap_or("ERROR");
    let message = e["message"].as_str().unwrap_or("no message");
    let hint = e["hint"]
        .as_str()
        .map_or_else(String::new, |h| format!(" ({h})"));
    anyhow::anyhow!(
        "the daemon at {} answered {status} {code}: {message}{hint}",
        client.addr()
    )
}

/// Percent-encodes one path segment (everything but unreserved characters).
#[must_use]
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_encoded() {
        assert_eq!(super::segment("key_AbC09"), "key_AbC09");
        assert_eq!(super::segment("a b/c%"), "a%20b%2Fc%25");
    }
}
