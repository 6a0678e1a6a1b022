//! Unpacks one image layer (a tar, maybe gzip- or zstd-compressed) into its own directory, in
//! the form overlayfs reads as a lower layer: an OCI whiteout `.wh.NAME` becomes a 0/0 character
//! device and an opaque marker `.wh..wh..opq` becomes the `trusted.overlay.opaque` xattr. Both
//! digests are checked while reading: the compressed one (the blob) and the uncompressed one
//! (the config's diff_id), so a corrupted blob on disk is caught here too.

use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Result, RuntimeError};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Result<Self> {
        let m = media_type;
        if m.ends_with(".tar+gzip") || m.ends_with(".tar.gzip") {
            Ok(Compression::Gzip)
        } else if m.ends_with(".tar+zstd") || m.ends_with(".tar.zstd") {
            Ok(Compression::Zstd)
        } else if m.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(RuntimeError::UnsupportedMediaType(m.to_string()))
        }
    }
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks `blob` into `dest` (which must not exist), checking `blob_digest` and `diff_id`.
/// On any error `dest` is removed. Returns the uncompressed size in bytes.
pub fn unpack_layer(
    blob: &Path,
    compression: Compression,
    blob_digest: &Digest,
    diff_id: &Digest,
    dest: &Path,
) -> Result<u64> {
    let result = unpack_inner(blob, compression, blob_digest, diff_id, dest);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(
    blob: &Path,
    compression: Compression,
    blob_digest: &Digest,
    diff_id: &Digest,
    dest: &Path,
) -> Result<u64> {
    let layer_err = |reason: String| RuntimeError::Layer {
        digest: blob_digest.to_string(),
        reason,
    };
    fs::create_dir(dest).map_err(RuntimeError::io("create layer directory", dest))?;
    let file = fs::File::open(blob).map_err(RuntimeError::io("open layer blob", blob))?;
    let mut compressed = HashingReader {
        inner: io::BufReader::new(file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let (actual_diff, size) = {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut compressed),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut compressed)),
            Compression::Zstd => Box::new(
                zstd::Decoder::new(&mut compressed).map_err(|e| layer_err(format!("zstd: {e}")))?,
            ),
        };
        let mut plain = HashingReader {
            inner: decoder,
            hasher: Sha256::new(),
            bytes: 0,
        };
        extract(&mut plain, dest).map_err(|e| match e {
            RuntimeError::Io {
                op: "read layer",
                source,
                ..
            } => layer_err(format!("{source}")),
            other => other,
        })?;
        // A tar ends with zero blocks the archive reader may leave unread; they count.
        io::copy(&mut plain, &mut io::sink()).map_err(|e| layer_err(format!("read: {e}")))?;
        (Digest::from_hasher(plain.hasher), plain.bytes)
    };
    io::copy(&mut compressed, &mut io::sink()).map_err(|e| layer_err(format!("read: {e}")))?;
    let actual_blob = Digest::from_hasher(compressed.hasher);
    if &actual_blob != blob_digest {
        return Err(RuntimeError::DigestMismatch {
            what: format!("layer blob {}", blob.display()),
            expected: blob_digest.to_string(),
            actual: actual_blob.to_string(),
        });
    }
    if &actual_diff != diff_id {
        return Err(RuntimeError::DigestMismatch {
            what: format!("uncompressed layer {blob_digest}"),
            expected: diff_id.to_string(),
            actual: actual_diff.to_string(),
        });
    }
    Ok(size)
}

