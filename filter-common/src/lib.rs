//! Types shared by the XDP program (`filter-ebpf`) and userspace (`filter-user`).
//!
//! Everything here is `no_std` and allocation-free so the kernel side can use it.
//! Map keys and values are `#[repr(C)]`, `Copy`, and use `u32` flags instead of
//! `bool` so their layout has no padding surprises; the aya `Pod` impls live
//! behind the `user` feature.
#![no_std]
#![deny(missing_docs)]

pub mod apikey;
pub mod trace;
pub mod xdp;
