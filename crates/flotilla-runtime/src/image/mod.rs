//! The node's content-addressed image store and the registry client.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: compressed layers and image configs exactly as the registry served
//!   them, each checked against its digest before it is renamed into place;
//! - `layers/sha256/<hex>`: each layer unpacked into its own directory (named by diff_id), the
//!   lower layers of container root filesystems;
//! - `refs/<sha256 of reference>.pb`: one `ImageRecord` per pulled reference;
//! - `tmp/`: downloads and unpacks in progress (emptied at open).
//!
//! Pulls are serialised (kubelet's `serializeImagePulls` default): one registry is not
//! stampeded, and a pull never races the garbage collector.

pub mod unpack;

use flotilla_api::pb::node::{ImageConfig, ImageRecord};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use prost::Message;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::Digest;
use crate::error::{Result, RuntimeError};
use unpack::Compression;

/// Largest image config accepted (configs are small JSON; this bounds memory).
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Kubernetes' `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Parses the Kubernetes spelling; empty means the default for `reference` (Always for
    /// `:latest` or no tag, else IfNotPresent).
    pub fn parse(policy: &str, reference: &str) -> Result<Self> {
        match policy {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            "" => {
                let r = parse_reference(reference)?;
                if r.digest().is_none() && r.tag().is_none_or(|t| t == "latest") {
                    Ok(PullPolicy::Always)
                } else {
                    Ok(PullPolicy::IfNotPresent)
                }
            }
            other => Err(RuntimeError::InvalidConfig(format!(
                "imagePullPolicy {other:?}: must be Always, IfNotPresent or Never"
            ))),
        }
    }
}

/// Registry settings for the node.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host:port`) reached over plain HTTP, e.g. a loopback test registry.
    pub insecure: Vec<String>,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            connect_timeout_ms: 10_000,
            read_timeout_ms: 60_000,
        }
    }
}

/// What a garbage collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images: usize,
    pub blobs: usize,
    pub layers: usize,
}

pub fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|e| RuntimeError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

pub struct ImageStore {
    root: PathBuf,
    client: Client,
    pull_lock: tokio::sync::Mutex<()>,
}

