//! The module layering written at the top of `src/lib.rs` holds: every `crate::…` path in
//! `src/` points to a lower layer (or within its own module), and no two files of one module
//! import each other, directly or round a circle.
//!
//! It reads the source as text: `use crate::…` lines (with `{…}` groups) and inline
//! `crate::…` paths, comments left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `layer -> modules` from the `//! N. [`a`], [`b`] — …` lines of lib.rs.
fn written_layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((num, tail)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(n) = num.parse::<usize>() else {
            continue;
        };
        let names = tail.split(" — ").next().unwrap_or_default();
        for part in names.split(", ") {
            let name = part.trim().trim_start_matches("[`").trim_end_matches("`]");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "lib.rs layer line {n} names `{name}`, not a module"
            );
            assert!(
                layers.insert(name.to_owned(), n).is_none(),
                "`{name}` is listed twice in lib.rs's layers"
            );
        }
    }
    layers
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments and without string literals.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                }
                prev = if prev == '\\' && c == '\\' { ' ' } else { c };
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\'' {
                in_str = true;
                prev = ' ';
                continue;
            }
            out.push(c);
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every path that follows `prefix` (`crate::` or `super::`), as its segments, with `{…}`
/// groups expanded one level (`crate::{a::X, b}` gives `a::X` and `b`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut heads: Vec<String> = Vec::new();
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => heads.push(std::mem::take(&mut item)),
                    _ => item.push(c),
                }
            }
            heads.push(item);
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            heads.push(rest[..end].to_owned());
        }
        for h in heads {
            let segs: Vec<String> = h
                .split("::")
                .map(|s| s.trim().to_owned())
                .take_while(|s| !s.is_empty() && !s.starts_with('{'))
                .collect();
            if !segs.is_empty() {
                found.push(segs);
            }
        }
    }
    found
}

/// The module path of a file: `src/proxy/conn.rs` -> [proxy, conn]; `src/proxy/mod.rs` ->
/// [proxy]; `src/lib.rs` -> [].
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir()).expect("under src");
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if segs
        .last()
        .is_some_and(|s| s == "mod" || s == "lib" || s == "main")
    {
        segs.pop();
    }
    segs
}

struct Source {
    module: Vec<String>,
    is_facade: bool,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    files
        .iter()
        .map(|f| Source {
            module: module_of(f),
            is_facade: f
                .file_name()
                .is_some_and(|n| n == "mod.rs" || n == "lib.rs"),
            code: code_only(&std::fs::read_to_string(f).expect("read source")),
        })
        .collect()
}

#[test]
fn every_module_uses_only_lower_layers() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
    let layers = written_layers(&lib);
    assert!(
        layers.len() >= 10,
        "lib.rs lists too few layers: {layers:?}"
    );
    let mut declared = BTreeSet::new();
    for line in code_only(&lib).lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ") {
            declared.insert(name.trim_end_matches(';').to_owned());
        }
    }
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        declared, listed,
        "lib.rs's modules and its written layers differ"
    );

    let mut wrong = Vec::new();
    for s in sources() {
        let Some(top) = s.module.first() else {
            continue;
        };
        let Some(&mine) = layers.get(top) else {
            continue;
        };
        for path in paths_after(&s.code, "crate::") {
            let to = &path[0];
            if to == top {
                continue;
            }
            match layers.get(to) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!(
                    "{} (layer {mine}) uses crate::{} (layer {theirs})",
                    s.module.join("::"),
                    path.join("::")
                )),
                None => wrong.push(format!(
                    "{} uses crate::{}, which is in no layer",
                    s.module.join("::"),
                    path.join("::")
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "edges against the layers in lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_of_a_module_import_each_other() {
    // Sibling files of one directory, minus its mod.rs (the module's facade): file -> siblings.
    let srcs = sources();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let all: BTreeSet<Vec<String>> = srcs.iter().map(|s| s.module.clone()).collect();
    for s in srcs.iter().filter(|s| !s.is_facade && s.module.len() >= 2) {
        let parent = &s.module[..s.module.len() - 1];
        let mut targets = Vec::new();
        for p in paths_after(&s.code, "super::") {
            let mut m = parent.to_vec();
            m.push(p[0].clone());
            targets.push(m);
        }
        for p in paths_after(&s.code, "crate::") {
            if p.len() > parent.len() && p[..parent.len()] == *parent {
                targets.push(p[..=parent.len()].to_vec());
            }
        }
        for t in targets {
            if t != s.module && all.contains(&t) {
                edges.entry(s.module.clone()).or_default().insert(t);
            }
        }
    }
    // A depth-first search for a circle.
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|x| x == n).unwrap_or(0);
                let mut circle = stack[at..].to_vec();
                circle.push(n.clone());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        let mut stack = Vec::new();
        if let Some(circle) = visit(n, &edges, &mut state, &mut stack) {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            panic!(
                "files of one module import each other: {}",
                names.join(" -> ")
            );
        }
    }
}

#[test]
fn the_reader_sees_grouped_and_inline_paths() {
    let code = code_only(
        "use crate::{a::X, b};\nlet s = \"crate::fake\"; // crate::comment\nf(crate::c::d());\nuse super::e::F;\n",
    );
    let got = paths_after(&code, "crate::");
    assert_eq!(
        got,
        vec![
            vec!["a".to_owned(), "X".to_owned()],
            vec!["b".to_owned()],
            vec!["c".to_owned(), "d".to_owned()],
        ]
    );
    assert_eq!(
        paths_after(&code, "super::"),
        vec![vec!["e".to_owned(), "F".to_owned()]]
    );
    let layers = written_layers("//! 1. [`a`], [`b`] — x\n//! 2. [`c`] — y\n");
    assert_eq!(layers.get("b"), Some(&1));
    assert_eq!(layers.get("c"), Some(&2));
}