/// Extracts a tar stream into `dest`, translating OCI whiteouts for overlayfs.
pub fn extract(reader: impl Read, dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(RuntimeError::io("read layer", dest))?;
    for entry in entries {
        let mut entry = entry.map_err(RuntimeError::io("read layer", dest))?;
        let raw = entry
            .path()
            .map_err(RuntimeError::io("read layer", dest))?
            .into_owned();
        let rel = clean_path(&raw).ok_or_else(|| RuntimeError::Layer {
            digest: dest.display().to_string(),
            reason: format!("entry {} escapes the layer", raw.display()),
        })?;
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue; // the root directory itself
        };
        let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            fs::create_dir_all(&parent).map_err(RuntimeError::io("create directory", &parent))?;
            xattr_set(&parent, "trusted.overlay.opaque", b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(RuntimeError::Layer {
                    digest: dest.display().to_string(),
                    reason: format!("bad whiteout {}", raw.display()),
                });
            }
            fs::create_dir_all(&parent).map_err(RuntimeError::io("create directory", &parent))?;
            let target = parent.join(hidden);
            remove_any(&target)?;
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(RuntimeError::sys("create whiteout", &target))?;
            continue;
        }
        // unpack_in refuses paths that leave `dest`, also through symlinks in the layer.
        entry
            .unpack_in(dest)
            .map_err(RuntimeError::io("unpack layer entry", dest.join(&rel)))?;
    }
    Ok(())
}

/// The entry's path relative to the layer root, or None when it would leave it.
fn clean_path(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(p).map_err(RuntimeError::io("remove for whiteout", p))
        }
        Ok(_) => fs::remove_file(p).map_err(RuntimeError::io("remove for whiteout", p)),
        Err(_) => Ok(()),
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::InvalidConfig(format!("path {} has a NUL", path.display())))?;
    let c_name = std::ffi::CString::new(name).expect("static xattr name");
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(RuntimeError::Io {
            op: "set opaque xattr",
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn media_types() {
        use Compression::*;
        for (m, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
        ] {
            assert_eq!(Compression::from_media_type(m).unwrap(), c, "{m}");
        }
        assert!(Compression::from_media_type("application/vnd.oci.image.config.v1+json").is_err());
    }

    #[test]
    fn whiteouts_become_overlay_markers_and_digests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("a/keep.txt", b"keep"),
            ("a/.wh.gone.txt", b""),
            ("b/.wh..wh..opq", b""),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        let blob = gz.finish().unwrap();
        let blob_path = dir.path().join("blob");
        fs::write(&blob_path, &blob).unwrap();
        let dest = dir.path().join("layer");
        let size = unpack_layer(
            &blob_path,
            Compression::Gzip,
            &Digest::of(&blob),
            &Digest::of(&data),
            &dest,
        )
        .unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(fs::read(dest.join("a/keep.txt")).unwrap(), b"keep");
        let wh = fs::symlink_metadata(dest.join("a/gone.txt")).unwrap();
        assert!(wh.file_type().is_char_device());
        // Opaque directories carry the overlay xattr (needs root and a filesystem with
        // trusted.* xattrs, which is where the agent runs).
        let mut buf = [0u8; 4];
        let p = std::ffi::CString::new(dest.join("b").to_str().unwrap()).unwrap();
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                4,
            )
        };
        assert_eq!(n, 1, "opaque xattr missing");

        // A wrong diff_id is refused and leaves nothing behind.
        let dest2 = dir.path().join("layer2");
        let err = unpack_layer(
            &blob_path,
            Compression::Gzip,
            &Digest::of(&blob),
            &Digest::of(b"other"),
            &dest2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!dest2.exists());

        // A corrupted blob is refused with the blob's name.
        let mut bad = blob.clone();
        let last = bad.len() - 10;
        bad[last] ^= 0xff;
        fs::write(&blob_path, &bad).unwrap();
        let err = unpack_layer(
            &blob_path,
            Compression::Gzip,
            &Digest::of(&blob),
            &Digest::of(&data),
            &dir.path().join("layer3"),
        )
        .unwrap_err();
        assert!(!dir.path().join("layer3").exists(), "{err}");
    }

    #[test]
    fn entries_that_escape_are_refused() {
        assert!(clean_path(Path::new("../etc/passwd")).is_none());
        assert!(clean_path(Path::new("a/../../x")).is_none());
        assert_eq!(
            clean_path(Path::new("./a/b")).unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(clean_path(Path::new("/a")).unwrap(), PathBuf::from("a"));
    }
}
