//! The thing being packed: a zip archive (memory-mapped, so every worker
//! reads entries through its own cheap cursor) or a folder.
//!
//! Invariant: entry names use `/` separators and are exactly the names the
//! source holds; an entry whose name would escape the source (`../`,
//! absolute) is marked unsafe and never read.
//!
//! Stored and deflated zip entries (nearly every dataset zip) are read
//! straight from the map: a stored entry is one copy, a deflated one is
//! inflated by a per-thread decompressor into an output sized from the
//! central directory, and both are checked against its CRC-32 and size as
//! the zip crate would. That skips the crate's per-entry local-header parse,
//! decompressor allocation and zero-filled read buffer (a deflated JPEG
//! passthrough pack ran 1.14× faster without them; BENCHMARKS.md). Other
//! methods and encrypted entries go through the zip crate.

use std::cell::RefCell;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::{Decompress, FlushDecompress, Status};
use memmap2::Mmap;
use zip::{CompressionMethod, ZipArchive};

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
    /// Where a stored or deflated zip entry's data lies in the archive.
    span: Option<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    compressed: u64,
    deflated: bool,
    crc32: u32,
}

thread_local! {
    /// Raw-deflate state reused across entries (zip entries carry no zlib
    /// header); `reset` costs far less than a fresh 40 KB state.
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

#[derive(Clone)]
struct SharedMmap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMmap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

enum Kind {
    Zip {
        archive: ZipArchive<Cursor<SharedMmap>>,
        bytes: SharedMmap,
    },
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
        let bytes = SharedMmap(Arc::new(mmap));
        let mut archive =
            ZipArchive::new(Cursor::new(bytes.clone())).map_err(|e| PackError::Archive {
                path: path.to_path_buf(),
                detail: e.to_string(),
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
            let deflated = match f.compression() {
                CompressionMethod::Stored => Some(false),
                CompressionMethod::Deflated => Some(true),
                _ => None,
            };
            let span = match (deflated, f.data_start()) {
                (Some(deflated), Some(start)) if !f.encrypted() => Some(Span {
                    start,
                    compressed: f.compressed_size(),
                    deflated,
                    crc32: f.crc32(),
                }),
                _ => None,
            };
            entries.push(Entry {
                name,
                size: f.size(),
                unsafe_path,
                index,
                span,
            });
        }
        Ok(Source {
            kind: Kind::Zip { archive, bytes },
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
        match (&self.kind, entry.span) {
            (Kind::Zip { bytes, .. }, Some(span)) => {
                read_span(bytes.as_ref(), span, entry.size, &mut buf)?;
            }
            (Kind::Zip { archive, .. }, None) => {
                let mut archive = archive.clone();
                let f = archive
                    .by_index(entry.index)
                    .map_err(|e| format!("unreadable entry: {e}"))?;
                // The declared size can lie; never read past the limit.
                f.take(MAX_ENTRY_BYTES + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("unreadable entry: {e}"))?;
            }
            (Kind::Dir(root), _) => {
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

/// Copy or inflate one entry's data out of the mapped archive into `buf`
/// (empty, with capacity for `size` bytes), checking size and CRC-32.
fn read_span(archive: &[u8], span: Span, size: u64, buf: &mut Vec<u8>) -> Result<(), String> {
    let data = usize::try_from(span.start)
        .ok()
        .zip(usize::try_from(span.compressed).ok())
        .and_then(|(s, n)| archive.get(s..s.checked_add(n)?))
        .ok_or("unreadable entry: its data runs past the end of the archive")?;
    if span.deflated {
        INFLATE.with(|d| {
            let mut d = d.borrow_mut();
            d.reset(false);
            // The output never grows past the declared size: a stream that
            // would write more stops there and is reported below.
            match d.decompress_vec(data, buf, FlushDecompress::Finish) {
                Ok(Status::StreamEnd) => Ok(()),
                Ok(_) if buf.len() as u64 >= size => Err(format!(
                    "unreadable entry: inflates to more than the {size} bytes the archive declares"
                )),
                Ok(_) => Err("unreadable entry: deflate stream cut short".to_string()),
                Err(e) => Err(format!("unreadable entry: corrupt deflate stream ({e})")),
            }
        })?;
    } else {
        buf.extend_from_slice(data);
    }
    if buf.len() as u64 != size {
        return Err(format!(
            "unreadable entry: {} bytes where the archive declares {size}",
            buf.len()
        ));
    }
    if crc32fast::hash(buf) != span.crc32 {
        return Err("unreadable entry: invalid checksum".into());
    }
    Ok(())
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
            span: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        // Half noise, half runs: deflate really compresses part of it.
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 64 < 32 {
                    x as u8
                } else {
                    (i / 64) as u8
                }
            })
            .collect()
    }

    fn zip_file(dir: &Path, entries: &[(&str, Vec<u8>, CompressionMethod)]) -> PathBuf {
        let path = dir.join("t.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, data, method) in entries {
            let opts = zip::write::SimpleFileOptions::default().compression_method(*method);
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        path
    }

    #[test]
    fn stored_and_deflated_entries_are_read_from_the_map_as_the_zip_crate_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            ("a/stored.bin", bytes(20_000, 1), CompressionMethod::Stored),
            (
                "a/deflated.bin",
                bytes(70_000, 2),
                CompressionMethod::Deflated,
            ),
            ("a/empty.bin", Vec::new(), CompressionMethod::Deflated),
            ("a/empty-stored.bin", Vec::new(), CompressionMethod::Stored),
        ];
        let path = zip_file(dir.path(), &entries);
        let src = Source::open(&path).unwrap();
        let mut reference = ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(src.entries().len(), entries.len());
        for e in src.entries() {
            assert!(e.span.is_some(), "{} not read from the map", e.name);
            let mut want = Vec::new();
            reference
                .by_name(&e.name)
                .unwrap()
                .read_to_end(&mut want)
                .unwrap();
            assert!(src.read(e).unwrap() == want, "{}", e.name);
        }
        // Twice over: the per-thread inflater is reset between entries.
        let d = src
            .entries()
            .iter()
            .find(|e| e.name == "a/deflated.bin")
            .unwrap();
        assert!(src.read(d).unwrap() == entries[1].1);
    }

    #[test]
    fn damaged_entry_data_is_an_error_naming_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            ("s.bin", bytes(5_000, 3), CompressionMethod::Stored),
            ("d.bin", bytes(50_000, 4), CompressionMethod::Deflated),
        ];
        let path = zip_file(dir.path(), &entries);
        let clean = Source::open(&path).unwrap();
        let spans: Vec<Span> = clean.entries().iter().map(|e| e.span.unwrap()).collect();
        drop(clean);
        let mut raw = std::fs::read(&path).unwrap();
        // A deflate stream longer than the size the archive declares stops
        // at that size instead of growing the buffer.
        let mut buf = Vec::with_capacity(49_999);
        let err = read_span(&raw, spans[1], 49_999, &mut buf).unwrap_err();
        assert!(
            err.contains("inflates to more than the 49999 bytes"),
            "{err}"
        );
        assert!(buf.len() <= 49_999);
        // Flip one byte in the middle of each entry's data.
        for s in &spans {
            raw[(s.start + s.compressed / 2) as usize] ^= 0x40;
        }
        std::fs::write(&path, &raw).unwrap();
        let src = Source::open(&path).unwrap();
        for e in src.entries() {
            let err = src.read(e).unwrap_err();
            assert!(err.starts_with("unreadable entry: "), "{}: {err}", e.name);
            if e.name == "s.bin" {
                assert_eq!(err, "unreadable entry: invalid checksum");
            }
        }
        // A declared size that disagrees with the data.
        let s = spans[0];
        let mut buf = Vec::with_capacity(10);
        let err = read_span(&raw, s, s.compressed + 1, &mut buf).unwrap_err();
        assert!(err.contains("where the archive declares"), "{err}");
        let past = Span {
            start: raw.len() as u64 - 2,
            ..s
        };
        let err = read_span(&raw, past, s.compressed, &mut Vec::new()).unwrap_err();
        assert!(err.contains("past the end of the archive"), "{err}");
    }
}
