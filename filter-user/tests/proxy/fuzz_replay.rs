//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through every fuzz entry point of
//! `edgefilter::fuzz`, then a fixed number of seeded random mutations of each input, so every
//! `cargo xtask test` exercises the parsers' invariants on stable without cargo-fuzz. A failure
//! prints the target, the seed file and the mutated input (hex) to reproduce it.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use edgefilter::proxy::head::Framing;

/// Mutations per corpus input of the byte-level parsers.
const MUTATIONS: usize = 10_000;

/// Mutations per corpus input of the heavier targets (a whole config parsed, written out and
/// read back; five JSON body types).
const FEWER_MUTATIONS: usize = 1_000;

/// Fragments the mutator splices in: the bytes where HTTP framing bugs live.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"%",
    b"%0",
    b"+",
    b"0\r\n\r\n",
    b"Content-Length: ",
    b"Content-Length: 18446744073709551616",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Connection: close",
    b"Connection: keep-alive, Upgrade",
    b"Host: h",
    b"X-Request-Id: ",
    b"X-Forwarded-For: ",
    b"Expect: 100-continue",
    b"HTTP/1.0",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"/../",
    b"?api_key=",
    b"ef_live_",
    b"ffffffffffffffff",
    b"\xff\xfe",
    b"\x00",
    b"\n[[route]]\n",
    b"\n[listen]\n",
    b"\n[tls]\n",
    b" = \"",
    b"\"",
    b"${",
    b"}",
    b"[",
    b"]",
    b"{",
    b"\"30s\"",
    b"\"http://127.0.0.1:9\"",
    b"\"ef_live_",
    b"null",
];

type Target = fn(&[u8]);

/// Every target, with how many mutations of each corpus input it runs.
fn targets() -> [(&'static str, Target, usize); 6] {
    [
        ("request_head", edgefilter::fuzz::request_head, MUTATIONS),
        ("response_head", edgefilter::fuzz::response_head, MUTATIONS),
        ("chunked_body", edgefilter::fuzz::chunked_body, MUTATIONS),
        ("api_key", edgefilter::fuzz::api_key, MUTATIONS),
        ("config", edgefilter::fuzz::config, FEWER_MUTATIONS),
        ("admin_json", edgefilter::fuzz::admin_json, FEWER_MUTATIONS),
    ]
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// One random edit: flip, insert, delete, duplicate a range, or splice a token.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
    let at = |rng: &mut StdRng, len: usize| rng.random_range(0..=len);
    match rng.random_range(0..6) {
        0 if !data.is_empty() => {
            let i = rng.random_range(0..data.len());
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let i = at(rng, data.len());
            data.insert(i, rng.random());
        }
        2 if !data.is_empty() => {
            let i = rng.random_range(0..data.len());
            let n = rng.random_range(1..=8).min(data.len() - i);
            data.drain(i..i + n);
        }
        3 if !data.is_empty() => {
            let i = rng.random_range(0..data.len());
            let n = rng.random_range(1..=16).min(data.len() - i);
            let piece = data[i..i + n].to_vec();
            let j = at(rng, data.len());
            data.splice(j..j, piece);
        }
        _ => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let i = at(rng, data.len());
            data.splice(i..i, token.iter().copied());
        }
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f(data)`, turning a panic into a failure that names the input.
fn run(name: &str, seed: &Path, f: Target, data: &[u8]) {
    if std::panic::catch_unwind(|| f(data)).is_err() {
        panic!(
            "fuzz invariant broken: target {name}, from {}, input (hex) {}",
            seed.display(),
            hex(data)
        );
    }
}

#[test]
fn corpus_inputs_keep_every_invariant() {
    for (name, f, _) in targets() {
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "no corpus for {name}");
        for (path, data) in &inputs {
            run(name, path, f, data);
        }
    }
}

#[test]
fn seeded_mutations_keep_every_invariant() {
    for (t, (name, f, mutations)) in targets().into_iter().enumerate() {
        for (i, (path, seed)) in corpus(name).iter().enumerate() {
            // A fixed seed per (target, input): a failure reproduces on every run.
            let mut rng = StdRng::seed_from_u64(((t as u64) << 32) | i as u64);
            let mut data = seed.clone();
            for _ in 0..mutations {
                for _ in 0..rng.random_range(1..=4) {
                    mutate(&mut rng, &mut data);
                }
                if data.len() > 8192 || rng.random_ratio(1, 8) {
                    data.clone_from(seed);
                }
                run(name, path, f, &data);
            }
        }
    }
}

/// The checks are not vacuous: a forwarded head that kept both framings fails them...
#[test]
#[should_panic(expected = "Content-Length and Transfer-Encoding")]
fn a_forwarded_head_with_both_framings_fails_the_check() {
    edgefilter::fuzz::check_forwarded(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\
          X-Request-Id: r\r\nX-Forwarded-For: 198.18.0.7\r\n\r\n",
        Framing::Length(4),
    );
}

/// ...and so does a rewritten response that passes a hop-by-hop header on.
#[test]
#[should_panic(expected = "hop-by-hop upgrade")]
fn a_response_passing_upgrade_on_fails_the_check() {
    edgefilter::fuzz::check_response(
        b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nX-Request-Id: fuzz-rid\r\n\r\n",
    );
}
