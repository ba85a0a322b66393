//! The thing being packed: a zip archive (memory-mapped, so every worker
//! reads entries through its own cheap cursor) or a folder.
//!
//! Invariant: entry names use `/` separators and are exactly the names the
//! source holds; an entry whose name would escape the source (`../`,
//! absolute) is marked unsafe and never read, and an entry that cannot be
//! packed whatever its bytes (a named pipe, an unreadable folder, an extra
//! zip entry of an already used name, a file in a folder whose name clashes
//! with a sibling's once written as text) carries its reason instead of
//! being dropped. A source that is neither a folder nor a regular file (a
//! named pipe, a device) is refused before it is opened.
//!
//! Folders are walked following symbolic links (a class folder is often a
//! link to another disk), with cycles cut at the link that closes them. The
//! pack's own output folder is skipped when it lies inside the source, so a
//! rerun sees the same source as the first run. A folder's identity is a
//! hash of every entry's (name, size, modification time): a file replaced
//! deep inside changes it even when the folder's own time and total size do
//! not.
//!
//! Zip entries are read straight from the map: a stored entry is one copy,
//! a deflated one is inflated in one call by a per-thread libdeflate
//! decompressor into an output of the size the central directory declares
//! (a stream that would write more is refused), and both are checked
//! against its CRC-32 and size as the zip crate would. That skips the
//! crate's per-entry decompressor allocation and streaming reads (a deflated
//! JPEG passthrough pack ran 1.14× faster without them, and 1.16–1.22× per
//! CPU-second again with libdeflate in place of zlib-rs; BENCHMARKS.md). The zip
//! crate only parses the central directory and is dropped after listing
//! (its per-entry records are ~210 bytes, 380 MB at 1.8M entries). Listing
//! reads the central directory alone: an entry's local header, which says
//! where its data starts, is read when the entry is, so listing a cold
//! archive does not pull every page of it through the page cache. Other
//! compression methods and encrypted entries are rejected while listing
//! (this build reads neither).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libdeflater::{DecompressionError, Decompressor};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use zip::{CompressionMethod, ZipArchive};

use super::PackError;
use crate::shard::SourceInfo;

/// Bytes announced by [`Source::prefetch`] past an entry's local header
/// and name, for its extra field (a few dozen bytes in practice).
const LOCAL_SLACK: u64 = 1024;

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
    /// Why the entry cannot be packed, found while listing the source
    /// (never read when set).
    pub problem: Option<String>,
    index: usize,
    /// A folder entry's real path, kept when its name is not valid UTF-8
    /// (the name then shows each stray byte as `\xNN`, see [`path_text`]).
    path: Option<PathBuf>,
    /// Where a stored or deflated zip entry's data lies in the archive.
    span: Option<Span>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    /// Offset of the entry's local header in the archive.
    header: u64,
    compressed: u64,
    deflated: bool,
    crc32: u32,
}

thread_local! {
    /// Raw-deflate state reused across entries (zip entries carry no zlib
    /// header). libdeflate inflates a whole entry in one call, which is
    /// all a mapped archive needs, 1.2× as fast as zlib-rs on JPEG entries
    /// (`examples/inflate_rate.rs`, BENCHMARKS.md).
    static INFLATE: RefCell<Decompressor> = RefCell::new(Decompressor::new());
}

#[derive(Clone)]
struct SharedMmap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMmap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

enum Kind {
    Zip(SharedMmap),
    Dir(PathBuf),
}

/// Whether a file of a folder left out of the source (by its path relative
/// to that folder) belongs there: the pack's own output.
pub type OwnFile = fn(&str) -> bool;

/// An opened source with its entry list.
pub struct Source {
    kind: Kind,
    entries: Vec<Entry>,
    info: SourceInfo,
    identity: String,
    /// The first file in the skipped output folder that is not the pack's.
    foreign: Option<String>,
}

