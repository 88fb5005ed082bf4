//! Embeds the XDP object built by `cargo xtask build-ebpf` (or `EDGEFILTER_EBPF_OBJ`).
//! Without it the binary still builds (for clippy and non-XDP work) and says at run time
//! that it has no XDP program.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/filter-ebpf");
    let src = std::env::var_os("EDGEFILTER_EBPF_OBJ").map_or(default, PathBuf::from);
    println!("cargo:rerun-if-env-changed=EDGEFILTER_EBPF_OBJ");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("filter-ebpf.o");
    if std::fs::copy(&src, &out).is_err() {
        println!(
            "cargo:warning=no XDP object at {}: run `cargo xtask build-ebpf`; this build cannot attach XDP",
            src.display()
        );
        std::fs::write(&out, b"").expect("writing OUT_DIR");
    }
}
