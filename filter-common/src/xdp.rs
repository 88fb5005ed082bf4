//! XDP map layouts, counter reasons and runtime config shared by kernel and userspace.
