//! Fleet mode over TLS against a real PostgreSQL (Debian's package, `ssl=on`, a certificate from
//! an rcgen-made CA): `sslmode=require` with `sslrootcert` gives an encrypted, verified session
//! for the writer, the key store and the change follower; a server certificate from another CA
//! is refused under `require` and under the default `prefer` (no silent fallback to plaintext);
//! `require` against a server without TLS fails; `disable` stays plaintext.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgefilter::store::KeyStore;
use edgefilter::store::postgres::{
    self, ChangeFollower, ChangeRow, FollowerConfig, PgKeyStore, append_change,
};
use serde_json::json;

use crate::support::pg::PgFixture;
use crate::support::tls::Pki;

const WAIT: Duration = Duration::from_secs(5);

/// `store.url` for `fx` with `query` appended.
fn url(fx: &PgFixture, query: &str) -> String {
    format!("{}?{query}", fx.postgres_url())
}

/// Whether the session behind `client` is encrypted, as the server sees it.
async fn encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
async fn verified_tls_for_writer_store_and_follower_and_no_fallback() {
    let pki = Pki::new("localhost");
    let Some(fx) = PgFixture::start_tls(&pki.cert, &pki.key) else {
        return;
    };
    let ca = pki.ca_pem.display().to_string();
    let secure = url(&fx, &format!("sslmode=require&sslrootcert={ca}"));

    // The writer: encrypted and verified.
    let mut c = postgres::connect(&secure, WAIT)
        .await
        .expect("TLS connect with the right CA");
    assert!(
        encrypted(&c).await,
        "sslmode=require gave a plaintext session"
    );
    postgres::migrate(&mut c).await.expect("migrate");

    // The default mode (prefer) uses TLS when the server offers it, verified the same way.
    let c2 = postgres::connect(&url(&fx, &format!("sslrootcert={ca}")), WAIT)
        .await
        .expect("prefer connects");
    assert!(encrypted(&c2).await, "prefer did not use the server's TLS");

    // disable stays plaintext (the server accepts both).
    let plain = postgres::connect(&url(&fx, "sslmode=disable"), WAIT)
        .await
        .expect("plaintext connect");
    assert!(!encrypted(&plain).await);

    // A certificate from another CA is refused, under require and under prefer alike.
    let other = Pki::new("localhost");
    let wrong_ca = other.ca_pem.display().to_string();
    for mode in ["sslmode=require&", ""] {
        let e = postgres::connect(&url(&fx, &format!("{mode}sslrootcert={wrong_ca}")), WAIT)
            .await
            .expect_err("a server certificate from an unknown CA must be refused");
        let text = e.to_string();
        assert!(
            text.contains("TLS handshake") && text.contains("invalid peer certificate"),
            "unexpected error for {mode:?}: {text}"
        );
    }

    // The change follower over TLS sees a change written over TLS.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let follower = ChangeFollower::spawn(
        FollowerConfig::new(secure.clone(), 0),
        move |row: &ChangeRow| {
            sink.lock().expect("seen").push(row.revision);
        },
    )
    .expect("follower");
    let status = follower.status();
    let end = Instant::now() + WAIT;
    while !status.connected() {
        assert!(Instant::now() < end, "follower never connected over TLS");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rev = append_change(&c, "test", &json!({"over": "tls"}))
        .await
        .expect("append");
    while !seen.lock().expect("seen").contains(&rev) {
        assert!(
            Instant::now() < end,
            "follower over TLS missed revision {rev}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(follower);

    // The key store (its own runtime and connection) over TLS: open, write, read back.
    let secure_store = secure.clone();
    tokio::task::spawn_blocking(move || {
        let st = PgKeyStore::open(&secure_store).expect("key store over TLS");
        assert!(st.revision().expect("revision") >= rev);
    })
    .await
    .expect("store task");
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails() {
    let Some(fx) = PgFixture::start() else {
        return;
    };
    let e = postgres::connect(&url(&fx, "sslmode=require"), WAIT)
        .await
        .expect_err("require must not fall back to plaintext");
    assert!(
        e.to_string().contains("server does not support TLS"),
        "unexpected error: {e}"
    );
    // prefer falls back to plaintext when the server has no TLS at all.
    let c = postgres::connect(&fx.postgres_url(), WAIT)
        .await
        .expect("prefer without server TLS");
    assert!(!encrypted(&c).await);
}
