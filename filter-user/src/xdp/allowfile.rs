//! The effective allowlist: `xdp.allow` from the config, plus runtime additions, minus runtime
//! removals (`edgefilter allow add|remove`), the runtime part persisted as `allowlist.json`
//! beside the store.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::XdpError;
use crate::config::Config;

/// File name, in the directory of `store.path`.
pub const FILE_NAME: &str = "allowlist.json";

/// Where a prefix of the effective allowlist comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `xdp.allow` in the config file.
    Config,
    /// `edgefilter allow add`.
    Runtime,
}

/// Runtime changes on top of the config's allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowFile {
    /// Prefixes added at run time (not in the config).
    #[serde(default)]
    pub added: Vec<IpNet>,
    /// Config prefixes removed at run time.
    #[serde(default)]
    pub removed: Vec<IpNet>,
}

/// The path of the runtime allowlist for `cfg`.
#[must_use]
pub fn path_for(cfg: &Config) -> PathBuf {
    let store = cfg.resolve(&cfg.store.path);
    store
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join(FILE_NAME)
}

impl AllowFile {
    /// Reads the file; a missing file is an empty one.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, XdpError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| XdpError::AllowFile {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(XdpError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the file atomically (temp file + rename), creating its directory.
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), XdpError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| XdpError::io(format!("creating {}", dir.display()), e))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut text = serde_json::to_string_pretty(self).map_err(|e| XdpError::AllowFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        text.push('\n');
        std::fs::write(&tmp, text)
            .map_err(|e| XdpError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| XdpError::io(format!("writing {}", path.display()), e))
    }

    /// Adds `net`; `false` when it already was in the effective allowlist.
    pub fn add(&mut self, config_allow: &[IpNet], net: IpNet) -> bool {
        let net = net.trunc();
        let was = self.contains(config_allow, net);
        self.removed.retain(|n| n.trunc() != net);
        if !config_allow.iter().any(|n| n.trunc() == net) && !self.added.contains(&net) {
            self.added.push(net);
        }
        !was
    }

    /// Removes `net`; `false` when it was not in the effective allowlist.
    pub fn remove(&mut self, config_allow: &[IpNet], net: IpNet) -> bool {
        let net = net.trunc();
        let was = self.contains(config_allow, net);
        self.added.retain(|n| n.trunc() != net);
        if config_allow.iter().any(|n| n.trunc() == net) && !self.removed.contains(&net) {
            self.removed.push(net);
        }
        was
    }

    fn contains(&self, config_allow: &[IpNet], net: IpNet) -> bool {
        self.effective(config_allow).iter().any(|(n, _)| *n == net)
    }

    /// The effective allowlist with each prefix's origin, sorted, without duplicates.
    #[must_use]
    pub fn effective(&self, config_allow: &[IpNet]) -> Vec<(IpNet, Origin)> {
        let removed: Vec<IpNet> = self.removed.iter().map(IpNet::trunc).collect();
        let mut out: Vec<(IpNet, Origin)> = config_allow
            .iter()
            .map(|n| (n.trunc(), Origin::Config))
            .chain(self.added.iter().map(|n| (n.trunc(), Origin::Runtime)))
            .filter(|(n, _)| !removed.contains(n))
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out.dedup_by_key(|(n, _)| *n);
        out
    }
}

/// The effective allowlist of `cfg` (config + `allowlist.json`).
///
/// # Errors
/// `allowlist.json` exists but cannot be read.
pub fn effective(cfg: &Config) -> Result<Vec<(IpNet, Origin)>, XdpError> {
    Ok(AllowFile::load(&path_for(cfg))?.effective(&cfg.xdp.allow))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn add_and_remove_track_origin() {
        let cfg = vec![n("10.0.0.0/8"), n("2001:db8::/32")];
        let mut f = AllowFile::default();
        assert!(f.add(&cfg, n("192.0.2.7/24")));
        assert!(
            !f.add(&cfg, n("192.0.2.0/24")),
            "same prefix after normalising"
        );
        assert!(
            !f.add(&cfg, n("10.0.0.0/8")),
            "already there from the config"
        );
        assert!(f.remove(&cfg, n("10.0.0.0/8")));
        assert!(!f.remove(&cfg, n("10.0.0.0/8")));
        assert_eq!(
            f.effective(&cfg),
            vec![
                (n("192.0.2.0/24"), Origin::Runtime),
                (n("2001:db8::/32"), Origin::Config)
            ]
        );
        assert!(
            f.add(&cfg, n("10.0.0.0/8")),
            "re-adding a removed config prefix"
        );
        assert!(f.removed.is_empty() && f.added == vec![n("192.0.2.0/24")]);
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/allowlist.json");
        assert_eq!(AllowFile::load(&p).unwrap(), AllowFile::default());
        let f = AllowFile {
            added: vec![n("198.18.0.0/15")],
            removed: vec![n("fd00:ef::/64")],
        };
        f.save(&p).unwrap();
        assert_eq!(AllowFile::load(&p).unwrap(), f);
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(
            AllowFile::load(&p),
            Err(XdpError::AllowFile { .. })
        ));
    }
}
