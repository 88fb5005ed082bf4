//! TLS through the proxy with an rcgen-made CA: curl and a rustls client, TLS 1.2 and 1.3 only,
//! ALPN `http/1.1`, certificate reload without dropping open connections, bad files named.

use std::process::Command;

use edgefilter::gate::AllowAll;
use edgefilter::proxy;

use crate::support::tls::{Pki, TlsClient};
use crate::support::{proxy_env, upstream};

fn tls_config(pki: &Pki, up: std::net::SocketAddr) -> edgefilter::config::Config {
    proxy_env::config(
        &format!(
            "[listen]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\"]\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        ),
        up,
    )
}

fn curl(pki: &Pki, args: &[&str], url: &str) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca_pem)
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs")
}

#[test]
fn curl_over_tls_12_and_13_with_alpn_http11() {
    let pki = Pki::new("first");
    let up = upstream::Upstream::start();
    let p = proxy::start(&tls_config(&pki, up.addr), Box::new(|_| Box::new(AllowAll))).unwrap();
    let url = format!("https://127.0.0.1:{}/echo", p.tls_addrs()[0].port());
    for (flags, name) in [
        (&["--tlsv1.3"][..], "TLS 1.3"),
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLS 1.2"),
    ] {
        let out = curl(&pki, &[flags, &["-v"]].concat(), &url);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains("X-Forwarded-Proto: https\r\n"),
            "{name}: {body}"
        );
        assert!(
            stderr.contains("server accepted http/1.1")
                || stderr.contains("server accepted to use http/1.1"),
            "{name}: ALPN not http/1.1: {stderr}"
        );
    }
    // TLS 1.1 and below are refused.
    let out = curl(&pki, &["--tlsv1.1", "--tls-max", "1.1"], &url);
    assert!(!out.status.success(), "TLS 1.1 accepted");
    // A client offering h2 first still gets http/1.1.
    let c = TlsClient::connect(p.tls_addrs()[0], pki.client_config(&[b"h2", b"http/1.1"]));
    assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));
    p.shutdown(std::time::Duration::from_secs(1)).unwrap();
}

#[test]
fn certificate_reload_keeps_open_connections() {
    let pki = Pki::new("first");
    let up = upstream::Upstream::start();
    let p = proxy::start(&tls_config(&pki, up.addr), Box::new(|_| Box::new(AllowAll))).unwrap();
    let addr = p.tls_addrs()[0];
    let mut old = TlsClient::connect(addr, pki.client_config(&[b"http/1.1"]));
    assert!(old.get("/echo").starts_with("HTTP/1.1 200"));
    let first_leaf = old.peer_leaf();
    let second_leaf = pki.issue("second");
    assert_ne!(first_leaf, second_leaf);
    // Before reload the old certificate is still served.
    let c = TlsClient::connect(addr, pki.client_config(&[b"http/1.1"]));
    assert_eq!(c.peer_leaf(), first_leaf);
    p.reload_tls().unwrap();
    let mut new = TlsClient::connect(addr, pki.client_config(&[b"http/1.1"]));
    assert_eq!(new.peer_leaf(), second_leaf);
    assert!(new.get("/echo").starts_with("HTTP/1.1 200"));
    // The connection opened before the reload still works.
    assert!(old.get("/echo").starts_with("HTTP/1.1 200"));
    // A broken file on reload is an error naming it; the current certificate stays.
    std::fs::write(&pki.cert, "not a certificate").unwrap();
    let e = p.reload_tls().unwrap_err().to_string();
    assert!(e.contains(&pki.cert.display().to_string()), "{e}");
    let c = TlsClient::connect(addr, pki.client_config(&[b"http/1.1"]));
    assert_eq!(c.peer_leaf(), second_leaf);
}

#[test]
fn bad_certificate_or_key_files_are_named() {
    let pki = Pki::new("x");
    let up = upstream::Upstream::start();
    let gates = || -> edgefilter::gate::GateFactory { Box::new(|_| Box::new(AllowAll)) };
    // Missing certificate file.
    let mut cfg = tls_config(&pki, up.addr);
    cfg.tls.as_mut().unwrap().cert = pki.dir.path().join("missing.pem");
    let e = proxy::start(&cfg, gates()).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    // A key that is not the certificate's.
    let other = pki.dir.path().join("other-key.pem");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let mut cfg = tls_config(&pki, up.addr);
    cfg.tls.as_mut().unwrap().key = other;
    let e = proxy::start(&cfg, gates()).unwrap_err().to_string();
    assert!(e.contains("other-key.pem"), "{e}");
    // Garbage key file.
    std::fs::write(&pki.key, "garbage").unwrap();
    let e = proxy::start(&tls_config(&pki, up.addr), gates())
        .unwrap_err()
        .to_string();
    assert!(e.contains("key.pem"), "{e}");
}
