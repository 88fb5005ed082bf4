//! The pin directory on bpffs: where the program, its links and maps live across restarts.
//!
//! Layout under the pin dir (default `/sys/fs/bpf/edgefilter/`): `prog` (the filter program),
//! one `link_<ifname>_<ifindex>` per attached interface, and one file per map (`EF_*`, and
//! `AYA_LOGS`, the trace events' ring buffer).

use std::path::{Path, PathBuf};

use filter_common::xdp::{ALL_MAPS, TRACE_MAPS};

use super::XdpError;

/// The production pin directory (SPEC §10).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/edgefilter";

/// Overrides the pin directory. **Test-only**: lets test suites run beside a real daemon
/// without touching its pins. Must name a directory on bpffs.
pub const PIN_DIR_ENV: &str = "EDGEFILTER_BPF_PIN_DIR";

const PROG_FILE: &str = "prog";
const LINK_PREFIX: &str = "link_";

/// A pin directory and the names of everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// A pin directory at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// [`PIN_DIR_ENV`] if set, else [`DEFAULT_PIN_DIR`].
    #[must_use]
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os(PIN_DIR_ENV)
                .map_or_else(|| PathBuf::from(DEFAULT_PIN_DIR), PathBuf::from),
        )
    }

    /// The directory itself.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pinned filter program.
    #[must_use]
    pub fn prog(&self) -> PathBuf {
        self.root.join(PROG_FILE)
    }

    /// A pinned map.
    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The pinned link of an interface (the ifindex tells a re-created interface apart).
    #[must_use]
    pub fn link(&self, ifname: &str, ifindex: u32) -> PathBuf {
        self.root.join(format!("{LINK_PREFIX}{ifname}_{ifindex}"))
    }

    /// Whether a program is pinned here (a daemon ran and left filtering in place).
    #[must_use]
    pub fn has_program(&self) -> bool {
        self.prog().exists()
    }

    /// Whether every map is pinned here.
    #[must_use]
    pub fn has_maps(&self) -> bool {
        ALL_MAPS.iter().all(|m| self.map(m).exists())
    }

    /// Every pinned link: (file name without prefix, path).
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn links(&self) -> Result<Vec<(String, PathBuf)>, XdpError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(XdpError::io(
                    format!("reading {}", self.root.display()),
                    source,
                ));
            }
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| XdpError::io(format!("reading {}", self.root.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(LINK_PREFIX) {
                out.push((rest.to_string(), entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Makes sure bpffs is mounted (mounting it at `/sys/fs/bpf` if needed) and the directory exists.
    ///
    /// # Errors
    /// bpffs cannot be mounted or the directory cannot be created there.
    pub fn ensure(&self) -> Result<(), XdpError> {
        let bpffs_root = Path::new("/sys/fs/bpf");
        if self.root.starts_with(bpffs_root) && !is_bpffs(bpffs_root) {
            nix::mount::mount(
                Some("bpf"),
                bpffs_root,
                Some("bpf"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| XdpError::io("mounting bpffs at /sys/fs/bpf", e.into()))?;
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| XdpError::io(format!("creating {}", self.root.display()), e))?;
        if !is_bpffs(&self.root) {
            return Err(XdpError::NotBpffs(self.root.clone()));
        }
        Ok(())
    }

    /// Removes every pin (links first, which detaches them; then the program and the maps) and
    /// the directory. Returns what was removed.
    ///
    /// # Errors
    /// A pin exists but cannot be removed.
    pub fn remove_all(&self) -> Result<Vec<PathBuf>, XdpError> {
        let mut removed = Vec::new();
        let mut paths: Vec<PathBuf> = self.links()?.into_iter().map(|(_, p)| p).collect();
        paths.push(self.prog());
        paths.extend(ALL_MAPS.iter().chain(&TRACE_MAPS).map(|m| self.map(m)));
        for p in paths {
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(XdpError::io(format!("removing {}", p.display()), e)),
            }
        }
        match std::fs::remove_dir(&self.root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(XdpError::io(format!("removing {}", self.root.display()), e)),
        }
        Ok(removed)
    }
}

/// Whether `path` is on a bpf filesystem.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        let d = PinDir::new("/sys/fs/bpf/x");
        assert_eq!(d.prog(), Path::new("/sys/fs/bpf/x/prog"));
        assert_eq!(d.map("EF_PORTS"), Path::new("/sys/fs/bpf/x/EF_PORTS"));
        assert_eq!(d.link("eth0", 7), Path::new("/sys/fs/bpf/x/link_eth0_7"));
    }
}
