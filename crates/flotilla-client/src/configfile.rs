//! The CLI's config file (`~/.flotilla/config`, or `--config` / `FLOTILLA_CONFIG`): named
//! clusters, their servers and the credentials for them (the cluster CA and a client
//! certificate, base64 PEM as in a kubeconfig), and the current one, so `--server` is not
//! needed day to day. YAML, like a kubeconfig. A server that bootstraps a cluster writes one
//! as `<data-dir>/admin.conf`.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error("no cluster named {name:?} (known: {known})")]
    NoCluster { name: String, known: String },
}

type Result<T> = std::result::Result<T, ConfigFileError>;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_cluster: String,
    #[serde(default)]
    pub clusters: Vec<ClusterEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterEntry {
    pub name: String,
    /// Client API addresses of the cluster's servers (any will do).
    pub servers: Vec<String>,
    /// The cluster CA certificate, base64 of its PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_authority_data: String,
    /// The client certificate and key, base64 of their PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate_data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key_data: String,
}

impl ClusterEntry {
    /// An entry with credentials, as a bootstrapping server writes it.
    pub fn with_credentials(
        name: &str,
        servers: Vec<String>,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Self {
        ClusterEntry {
            name: name.to_string(),
            servers,
            certificate_authority_data: b64(ca_pem),
            client_certificate_data: b64(cert_pem),
            client_key_data: b64(key_pem),
        }
    }

    /// The credentials, if the entry has them; an error names a field that is not base64.
    pub fn tls(&self) -> std::result::Result<Option<TlsFiles>, String> {
        if self.certificate_authority_data.is_empty()
            && self.client_certificate_data.is_empty()
            && self.client_key_data.is_empty()
        {
            return Ok(None);
        }
        let field = |name: &str, v: &str| {
            if v.is_empty() {
                return Err(format!("cluster {:?}: {name} is missing", self.name));
            }
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("cluster {:?}: {name} is not base64 PEM", self.name))
        };
        Ok(Some(TlsFiles {
            ca_pem: field(
                "certificate-authority-data",
                &self.certificate_authority_data,
            )?,
            cert_pem: field("client-certificate-data", &self.client_certificate_data)?,
            key_pem: field("client-key-data", &self.client_key_data)?,
        }))
    }
}

/// `~/.flotilla/config`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flotilla").join("config"))
}

impl ClientConfig {
    /// Read `path`; a missing file is an empty config when `must_exist` is false.
    pub fn load(path: &Path, must_exist: bool) -> Result<ClientConfig> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(ClientConfig::default())
            }
            Err(error) => return Err(ConfigFileError::Read { path: shown, error }),
        };
        let c: ClientConfig =
            serde_yaml_ng::from_str(&text).map_err(|e| ConfigFileError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        if !c.current_cluster.is_empty() && c.cluster(&c.current_cluster).is_none() {
            return Err(ConfigFileError::Invalid {
                path: shown,
                message: format!(
                    "current-cluster {:?} is not among its clusters",
                    c.current_cluster
                ),
            });
        }
        Ok(c)
    }

    /// Written whole to a temporary file, then renamed; readable by the owner only (it holds
    /// a private key).
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |p: &Path| {
            let path = p.display().to_string();
            move |error| ConfigFileError::Write { path, error }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr(dir))?;
        }
        let text = serde_yaml_ng::to_string(self).map_err(|e| ConfigFileError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr(&tmp))?;
        f.write_all(text.as_bytes()).map_err(werr(&tmp))?;
        f.sync_all().map_err(werr(&tmp))?;
        std::fs::rename(&tmp, path).map_err(werr(path))
    }

    /// The config with credentials replaced, for `config view` (as kubectl's REDACTED).
    pub fn redacted(&self) -> ClientConfig {
        let mut c = self.clone();
        for e in &mut c.clusters {
            for f in [
                &mut e.certificate_authority_data,
                &mut e.client_certificate_data,
                &mut e.client_key_data,
            ] {
                if !f.is_empty() {
                    *f = "REDACTED".into();
                }
            }
        }
        c
    }

    /// The current cluster's entry, if one is set.
    pub fn current(&self) -> Option<&ClusterEntry> {
        self.cluster(&self.current_cluster)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterEntry> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The current cluster's servers, if one is set.
    pub fn current_servers(&self) -> Option<Vec<String>> {
        self.cluster(&self.current_cluster)
            .map(|c| c.servers.clone())
    }

    /// Add a cluster or set its servers (keeping its credentials); the first one added
    /// becomes current.
    pub fn set_cluster(&mut self, name: &str, servers: Vec<String>) {
        match self.clusters.iter_mut().find(|c| c.name == name) {
            Some(c) => c.servers = servers,
            None => self.clusters.push(ClusterEntry {
                name: name.to_string(),
                servers,
                certificate_authority_data: String::new(),
                client_certificate_data: String::new(),
                client_key_data: String::new(),
            }),
        }
        if self.current_cluster.is_empty() {
            self.current_cluster = name.to_string();
        }
    }

    pub fn use_cluster(&mut self, name: &str) -> Result<()> {
        if self.cluster(name).is_none() {
            let known: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
            return Err(ConfigFileError::NoCluster {
                name: name.to_string(),
                known: known.join(", "),
            });
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

        // Credentials round-trip, are kept by set-cluster, and are redacted for viewing.
        let mut c = ClientConfig::default();
        c.clusters.push(ClusterEntry::with_credentials(
            "x",
            vec!["127.0.0.1:1".into()],
            "CA",
            "CERT",
            "KEY",
        ));
        c.current_cluster = "x".into();
        c.set_cluster("x", vec!["127.0.0.1:2".into()]);
        c.save(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let back = ClientConfig::load(&path, true).unwrap();
        let tls = back.current().unwrap().tls().unwrap().unwrap();
        assert_eq!((tls.ca_pem.as_str(), tls.key_pem.as_str()), ("CA", "KEY"));
        assert_eq!(back.current_servers().unwrap(), vec!["127.0.0.1:2"]);
        let shown = serde_yaml_ng::to_string(&back.redacted()).unwrap();
        assert!(
            shown.contains("REDACTED") && !shown.contains(&b64("KEY")),
            "{shown}"
        );
    }
}
