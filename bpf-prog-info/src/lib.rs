//! A loaded BPF program's identity — its instruction tag and the ids of the maps it uses —
//! read through a program file descriptor the caller already holds.
//!
//! edgefilter adopts a pinned XDP program only when it is this build's code on the pinned maps.
//! aya's `ProgramInfo::map_ids` reopens the program by its id (`BPF_PROG_GET_FD_BY_ID`), which
//! the kernel allows only with `CAP_SYS_ADMIN`; `BPF_OBJ_GET_INFO_BY_FD` on an fd one holds
//! (from the pin, or from loading) needs nothing beyond the `CAP_BPF` that opened it. No kept
//! crate offers that call safely, so it lives here behind one safe function, and the `edgefilter`
//! crate itself forbids `unsafe`.
#![cfg(target_os = "linux")]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_OBJ_GET_INFO_BY_FD` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_prog_info` up to and including `map_ids`, as the kernel lays it out
/// (every later field was added after these; the kernel fills only the `info_len` bytes it is
/// given, so an older, shorter head is always accepted).
#[repr(C)]
#[derive(Debug, Default)]
struct ProgInfoHead {
    type_: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
}

const _: () = assert!(std::mem::size_of::<ProgInfoHead>() == 64);

/// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What makes two loaded programs interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramIdentity {
    /// The kernel's id of the program.
    pub id: u32,
    /// The instruction tag (a hash of the program's instructions).
    pub tag: [u8; 8],
    /// The ids of the maps the program uses, ascending.
    pub map_ids: Vec<u32>,
}

/// The identity of the program behind `prog` (a BPF program file descriptor).
///
/// # Errors
/// The OS error: `EINVAL` or `EBADF` when `prog` is not a BPF program, `EPERM` without
/// `CAP_BPF` where unprivileged BPF is disabled.
pub fn program_identity(prog: BorrowedFd<'_>) -> io::Result<ProgramIdentity> {
    let mut head = ProgInfoHead::default();
    get_info(prog, &mut head)?;
    // A loaded program's maps never change; the second read fills the ids of as many as the
    // first one counted.
    let mut map_ids = vec![0u32; head.nr_map_ids as usize];
    if !map_ids.is_empty() {
        let wanted = head.nr_map_ids;
        head = ProgInfoHead {
            nr_map_ids: wanted,
            map_ids: map_ids.as_mut_ptr() as u64,
            ..ProgInfoHead::default()
        };
        get_info(prog, &mut head)?;
        map_ids.truncate(head.nr_map_ids.min(wanted) as usize);
    }
    map_ids.sort_unstable();
    Ok(ProgramIdentity {
        id: head.id,
        tag: head.tag,
        map_ids,
    })
}

/// One `BPF_OBJ_GET_INFO_BY_FD` into `head` (whose `map_ids`, when `nr_map_ids` is not 0,
/// points at that many writable `u32`s).
fn get_info(prog: BorrowedFd<'_>, head: &mut ProgInfoHead) -> io::Result<()> {
    let attr = InfoAttr {
        bpf_fd: u32::try_from(prog.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: std::ptr::from_mut(head) as u64,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for this command, its size is passed (the
    // kernel zero-extends a shorter attr); `attr.info` points at `head`, which lives across the
    // call and is `info_len` bytes long; when `head.nr_map_ids` is not 0, `head.map_ids` points
    // at that many `u32`s the caller keeps alive and writable (`program_identity` only). The
    // kernel writes nothing else.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_file_that_is_not_a_program_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = program_identity(f.as_fd()).unwrap_err();
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EBADF | libc::EPERM)
            ),
            "{e}"
        );
    }
}
