//! The CLI's config file (`~/.flotilla/config`, or `--config` / `FLOTILLA_CONFIG`): named
//! clusters and the current one, so `--server` is not needed day to day. YAML, like a
//! kubeconfig.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_cluster: String,
    #[serde(default)]
    pub clusters: Vec<ClusterEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEntry {
    pub name: String,
    /// Client API addresses of the cluster's servers (any will do).
    pub servers: Vec<String>,
}

/// `~/.flotilla/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flotilla").join("config"))
}

impl ClientConfig {
    /// Read `path`; a missing file is an empty config when `must_exist` is false.
    pub fn load(path: &Path, must_exist: bool) -> anyhow::Result<ClientConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(ClientConfig::default())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read config {}", path.display()))
            }
        };
        let c: ClientConfig = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        if !c.current_cluster.is_empty() && c.cluster(&c.current_cluster).is_none() {
            bail!(
                "config {}: current-cluster {:?} is not among its clusters",
                path.display(),
                c.current_cluster
            );
        }
        Ok(c)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_yaml_ng::to_string(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterEntry> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The current cluster's servers, if one is set.
    pub fn current_servers(&self) -> Option<Vec<String>> {
        self.cluster(&self.current_cluster)
            .map(|c| c.servers.clone())
    }

    /// Add or replace a cluster; the first one added becomes current.
    pub fn set_cluster(&mut self, name: &str, servers: Vec<String>) {
        match self.clusters.iter_mut().find(|c| c.name == name) {
            Some(c) => c.servers = servers,
            None => self.clusters.push(ClusterEntry {
                name: name.to_string(),
                servers,
            }),
        }
        if self.current_cluster.is_empty() {
            self.current_cluster = name.to_string();
        }
    }

    pub fn use_cluster(&mut self, name: &str) -> anyhow::Result<()> {
        if self.cluster(name).is_none() {
            let known: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
            bail!("no cluster named {name:?} (known: {})", known.join(", "));
        }
        self.current_cluster = name.to_string();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config");
        let mut c = ClientConfig::load(&path, false).unwrap();
        assert_eq!(c, ClientConfig::default());
        assert!(ClientConfig::load(&path, true).is_err());
        c.set_cluster("local", vec!["127.0.0.1:7101".into()]);
        c.set_cluster(
            "five",
            vec!["127.0.0.1:7201".into(), "127.0.0.1:7202".into()],
        );
        assert_eq!(c.current_cluster, "local");
        c.use_cluster("five").unwrap();
        assert!(c
            .use_cluster("nope")
            .unwrap_err()
            .to_string()
            .contains("known: local, five"));
        c.save(&path).unwrap();
        let back = ClientConfig::load(&path, true).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.current_servers().unwrap().len(), 2);
        std::fs::write(&path, "current-cluster: x\nclusters: []\n").unwrap();
        assert!(ClientConfig::load(&path, true)
            .unwrap_err()
            .to_string()
            .contains("current-cluster"));
        std::fs::write(&path, "bogus: 1\n").unwrap();
        assert!(ClientConfig::load(&path, true).is_err());
    }
}