impl Source {
    /// Open a zip file or a folder. A zip that cannot be read (truncated,
    /// not a zip) is an error naming it. `skip` is a folder left out of a
    /// folder source's walk (the pack's output folder), with what tells the
    /// files that belong there (the pack's own, by their name relative to
    /// it): the first other file found there is kept, see
    /// [`Source::foreign_in_skipped`].
    pub fn open(path: &Path, skip: Option<(&Path, OwnFile)>) -> Result<Source, PackError> {
        let meta = std::fs::metadata(path).map_err(|e| PackError::io(path, e))?;
        if !meta.is_dir() && !meta.is_file() {
            // Opening a named pipe blocks until a writer comes, and a zip
            // is read by seeking, which no pipe or device allows.
            return Err(PackError::Usage(format!(
                "SOURCE must be a zip file or a folder: {} is a {}",
                path.display(),
                crate::file_kind::describe(&meta.file_type())
            )));
        }
        let modified = mtime(&meta).0;
        let name = source_name(path);
        if meta.is_dir() {
            // The top folder itself must be readable; below it, an
            // unreadable folder is one more rejected entry.
            std::fs::read_dir(path).map_err(|e| PackError::io(path, e))?;
            let mut walker = Walker {
                root: path,
                skip: skip
                    .and_then(|(p, own)| std::fs::metadata(p).ok().map(|m| (file_id(&m), own))),
                foreign: None,
                ancestors: vec![file_id(&meta)],
                entries: Vec::new(),
                mtimes: Vec::new(),
                clash: None,
            };
            walker.walk(path);
            let Walker {
                mut entries,
                mtimes,
                foreign,
                ..
            } = walker;
            let mut order: Vec<usize> = (0..entries.len()).collect();
            // Names are unique but for escaped non-UTF-8 ones clashing
            // (`\xff` spelt out vs the byte): the real path breaks the tie.
            order.sort_by(|&a, &b| {
                let (a, b) = (&entries[a], &entries[b]);
                a.name.cmp(&b.name).then_with(|| a.path.cmp(&b.path))
            });
            let mut hash = Sha256::new();
            let mut newest = 0u64;
            for &i in &order {
                let e = &entries[i];
                let (secs, nanos) = mtimes[i];
                newest = newest.max(secs);
                hash.update(format!(
                    "{}\0{}\0{secs}.{nanos:09}\0{}\n",
                    e.name,
                    e.size,
                    e.problem.as_deref().unwrap_or("")
                ));
            }
            let mut sorted: Vec<Entry> = Vec::with_capacity(entries.len());
            for (k, &i) in order.iter().enumerate() {
                let mut e = std::mem::replace(&mut entries[i], placeholder());
                e.index = k;
                sorted.push(e);
            }
            reject_name_clashes(&mut sorted, &HashMap::new());
            let size = sorted.iter().map(|e| e.size).sum();
            return Ok(Source {
                kind: Kind::Dir(path.to_path_buf()),
                entries: sorted,
                // The folder's own time changes whenever something is added
                // at its top (the output folder, say); its contents' newest
                // time is what says when the data last changed.
                info: SourceInfo {
                    name,
                    size,
                    modified: newest,
                },
                identity: hex::encode(hash.finalize()),
                foreign,
            });
        }
        let file = std::fs::File::open(path).map_err(|e| PackError::io(path, e))?;
        // SAFETY: the archive is only read; a file truncated underneath us
        // would fault, the same caveat every mmap reader carries.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| PackError::io(path, e))?;
        let bytes = SharedMmap(Arc::new(mmap));
        let archive =
            ZipArchive::new(Cursor::new(bytes.clone())).map_err(|e| PackError::Archive {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        let mut entries = Vec::with_capacity(archive.len());
        // Entries whose names `zip_path` changed: their stored names.
        let mut renamed: HashMap<usize, String> = HashMap::new();
        for index in 0..archive.len() {
            let f = archive
                .by_index_data(index)
                .map_err(|e| PackError::Archive {
                    path: path.to_path_buf(),
                    detail: format!("entry {index}: {e}"),
                })?;
            let name = match f.name() {
                Ok(n) => n.into_owned(),
                Err(_) => path_text(f.name_raw()),
            };
            if f.is_dir() || (name.ends_with('\\') && f.size() == 0) {
                continue;
            }
            let unsafe_path = f.enclosed_name().is_none() || escapes(&name);
            // An unsafe name is reported as it stands.
            let name = if unsafe_path {
                name
            } else {
                let read = zip_path(name.clone());
                if read != name {
                    renamed.insert(entries.len(), name);
                }
                read
            };
            let deflated = match f.compression() {
                CompressionMethod::Stored => Ok(false),
                CompressionMethod::Deflated => Ok(true),
                other => Err(other),
            };
            let (span, problem) = match deflated {
                _ if f.encrypted() => (
                    None,
                    Some("encrypted entry (ebv-pack reads no passwords)".to_string()),
                ),
                Err(method) => (
                    None,
                    Some(format!(
                        "unsupported compression method {method} (stored and deflated are read)"
                    )),
                ),
                Ok(deflated) => (
                    Some(Span {
                        header: f.header_start(),
                        compressed: f.compressed_size(),
                        deflated,
                        crc32: f.crc32(),
                    }),
                    None,
                ),
            };
            entries.push(Entry {
                name,
                size: f.size(),
                unsafe_path,
                problem,
                index,
                span,
                path: None,
            });
        }
        if archive.has_duplicate_names() {
            // The zip crate keeps the last entry of a name; the others are
            // still data the archive holds, so each is reported.
            let dir_start = archive.central_directory_start();
            let dups = duplicate_names(bytes.as_ref(), dir_start);
            // Each repeated name as the packed copy's key reads (the crate's
            // decoding: UTF-8, or CP437 without the UTF-8 flag).
            let mut shown: BTreeMap<&[u8], String> = BTreeMap::new();
            for e in &entries {
                if let Ok(f) = archive.by_index_data(e.index) {
                    if let Some((raw, _)) = dups.get_key_value(f.name_raw()) {
                        shown.insert(raw.as_slice(), e.name.clone());
                    }
                }
            }
            let mut extra = Vec::new();
            for (raw, &copies) in &dups {
                let name = shown
                    .get(raw.as_slice())
                    .cloned()
                    .unwrap_or_else(|| path_text(raw));
                for _ in 1..copies {
                    extra.push(Entry {
                        problem: Some(format!(
                            "duplicate entry name: the archive holds {copies} entries of this \
                             name; only the last is packed"
                        )),
                        ..placeholder_named(&name)
                    });
                }
            }
            entries.extend(extra);
        }
        drop(archive);
        reject_name_clashes(&mut entries, &renamed);
        let identity = format!("zip\0{}\0{}\0{modified}", name, meta.len());
        // Listed (the central directory read with the kernel's read-ahead);
        // from here entries are read in permuted order, each announced
        // ahead (`prefetch`): a read-around of megabytes at every fault
        // would only evict what was announced. Advisory.
        #[cfg(unix)]
        let _ = bytes.0.advise(memmap2::Advice::Random);
        Ok(Source {
            kind: Kind::Zip(bytes),
            entries,
            info: SourceInfo {
                name,
                size: meta.len(),
                modified,
            },
            identity,
            foreign: None,
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// A file (named as an entry would be) in the output folder left out of
    /// a folder source that the pack did not write: left out with it, so
    /// the pack must not go on.
    pub fn foreign_in_skipped(&self) -> Option<&str> {
        self.foreign.as_deref()
    }

    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// What identifies this source's contents for resuming: a zip's name,
    /// size and time; a folder's hash over every entry (see the module
    /// header).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Ask the OS to start reading `entry`'s bytes from a zip now, without
    /// waiting (`MADV_WILLNEED` on its local header and data), so that the
    /// worker which later [`read`](Self::read)s it finds them in memory. The
    /// packer announces entries a few chunks ahead of its workers: in
    /// permuted order on an archive larger than the page cache, each entry
    /// would otherwise cost a fault per page, each a synchronous read (or a
    /// read-around of megabytes that is evicted before it is used).
    /// Advisory: a folder, an unreadable entry or a refused advice read the
    /// same bytes later.
    pub fn prefetch(&self, entry: &Entry) {
        #[cfg(unix)]
        if let (Kind::Zip(bytes), Some(span), None) = (&self.kind, entry.span, refusal(entry)) {
            let map = &bytes.0;
            // The local header's name and extra field, which may differ
            // from the central directory's, fit the slack in practice; a
            // byte outside it is read by a fault, as without the advice.
            // Saturating: the sizes are the archive's word, hostile or not.
            let len = (30 + LOCAL_SLACK + entry.name.len() as u64).saturating_add(span.compressed);
            let start = span.header.min(map.len() as u64) as usize;
            let len = len.min((map.len() - start) as u64) as usize;
            if len > 0 {
                let _ = map.advise_range(memmap2::Advice::WillNeed, start, len);
            }
        }
        #[cfg(not(unix))]
        let _ = entry;
    }

    /// Read a whole entry. Safe to call from many threads at once: each
    /// call works on its own view of the archive.
    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>, String> {
        if let Some(why) = refusal(entry) {
            return Err(why);
        }
        let mut buf = Vec::new();
        match (&self.kind, entry.span) {
            (Kind::Zip(bytes), Some(span)) => {
                read_span(bytes.as_ref(), span, entry.size, &mut buf)?;
            }
            // Listing gives every zip entry without a span a problem.
            (Kind::Zip(_), None) => return Err("unreadable entry".into()),
            (Kind::Dir(root), _) => {
                let path = match &entry.path {
                    Some(path) => path.clone(),
                    None => root.join(&entry.name),
                };
                buf.reserve(entry.size as usize);
                std::fs::File::open(&path)
                    .and_then(|f| f.take(MAX_ENTRY_BYTES + 1).read_to_end(&mut buf))
                    .map_err(|e| format!("unreadable file: {e}"))?;
            }
        }
        if buf.len() as u64 > MAX_ENTRY_BYTES {
            return Err(format!(
                "entry exceeds the size limit (> {MAX_ENTRY_BYTES} bytes)"
            ));
        }
        Ok(buf)
    }
}

/// Why [`Source::read`] refuses `entry` without reading it, if it does
/// (and [`Source::prefetch`] does not announce it).
fn refusal(entry: &Entry) -> Option<String> {
    if entry.unsafe_path {
        return Some("unsafe path".into());
    }
    if let Some(problem) = &entry.problem {
        return Some(problem.clone());
    }
    if entry.size > MAX_ENTRY_BYTES {
        return Some(format!(
            "entry exceeds the size limit ({} bytes > {MAX_ENTRY_BYTES})",
            entry.size
        ));
    }
    None
}

/// Where an entry's data starts: after its local header, whose name and
/// extra field lengths may differ from the central directory's copies.
fn data_start(archive: &[u8], header: u64) -> Result<usize, String> {
    let at = usize::try_from(header).unwrap_or(usize::MAX);
    let local = at
        .checked_add(30)
        .and_then(|end| archive.get(at..end))
        .ok_or("unreadable entry: its local header lies past the end of the archive")?;
    if local[..4] != [0x50, 0x4b, 0x03, 0x04] {
        return Err("unreadable entry: no local header where the central directory puts it".into());
    }
    let name_len = usize::from(u16::from_le_bytes([local[26], local[27]]));
    let extra_len = usize::from(u16::from_le_bytes([local[28], local[29]]));
    Ok(at + 30 + name_len + extra_len)
}

/// Copy or inflate one entry's data out of the mapped archive into `buf`
/// (empty), checking size and CRC-32.
fn read_span(archive: &[u8], span: Span, size: u64, buf: &mut Vec<u8>) -> Result<(), String> {
    let start = data_start(archive, span.header)?;
    let data = usize::try_from(span.compressed)
        .ok()
        .and_then(|n| archive.get(start..start.checked_add(n)?))
        .ok_or("unreadable entry: its data runs past the end of the archive")?;
    if span.deflated {
        // The output never grows past the declared size: a stream that
        // would write more is refused. Zero-filled through `calloc`, so a
        // huge declared size with a tiny stream commits no memory.
        *buf = vec![0; usize::try_from(size).unwrap_or(usize::MAX)];
        let n = INFLATE.with(|d| match d.borrow_mut().deflate_decompress(data, buf) {
            Ok(n) => Ok(n),
            Err(DecompressionError::InsufficientSpace) => Err(format!(
                "unreadable entry: inflates to more than the {size} bytes the archive declares"
            )),
            // libdeflate tells a cut stream from a damaged one no better.
            Err(DecompressionError::BadData) => {
                Err("unreadable entry: corrupt or truncated deflate stream".to_string())
            }
        })?;
        buf.truncate(n);
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

/// An entry's name as a path: `\\` read as `/` (the zip format's only
/// separator, which archivers on Windows used to break), and empty and `.`
/// components dropped (`train//a/1.jpg`, `./train/a/1.jpg`), as `unzip`
/// extracts them.
fn zip_path(name: String) -> String {
    let odd = |c: &str| c.is_empty() || c == ".";
    if !name.contains('\\') && !name.split('/').any(odd) {
        return name;
    }
    name.split(['/', '\\'])
        .filter(|c| !odd(c))
        .collect::<Vec<_>>()
        .join("/")
}

/// Any `..` component or a leading `/` or `\\` counts as escaping: a
/// dataset entry has no business naming its parent.
fn escapes(name: &str) -> bool {
    name.starts_with('/')
        || name.starts_with('\\')
        || name.split(['/', '\\']).any(|c| c == "..")
        || name.as_bytes().get(1) == Some(&b':')
}

fn placeholder() -> Entry {
    placeholder_named("")
}

fn placeholder_named(name: &str) -> Entry {
    Entry {
        name: name.to_string(),
        size: 0,
        unsafe_path: false,
        problem: None,
        index: usize::MAX,
        span: None,
        path: None,
    }
}

/// The source's name for the manifest: its last path component as typed
/// (a symbolic link keeps its own name), or, for `.`, `./` or `..`, which
/// have none, the canonical path's; bytes that are not UTF-8 are written
/// `\xNN` as in keys.
fn source_name(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let canonical = || std::fs::canonicalize(path).ok();
    match path.file_name() {
        Some(n) => path_text(n.as_bytes()),
        None => match canonical().as_deref().and_then(Path::file_name) {
            Some(n) => path_text(n.as_bytes()),
            // The root folder.
            None => path_text(path.as_os_str().as_bytes()),
        },
    }
}

/// A name's bytes as text: valid UTF-8 as it is, each byte of anything
/// else as `\xNN`, so that distinct names stay distinct and readable
/// (lossy decoding would turn every stray byte into the same `\u{FFFD}`).
pub(crate) fn path_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Entries whose names came out the same once decoded to text (a zip
/// holding one name flagged UTF-8 and another in CP437, or `a\b.jpg` next
/// to `a/b.jpg`; a folder name with a stray byte next to one spelling
/// `\xNN` out) would share one key: the last in entry order is packed, each
/// other one is rejected saying so, and naming its stored name when
/// `renamed` (entry index → stored name) has it.
fn reject_name_clashes(entries: &mut [Entry], renamed: &HashMap<usize, String>) {
    let packable = |e: &Entry| e.problem.is_none() && !e.unsafe_path;
    // Per name: how many packable entries carry it, and the last of them.
    let mut seen: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate().filter(|(_, e)| packable(e)) {
        let slot = seen.entry(&e.name).or_insert((0, i));
        *slot = (slot.0 + 1, i);
    }
    let losers: Vec<(usize, usize)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| packable(e))
        .filter_map(|(i, e)| {
            let (copies, last) = seen[e.name.as_str()];
            (copies > 1 && i != last).then_some((i, copies))
        })
        .collect();
    for (i, copies) in losers {
        let stored = renamed
            .get(&i)
            .map(|n| format!(": this one is stored as '{n}'"))
            .unwrap_or_default();
        entries[i].problem = Some(format!(
            "duplicate entry name: {copies} entries have this name once read (their stored \
             names differ{stored}); only the last is packed"
        ));
    }
}

/// (seconds, nanoseconds) since the epoch; 0 when the system has no times.
fn mtime(meta: &std::fs::Metadata) -> (u64, u32) {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()))
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Names that more than one central-directory header carries, with their
/// count. Walks the headers from `dir_start` (46 fixed bytes, then name,
/// extra field and comment) and stops quietly at anything malformed: the zip
/// crate has already parsed the same directory.
/// Names are compared as raw bytes: two names that differ only in bytes
/// that are not UTF-8 are different entries (the zip crate keeps both).
fn duplicate_names(archive: &[u8], dir_start: u64) -> BTreeMap<Vec<u8>, usize> {
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut pos = usize::try_from(dir_start).unwrap_or(usize::MAX);
    let u16_at = |p: usize| {
        archive
            .get(p..p + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    while archive.get(pos..pos + 4) == Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
        let (Some(name_len), Some(extra_len), Some(comment_len)) =
            (u16_at(pos + 28), u16_at(pos + 30), u16_at(pos + 32))
        else {
            break;
        };
        let Some(name) = archive.get(pos + 46..pos + 46 + name_len) else {
            break;
        };
        // Directories are not entries (the packer skips them too).
        if !name.ends_with(b"/") {
            *counts.entry(name.to_vec()).or_insert(0) += 1;
        }
        pos += 46 + name_len + extra_len + comment_len;
    }
    counts.retain(|_, n| *n > 1);
    counts
}

/// The first file under `dir` (by name, depth first) that `own` does not
/// claim by its path relative to `top`; symbolic links are not followed.
fn first_foreign(top: &Path, dir: &Path, own: OwnFile) -> Option<String> {
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    children.sort();
    for path in children {
        let rel = path
            .strip_prefix(top)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            if let Some(found) = first_foreign(top, &path, own) {
                return Some(found);
            }
        } else if !own(&rel) {
            return Some(rel);
        }
    }
    None
}

/// Lists a folder source.
struct Walker<'a> {
    root: &'a Path,
    /// The output folder, left out, and what names its own files.
    skip: Option<((u64, u64), OwnFile)>,
    /// The first file in the output folder that is not its own.
    foreign: Option<String>,
    /// Folders from the root down to the one being listed: a link back to
    /// one of them is a cycle.
    ancestors: Vec<(u64, u64)>,
    entries: Vec<Entry>,
    /// Modification time of each entry, for the identity hash.
    mtimes: Vec<(u64, u32)>,
    /// While walking a folder whose name clashes with a sibling's once
    /// decoded to text: the reason every file under it is rejected.
    clash: Option<String>,
}

impl Walker<'_> {
    fn name(&self, path: &Path) -> String {
        use std::os::unix::ffi::OsStrExt;
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        rel.components()
            .map(|c| path_text(c.as_os_str().as_bytes()))
            .collect::<Vec<_>>()
            .join("/")
    }

    fn push(&mut self, name: String, size: u64, mtime: (u64, u32), problem: Option<String>) {
        self.entries.push(Entry {
            size,
            problem: problem.or_else(|| self.clash.clone()),
            ..placeholder_named(&name)
        });
        self.mtimes.push(mtime);
    }

    /// Records a folder that cannot be listed (named with a trailing `/`).
    fn bad_folder(&mut self, dir: &Path, reason: String) {
        let name = format!("{}/", self.name(dir));
        self.push(name, 0, (0, 0), Some(reason));
    }

    fn walk(&mut self, dir: &Path) {
        // Each child with the type its folder listing gives (no `stat`):
        // what tells a folder from a file when `stat` itself fails.
        let mut children = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for item in rd {
                    match item {
                        Ok(item) => children.push((item.path(), item.file_type().ok())),
                        Err(e) => {
                            self.bad_folder(dir, format!("unreadable folder: {e}"));
                            break;
                        }
                    }
                }
            }
            Err(e) => return self.bad_folder(dir, format!("unreadable folder: {e}")),
        }
        let clashes = self.folder_clashes(&children);
        for (path, listed) in children {
            // `metadata` follows symbolic links: a linked class folder or
            // file is walked or read like a real one.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    let link =
                        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                    let name = self.name(&path);
                    if link {
                        self.push(name, 0, (0, 0), Some(format!("broken symbolic link: {e}")));
                    } else if listed.is_some_and(|t| t.is_dir()) {
                        // A folder too deep to name (its path longer than
                        // PATH_MAX) is an unreadable folder like any other.
                        self.bad_folder(&path, format!("unreadable folder: {e}"));
                    } else {
                        self.push(name, 0, (0, 0), Some(format!("unreadable file: {e}")));
                    }
                    continue;
                }
            };
            let name = self.name(&path);
            if meta.is_dir() {
                let id = file_id(&meta);
                if let Some((_, own)) = self.skip.filter(|(skip, _)| *skip == id) {
                    if self.foreign.is_none() {
                        self.foreign =
                            first_foreign(&path, &path, own).map(|rel| format!("{name}/{rel}"));
                    }
                    continue;
                }
                if self.ancestors.contains(&id) {
                    let reason = "symbolic link cycle: links to a folder that contains it".into();
                    self.push(format!("{name}/"), 0, (0, 0), Some(reason));
                    continue;
                }
                let outer = match clashes.get(&path) {
                    Some(reason) => self.clash.replace(reason.clone()),
                    None => self.clash.clone(),
                };
                self.ancestors.push(id);
                self.walk(&path);
                self.ancestors.pop();
                self.clash = outer;
            } else if meta.is_file() {
                self.push(name, meta.len(), mtime(&meta), None);
                if path.to_str().is_none() {
                    if let Some(e) = self.entries.last_mut() {
                        e.path = Some(path.clone());
                    }
                }
            } else {
                // Opening a named pipe would block the run forever, and a
                // device or socket holds no image.
                let reason = format!(
                    "not a regular file ({})",
                    crate::file_kind::describe(&meta.file_type())
                );
                self.push(name, 0, mtime(&meta), Some(reason));
            }
        }
    }

