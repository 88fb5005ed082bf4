//! Finding the key in a request's headers (`auth::extract`), on a realistic head of ten headers:
//! `Authorization: Bearer` as the last header, with a tab after the scheme, behind a `Basic`
//! header, and `X-API-Key` (every `Authorization` header is looked at, so the whole list is
//! read in each case).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use edgefilter::auth::extract::{Extracted, extract};
use edgefilter::auth::rules::AuthRules;
use edgefilter::config::Config;

const KEY: &str = "ef_live_0123456789abcdefghijABCDEFGHIJ012345";

fn headers<'a>(last: &[(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
    let common = [
        ("Host", "api.example.com"),
        ("User-Agent", "python-requests/2.32.3"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Content-Type", "application/json"),
        ("Content-Length", "512"),
        ("X-Request-Id", "0123456789abcdef"),
        ("Connection", "keep-alive"),
    ];
    common
        .iter()
        .chain(last)
        .map(|&(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        "[[route]]\nprefix = \"/v1/\"\nupstream = \"http://127.0.0.1:9\"\n",
        dir.path(),
    )
    .unwrap();
    let rules = AuthRules::from_config(&cfg).unwrap();
    let route = &rules.routes[0];
    let bearer = format!("Bearer {KEY}");
    let tab = format!("Bearer\t{KEY}");
    let cases = [
        (
            "bearer",
            headers(&[("Authorization", &bearer), ("Cookie", "a=b")]),
        ),
        (
            "bearer_tab",
            headers(&[("Authorization", &tab), ("Cookie", "a=b")]),
        ),
        (
            "basic_then_bearer",
            headers(&[
                ("Authorization", "Basic Zm9vOmJhcg=="),
                ("Authorization", &bearer),
            ]),
        ),
        (
            "x_api_key",
            headers(&[("X-API-Key", KEY), ("Cookie", "a=b")]),
        ),
    ];
    let mut g = c.benchmark_group("extract");
    for (name, hs) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let found = extract(route, black_box(hs), black_box(None));
                assert!(matches!(found, Extracted::Key { .. }));
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
