//! The thing being packed: a zip archive (memory-mapped, so every worker
//! reads entries through its own cheap cursor) or a folder.
//!
//! Invariant: entry names use `/` separators and are exactly the names the
//! source holds; an entry whose name would escape the source (`../`,
//! absolute) is marked unsafe and never read.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use zip::ZipArchive;

use super::PackError;
use crate::shard::SourceInfo;

/// Largest entry read into memory; bigger entries are rejected unread.
pub const MAX_ENTRY_BYTES: u64 = 512 << 20;

/// One file of the source.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// Uncompressed size as the source declares it.
    pub size: u64,
    /// The name escapes the source root (`../x`, `/etc/x`).
    pub unsafe_path: bool,
    index: usize,
}

#[derive(Clone)]
struct SharedMmap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMmap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

enum Kind {
    Zip(ZipArchive<Cursor<SharedMmap>>),
    Dir(PathBuf),
}

/// An opened source with its entry list.
pub struct Source {
    kind: Kind,
    entries: Vec<Entry>,
    info: SourceInfo,
}

impl Source {
    /// Open a zip file or a folder. A zip that cannot be read (truncated,
    /// not a zip) is an error naming it.
    pub fn open(path: &Path) -> Result<Source, PackError> {
        let meta = std::fs::metadata(path).map_err(|e| PackError::io(path, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if meta.is_dir() {
            let mut entries = Vec::new();
            walk(path, path, &mut entries)?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            for (i, e) in entries.iter_mut().enumerate() {
                e.index = i;
            }
            let size = entries.iter().map(|e| e.size).sum();
            return Ok(Source {
                kind: Kind::Dir(path.to_path_buf()),
                entries,
                info: SourceInfo {
                    name,
                    size,
                    modified,
                },
            });
        }
        let file = std::fs::File::open(path).map_err(|e| PackError::io(path, e))?;
        // SAFETY: the archive is only read; a file truncated underneath us
        // would fault, the same caveat every mmap reader carries.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| PackError::io(path, e))?;
        let mut archive =
            ZipArchive::new(Cursor::new(SharedMmap(Arc::new(mmap)))).map_err(|e| {
                PackError::Archive {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        let mut entries = Vec::with_capacity(archive.len());
        for index in 0..archive.len() {
            let f = archive
                .by_index_raw(index)
                .map_err(|e| PackError::Archive {
                    path: path.to_path_buf(),
                    detail: format!("entry {index}: {e}"),
                })?;
            if f.is_dir() {
                continue;
            }
            let name = match f.name() {
                Ok(n) => n.into_owned(),
                Err(_) => String::from_utf8_lossy(f.name_raw()).into_owned(),
            };
            let unsafe_path = f.enclosed_name().is_none() || escapes(&name);
            entries.push(Entry {
                name,
                size: f.size(),
                unsafe_path,
                index,
            });
        }
        Ok(Source {
            kind: Kind::Zip(archive),
            entries,
            info: SourceInfo {
                name,
                size: meta.len(),
                modified,
            },
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Read a whole entry. Safe to call from many threads at once: each
    /// call works on its own view of the archive.
    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>, String> {
        if entry.unsafe_path {
            return Err("unsafe path".into());
        }
        if entry.size > MAX_ENTRY_BYTES {
            return Err(format!(
                "entry of {} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit",
                entry.size
            ));
        }
        let mut buf = Vec::with_capacity(entry.size as usize);
        match &self.kind {
            Kind::Zip(archive) => {
                let mut archive = archive.clone();
                let f = archive
                    .by_index(entry.index)
                    .map_err(|e| format!("unreadable entry: {e}"))?;
                // The declared size can lie; never read past the limit.
                f.take(MAX_ENTRY_BYTES + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("unreadable entry: {e}"))?;
            }
            Kind::Dir(root) => {
                let path = root.join(&entry.name);
                std::fs::File::open(&path)
                    .and_then(|f| f.take(MAX_ENTRY_BYTES + 1).read_to_end(&mut buf))
                    .map_err(|e| format!("unreadable file: {e}"))?;
            }
        }
        if buf.len() as u64 > MAX_ENTRY_BYTES {
            return Err(format!("entry exceeds the {MAX_ENTRY_BYTES}-byte limit"));
        }
        Ok(buf)
    }
}

/// Any `..` component or a leading `/` or `\\` counts as escaping: a
/// dataset entry has no business naming its parent.
fn escapes(name: &str) -> bool {
    name.starts_with('/')
        || name.starts_with('\\')
        || name.split(['/', '\\']).any(|c| c == "..")
        || name.as_bytes().get(1) == Some(&b':')
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<(), PackError> {
    let rd = std::fs::read_dir(dir).map_err(|e| PackError::io(dir, e))?;
    for item in rd {
        let item = item.map_err(|e| PackError::io(dir, e))?;
        let path = item.path();
        let ft = item.file_type().map_err(|e| PackError::io(&path, e))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        // Symlinks are followed only for their size; a dangling one is
        // still listed so that it is reported, not silently dropped.
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        out.push(Entry {
            name,
            size,
            unsafe_path: false,
            index: 0,
        });
    }
    Ok(())
}