    /// Subfolders of one folder whose names come out the same once decoded
    /// to text (`a\xffb` with the byte 0xFF, and one spelling `\xff` out)
    /// would merge into one folder of the keys, and so one class. As with
    /// files of such names, the last (by stored name) is kept; each other
    /// one maps to the reason its files are rejected.
    fn folder_clashes(
        &self,
        children: &[(PathBuf, Option<std::fs::FileType>)],
    ) -> BTreeMap<PathBuf, String> {
        use std::os::unix::ffi::OsStrExt;
        let mut clashes = BTreeMap::new();
        // Only a name that is not UTF-8 is escaped, so only then can two
        // names clash.
        let escaped = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_str().is_none());
        if !children.iter().any(|(p, ..)| escaped(p)) {
            return clashes;
        }
        let mut by_text: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
        for (path, _) in children {
            // Through links, as the walk goes.
            if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
                let text = path_text(path.file_name().map_or(&[][..], |n| n.as_bytes()));
                by_text.entry(text).or_default().push(path);
            }
        }
        for mut paths in by_text.into_values().filter(|p| p.len() > 1) {
            paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
            let copies = paths.len();
            let Some((_, losers)) = paths.split_last() else {
                continue;
            };
            for path in losers {
                let reason = format!(
                    "duplicate folder name: {copies} folders have the name '{}/' once decoded \
                     to text (their stored names differ); only the last one's files are packed",
                    self.name(path)
                );
                clashes.insert((*path).clone(), reason);
            }
        }
        clashes
    }
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
        let src = Source::open(&path, None).unwrap();
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

    /// Pages of `path` holding `range` that are in the page cache, and
    /// how many pages hold it.
    #[cfg(target_os = "linux")]
    fn resident_pages(path: &Path, range: std::ops::Range<usize>) -> (usize, usize) {
        let file = std::fs::File::open(path).unwrap();
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let page = 4096;
        let start = range.start / page * page;
        let pages = (range.end - start).div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range lies inside the mapping; `vec` has a byte per page.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(start) as *mut libc::c_void,
                range.end - start,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        (vec.iter().filter(|&&b| b & 1 == 1).count(), pages)
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn prefetch_brings_an_evicted_entry_into_memory() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<(String, Vec<u8>, CompressionMethod)> = (0..8)
            .map(|i| {
                (
                    format!("e{i}.bin"),
                    bytes(300_000, i),
                    CompressionMethod::Stored,
                )
            })
            .collect();
        let named: Vec<(&str, Vec<u8>, CompressionMethod)> = entries
            .iter()
            .map(|(n, d, m)| (n.as_str(), d.clone(), *m))
            .collect();
        let path = zip_file(dir.path(), &named);
        let src = Source::open(&path, None).unwrap();
        let e = &src.entries()[5];
        let span = e.span.unwrap();
        let data = {
            let raw = std::fs::read(&path).unwrap();
            let start = data_start(&raw, span.header).unwrap();
            start..start + span.compressed as usize
        };
        // Written, synced and dropped from the page cache, where the
        // filesystem allows it (not on tmpfs: there nothing can be shown).
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: advice on an open descriptor; no memory is passed.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let (resident, pages) = resident_pages(&path, data.clone());
        if resident == pages {
            eprintln!("the page cache kept the archive: prefetch not observable here");
            return;
        }
        src.prefetch(e);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (resident, _) = resident_pages(&path, data.clone());
            if resident == pages {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "entry data not read in after prefetch: {resident} of {pages} pages"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Announcing changes nothing read, nor does announcing an entry
        // with no data in the archive.
        assert!(src.read(e).unwrap() == entries[5].1);
        src.prefetch(&placeholder());
        // Sizes from a hostile central directory announce what the map
        // holds, without overflowing.
        let huge = Entry {
            span: Some(Span {
                compressed: u64::MAX,
                ..span
            }),
            ..e.clone()
        };
        src.prefetch(&huge);
    }

    #[test]
    fn damaged_entry_data_is_an_error_naming_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            ("s.bin", bytes(5_000, 3), CompressionMethod::Stored),
            ("d.bin", bytes(50_000, 4), CompressionMethod::Deflated),
        ];
        let path = zip_file(dir.path(), &entries);
        let clean = Source::open(&path, None).unwrap();
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
        // A stream that ends short of the declared size, and one cut in
        // the middle.
        let d = spans[1];
        let err = read_span(&raw, d, 50_001, &mut Vec::new()).unwrap_err();
        assert_eq!(
            err,
            "unreadable entry: 50000 bytes where the archive declares 50001"
        );
        let cut = Span {
            compressed: d.compressed / 2,
            ..d
        };
        let err = read_span(&raw, cut, 50_000, &mut Vec::new()).unwrap_err();
        assert_eq!(err, "unreadable entry: corrupt or truncated deflate stream");
        // Flip one byte in the middle of each entry's data.
        for s in &spans {
            let at = data_start(&raw, s.header).unwrap() + s.compressed as usize / 2;
            raw[at] ^= 0x40;
        }
        std::fs::write(&path, &raw).unwrap();
        let src = Source::open(&path, None).unwrap();
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
        // A local header beyond the archive, and data running past its end.
        let past = Span {
            header: raw.len() as u64 - 2,
            ..s
        };
        let err = read_span(&raw, past, s.compressed, &mut Vec::new()).unwrap_err();
        assert!(err.contains("local header lies past the end"), "{err}");
        let long = Span {
            compressed: raw.len() as u64,
            ..s
        };
        let err = read_span(&raw, long, s.compressed, &mut Vec::new()).unwrap_err();
        assert!(
            err.contains("data runs past the end of the archive"),
            "{err}"
        );
    }

    /// Offset of `needle` in `hay` (test archives hold each name once per
    /// header).
    fn find(hay: &[u8], needle: &[u8], from: usize) -> usize {
        from + hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    #[test]
    fn listing_reads_only_the_central_directory() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            ("ok.bin", bytes(3_000, 5), CompressionMethod::Stored),
            ("lost.bin", bytes(3_000, 6), CompressionMethod::Deflated),
            ("after.bin", bytes(3_000, 7), CompressionMethod::Deflated),
        ];
        let path = zip_file(dir.path(), &entries);
        let mut raw = std::fs::read(&path).unwrap();
        // Wipe the second entry's local header signature: the zip crate's
        // own reader fails on it, yet listing must not look there, and the
        // other entries stay readable.
        let local = find(&raw, b"lost.bin", 0) - 30;
        assert_eq!(raw[local..local + 4], [0x50, 0x4b, 0x03, 0x04]);
        raw[local..local + 4].copy_from_slice(b"XXXX");
        std::fs::write(&path, &raw).unwrap();
        let src = Source::open(&path, None).unwrap();
        assert_eq!(src.entries().len(), 3);
        for (e, (name, data, _)) in src.entries().iter().zip(&entries) {
            assert_eq!(e.name, *name);
            assert!(e.problem.is_none(), "{}", e.name);
            match src.read(e) {
                Ok(got) => assert!(got == *data && e.name != "lost.bin", "{}", e.name),
                Err(err) => {
                    assert_eq!(e.name, "lost.bin");
                    assert!(err.contains("no local header where"), "{err}");
                }
            }
        }
    }

    #[test]
    fn encrypted_and_unsupported_entries_are_rejected_while_listing() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [
            ("plain.bin", bytes(1_000, 8), CompressionMethod::Stored),
            ("secret.bin", bytes(1_000, 9), CompressionMethod::Stored),
            ("bz.bin", bytes(1_000, 10), CompressionMethod::Stored),
        ];
        let path = zip_file(dir.path(), &entries);
        let mut raw = std::fs::read(&path).unwrap();
        let dir_start = find(&raw, &[0x50, 0x4b, 0x01, 0x02], 0);
        // Central headers: flags at +8 (bit 0: encrypted), method at +10.
        let secret = find(&raw, b"secret.bin", dir_start) - 46;
        raw[secret + 8] |= 1;
        let bz = find(&raw, b"bz.bin", dir_start) - 46;
        raw[bz + 10..bz + 12].copy_from_slice(&12u16.to_le_bytes());
        std::fs::write(&path, &raw).unwrap();
        let src = Source::open(&path, None).unwrap();
        let problem = |name: &str| {
            let e = src.entries().iter().find(|e| e.name == name).unwrap();
            (e.problem.clone(), src.read(e))
        };
        let (p, read) = problem("plain.bin");
        assert!(p.is_none() && read.unwrap() == entries[0].1);
        let (p, read) = problem("secret.bin");
        assert_eq!(
            p.as_deref(),
            Some("encrypted entry (ebv-pack reads no passwords)")
        );
        assert_eq!(read.unwrap_err(), p.unwrap());
        let (p, read) = problem("bz.bin");
        let p = p.unwrap();
        assert!(p.starts_with("unsupported compression method"), "{p}");
        assert_eq!(read.unwrap_err(), p);
    }

    fn names(src: &Source) -> Vec<(String, Option<String>)> {
        src.entries()
            .iter()
            .map(|e| (e.name.clone(), e.problem.clone()))
            .collect()
    }

    #[test]
    fn folder_walk_follows_links_and_records_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(root.join("train/a")).unwrap();
        std::fs::create_dir_all(elsewhere.join("b")).unwrap();
        std::fs::write(root.join("train/a/1.jpg"), b"one").unwrap();
        std::fs::write(elsewhere.join("b/2.jpg"), b"two!").unwrap();
        std::fs::write(elsewhere.join("3.jpg"), b"three").unwrap();
        let link = |target: &Path, at: &Path| std::os::unix::fs::symlink(target, at).unwrap();
        // A linked class folder, a linked file, a link back up (a cycle), a
        // dangling link, a named pipe and the output folder.
        link(&elsewhere.join("b"), &root.join("train/b"));
        link(&elsewhere.join("3.jpg"), &root.join("train/a/3.jpg"));
        link(&root, &root.join("train/a/loop"));
        link(&dir.path().join("gone"), &root.join("train/a/dangling.jpg"));
        let fifo = std::ffi::CString::new(root.join("train/a/pipe.jpg").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::create_dir_all(root.join("shards/.ebv-pack")).unwrap();
        std::fs::write(root.join("shards/train-00000.parquet"), b"PAR1").unwrap();

        let src = Source::open(&root, Some((&root.join("shards"), |_| true))).unwrap();
        let got = names(&src);
        let problem = |name: &str| {
            got.iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} not listed: {got:?}"))
                .1
                .clone()
        };
        assert_eq!(problem("train/a/1.jpg"), None);
        assert_eq!(problem("train/a/3.jpg"), None);
        assert_eq!(problem("train/b/2.jpg"), None);
        assert!(problem("train/a/loop/").unwrap().contains("cycle"));
        assert!(problem("train/a/dangling.jpg")
            .unwrap()
            .starts_with("broken symbolic link"));
        assert_eq!(
            problem("train/a/pipe.jpg").as_deref(),
            Some("not a regular file (named pipe)")
        );
        assert!(!got.iter().any(|(n, _)| n.starts_with("shards")), "{got:?}");
        assert_eq!(got.len(), 6, "{got:?}");
        // Linked files read through the link; a pipe is never opened.
        let e = |name: &str| src.entries().iter().find(|e| e.name == name).unwrap();
        assert_eq!(src.read(e("train/b/2.jpg")).unwrap(), b"two!");
        assert_eq!(src.read(e("train/a/3.jpg")).unwrap(), b"three");
        assert!(src.read(e("train/a/pipe.jpg")).is_err());
        assert_eq!(src.info().size, 3 + 4 + 5);

        // A folder that cannot be listed is one entry naming it.
        let mut walker = Walker {
            root: &root,
            skip: None,
            foreign: None,
            ancestors: Vec::new(),
            entries: Vec::new(),
            mtimes: Vec::new(),
            clash: None,
        };
        walker.walk(&root.join("train/vanished"));
        assert_eq!(walker.entries.len(), 1);
        assert_eq!(walker.entries[0].name, "train/vanished/");
        assert!(walker.entries[0]
            .problem
            .as_deref()
            .unwrap()
            .starts_with("unreadable folder: "));
    }

    #[test]
    fn folder_identity_sees_a_file_replaced_deep_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        std::fs::create_dir_all(root.join("train/a")).unwrap();
        let file = root.join("train/a/1.jpg");
        std::fs::write(&file, b"same size A").unwrap();
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        let set_time = |t| {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        set_time(t0);
        let top = std::fs::metadata(&root).unwrap().modified().unwrap();
        let before = Source::open(&root, None).unwrap();
        assert_eq!(
            before.identity(),
            Source::open(&root, None).unwrap().identity()
        );
        std::fs::write(&file, b"same size B").unwrap();
        set_time(t0 + std::time::Duration::from_secs(60));
        assert_eq!(std::fs::metadata(&root).unwrap().modified().unwrap(), top);
        let after = Source::open(&root, None).unwrap();
        assert_eq!(before.info().size, after.info().size);
        assert_ne!(before.identity(), after.identity());
        // Adding a folder at the top (the output) changes nothing skipped.
        std::fs::create_dir_all(root.join("out")).unwrap();
        let skipped = Source::open(&root, Some((&root.join("out"), |_| true))).unwrap();
        assert_eq!(after.identity(), skipped.identity());
        assert_eq!(after.info(), skipped.info());
    }

    #[test]
    fn duplicate_zip_entry_names_are_kept_as_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dup.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, data) in [
            ("a/x.bin", b"first"),
            ("a/y.bin", b"other"),
            ("a/x.bin", b"later"),
        ] {
            // The writer refuses a repeated name; write it under a
            // same-length placeholder and patch the bytes afterwards.
            let written = if name == "a/x.bin" && data == b"later" {
                "a/X.bin"
            } else {
                name
            };
            z.start_file(written, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        let mut k = 0;
        while let Some(p) = raw[k..].windows(7).position(|w| w == b"a/X.bin") {
            raw[k + p + 2] = b'x';
            k += p + 7;
        }
        std::fs::write(&path, &raw).unwrap();
        let src = Source::open(&path, None).unwrap();
        let got = names(&src);
        let x: Vec<_> = got.iter().filter(|(n, _)| n == "a/x.bin").collect();
        assert_eq!(x.len(), 2, "{got:?}");
        assert!(x.iter().any(|(_, p)| p.is_none()));
        assert!(x.iter().any(|(_, p)| p
            .as_deref()
            .is_some_and(|p| p.starts_with("duplicate entry name"))));
        let kept = src
            .entries()
            .iter()
            .find(|e| e.name == "a/x.bin" && e.problem.is_none())
            .unwrap();
        assert_eq!(src.read(kept).unwrap(), b"later");
    }
}