impl ImageStore {
    /// Opens (creating) the store at `root`. Leftovers of interrupted pulls are removed.
    pub fn open(root: impl Into<PathBuf>, registries: &RegistryConfig) -> Result<Self> {
        let root = root.into();
        for d in ["blobs/sha256", "layers/sha256", "refs"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(RuntimeError::io("create image store", &p))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(RuntimeError::io("clean image store tmp", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(RuntimeError::io("create image store", &tmp))?;
        crate::install_crypto_provider();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(registries.insecure.clone()),
            connect_timeout: Some(Duration::from_millis(registries.connect_timeout_ms)),
            read_timeout: Some(Duration::from_millis(registries.read_timeout_ms)),
            ..Default::default()
        });
        Ok(ImageStore {
            root,
            client,
            pull_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the unpacked layer with this diff_id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn record_path(&self, reference: &Reference) -> PathBuf {
        let name = Digest::of(reference.whole().as_bytes());
        self.root.join("refs").join(format!("{}.pb", name.hex()))
    }

    /// The record for `reference` if the image and all its layers are on the node.
    pub fn get(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let r = parse_reference(reference)?;
        self.get_parsed(&r)
    }

    fn get_parsed(&self, r: &Reference) -> Result<Option<ImageRecord>> {
        let path = self.record_path(r);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RuntimeError::io("read image record", &path)(e)),
        };
        let rec =
            ImageRecord::decode(bytes.as_slice()).map_err(|e| RuntimeError::CorruptRecord {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        for d in &rec.diff_ids {
            let d = Digest::parse(d)?;
            if !self.layer_dir(&d).is_dir() {
                return Ok(None);
            }
        }
        Ok(Some(rec))
    }

    /// All image records on the node.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(RuntimeError::io("list images", &dir))? {
            let path = e.map_err(RuntimeError::io("list images", &dir))?.path();
            if path.extension().is_some_and(|x| x == "pb") {
                let bytes =
                    fs::read(&path).map_err(RuntimeError::io("read image record", &path))?;
                out.push(ImageRecord::decode(bytes.as_slice()).map_err(|e| {
                    RuntimeError::CorruptRecord {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Makes `reference` present according to `policy` and returns its record.
    pub async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<ImageRecord> {
        let r = parse_reference(reference)?;
        match policy {
            PullPolicy::Never => {
                self.get_parsed(&r)?
                    .ok_or_else(|| RuntimeError::ImageNotPresent {
                        reference: r.whole(),
                    })
            }
            PullPolicy::IfNotPresent => match self.get_parsed(&r)? {
                Some(rec) => Ok(rec),
                None => self.pull(&r).await,
            },
            PullPolicy::Always => self.pull(&r).await,
        }
    }

    async fn pull(&self, r: &Reference) -> Result<ImageRecord> {
        let _guard = self.pull_lock.lock().await;
        let whole = r.whole();
        let pull_err = |e: oci_client::errors::OciDistributionError| RuntimeError::Pull {
            reference: whole.clone(),
            message: e.to_string(),
        };
        let (manifest, manifest_digest) = self
            .client
            .pull_image_manifest(r, &RegistryAuth::Anonymous)
            .await
            .map_err(pull_err)?;
        if let Some(want) = r.digest() {
            if want != manifest_digest {
                return Err(RuntimeError::DigestMismatch {
                    what: format!("manifest of {whole}"),
                    expected: want.to_string(),
                    actual: manifest_digest,
                });
            }
        }
        // Same manifest as the record we have: nothing to fetch.
        if let Some(rec) = self.get_parsed(r)? {
            if rec.manifest_digest == manifest_digest {
                return Ok(rec);
            }
        }
        let config_digest = Digest::parse(&manifest.config.digest)?;
        self.fetch_blob(r, &manifest.config, &config_digest, MAX_CONFIG_BYTES)
            .await?;
        let config_path = self.blob_path(&config_digest);
        let config_bytes =
            fs::read(&config_path).map_err(RuntimeError::io("read image config", &config_path))?;
        if Digest::of(&config_bytes) != config_digest {
            let _ = fs::remove_file(&config_path);
            return Err(RuntimeError::DigestMismatch {
                what: format!("stored image config {}", config_path.display()),
                expected: config_digest.to_string(),
                actual: Digest::of(&config_bytes).to_string(),
            });
        }
        let image_config = oci_spec::image::ImageConfiguration::from_reader(
            config_bytes.as_slice(),
        )
        .map_err(|e| RuntimeError::InvalidImageConfig {
            digest: config_digest.to_string(),
            reason: e.to_string(),
        })?;
        let diff_ids: Vec<Digest> = image_config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<_>>()?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(RuntimeError::InvalidImageConfig {
                digest: config_digest.to_string(),
                reason: format!(
                    "{} diff_ids for {} layers in the manifest",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        let mut layer_digests = Vec::new();
        let mut size_bytes = 0u64;
        for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            let blob_digest = Digest::parse(&layer.digest)?;
            layer_digests.push(blob_digest.to_string());
            size_bytes += u64::try_from(layer.size).unwrap_or(0);
            let dest = self.layer_dir(diff_id);
            if dest.is_dir() {
                continue;
            }
            let compression = Compression::from_media_type(&layer.media_type)?;
            self.fetch_blob(r, layer, &blob_digest, u64::MAX).await?;
            let blob = self.blob_path(&blob_digest);
            let tmp = self
                .root
                .join("tmp")
                .join(format!("layer-{}", diff_id.hex()));
            let _ = fs::remove_dir_all(&tmp);
            let (tmp2, diff) = (tmp.clone(), diff_id.clone());
            tokio::task::spawn_blocking(move || {
                unpack::unpack_layer(&blob, compression, &blob_digest, &diff, &tmp2)
            })
            .await
            .map_err(|e| RuntimeError::Layer {
                digest: layer.digest.clone(),
                reason: format!("unpack task failed: {e}"),
            })??;
            fs::rename(&tmp, &dest).map_err(RuntimeError::io("store layer", &dest))?;
        }
        let cfg = image_config.config().clone().unwrap_or_default();
        let rec = ImageRecord {
            reference: whole,
            manifest_digest,
            config_digest: config_digest.to_string(),
            layer_digests,
            diff_ids: diff_ids.iter().map(|d| d.to_string()).collect(),
            config: Some(ImageConfig {
                entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
                cmd: cfg.cmd().clone().unwrap_or_default(),
                env: cfg.env().clone().unwrap_or_default(),
                working_dir: cfg.working_dir().clone().unwrap_or_default(),
                user: cfg.user().clone().unwrap_or_default(),
            }),
            pulled_unix_ms: now_ms(),
            size_bytes,
        };
        self.write_record(r, &rec)?;
        Ok(rec)
    }

    /// Downloads one blob into `blobs/` unless present; oci-client checks the digest while
    /// streaming, and only a checked file is renamed into place.
    async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &oci_client::manifest::OciDescriptor,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        if u64::try_from(desc.size).map_or(true, |n| n > max_bytes) {
            return Err(RuntimeError::Pull {
                reference: r.whole(),
                message: format!("blob {digest} is {} bytes, over {max_bytes}", desc.size),
            });
        }
        let tmp = self.root.join("tmp").join(format!("blob-{}", digest.hex()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(RuntimeError::io("create blob", &tmp))?;
        let res = self.client.pull_blob(r, desc, file).await;
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(RuntimeError::Pull {
                reference: r.whole(),
                message: e.to_string(),
            });
        }
        fs::rename(&tmp, &path).map_err(RuntimeError::io("store blob", &path))
    }

    fn write_record(&self, r: &Reference, rec: &ImageRecord) -> Result<()> {
        let path = self.record_path(r);
        write_atomic(&path, &rec.encode_to_vec())
    }

    /// Removes every image whose reference is not in `keep`, then every blob and layer no
    /// remaining image uses. References in `keep` are compared normalised.
    pub async fn gc(&self, keep: &HashSet<String>) -> Result<GcReport> {
        let _guard = self.pull_lock.lock().await;
        let keep: HashSet<String> = keep
            .iter()
            .filter_map(|k| parse_reference(k).ok().map(|r| r.whole()))
            .collect();
        let mut report = GcReport::default();
        let mut used_blobs = HashSet::new();
        let mut used_layers = HashSet::new();
        for rec in self.list()? {
            if keep.contains(&rec.reference) {
                used_blobs.insert(rec.config_digest.clone());
                used_blobs.extend(rec.layer_digests.iter().cloned());
                used_layers.extend(rec.diff_ids.iter().cloned());
            } else {
                let r = parse_reference(&rec.reference)?;
                let path = self.record_path(&r);
                fs::remove_file(&path).map_err(RuntimeError::io("remove image record", &path))?;
                report.images += 1;
            }
        }
        for (dir, used, count) in [
            ("blobs/sha256", &used_blobs, &mut report.blobs),
            ("layers/sha256", &used_layers, &mut report.layers),
        ] {
            let dir = self.root.join(dir);
            for e in fs::read_dir(&dir).map_err(RuntimeError::io("list image store", &dir))? {
                let e = e.map_err(RuntimeError::io("list image store", &dir))?;
                let name = format!("sha256:{}", e.file_name().to_string_lossy());
                if !used.contains(&name) {
                    let p = e.path();
                    if p.is_dir() {
                        fs::remove_dir_all(&p).map_err(RuntimeError::io("remove layer", &p))?;
                    } else {
                        fs::remove_file(&p).map_err(RuntimeError::io("remove blob", &p))?;
                    }
                    *count += 1;
                }
            }
        }
        Ok(report)
    }
}

/// Writes `data` to `path` through a temporary file, fsync and rename, so a crash leaves either
/// the old or the new content.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(RuntimeError::io("create", &tmp))?;
    f.write_all(data).map_err(RuntimeError::io("write", &tmp))?;
    f.sync_all().map_err(RuntimeError::io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(RuntimeError::io("rename", path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_follow_the_tag() {
        assert_eq!(PullPolicy::parse("", "nginx").unwrap(), PullPolicy::Always);
        assert_eq!(
            PullPolicy::parse("", "nginx:latest").unwrap(),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::parse("", "nginx:1.7.9").unwrap(),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::parse("", "127.0.0.1:5000/busybox:1.36").unwrap(),
            PullPolicy::IfNotPresent
        );
        assert_eq!(PullPolicy::parse("Never", "x").unwrap(), PullPolicy::Never);
        assert!(PullPolicy::parse("Sometimes", "x").is_err());
    }
}
