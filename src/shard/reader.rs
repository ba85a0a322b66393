//! Zero-copy reading of format-v1 shards through a memory map.
//!
//! [`ShardSet::open`] maps every shard listed in `manifest.json` and checks
//! it against the manifest (size, footer metadata, schema, row counts);
//! [`Shard::open`] maps a single file and checks what the file alone can
//! tell. Rows come back as [`Row`]: the label, the key as a `&str` and the
//! image as a `&[u8]`, both borrowed from the mapping — nothing is copied.
//!
//! How the slices are found: every column is uncompressed PLAIN in data
//! pages without definition levels, so a page's values start right after
//! its header. The first access to a row group parses the page headers of
//! its three column chunks once ([`super::page`]) and caches, per row, where
//! the key and the image lie; labels are decoded into that cache (4 bytes a
//! row). Later accesses to the row group are two slice operations.
//!
//! Page-cache behaviour: a fault on a mapped page makes the kernel read
//! around it (`read_ahead_kb`: 128 KiB by default, 8 MiB on some cloud
//! disks), which suits sequential reads and wastes the rest. [`Access`]
//! passes the caller's pattern to the OS (`madvise`): with
//! [`Access::Random`] a fault reads its page only, and a reader of
//! scattered rows announces each image with [`RowGroup::prefetch_image`]
//! (one request for exactly its bytes). BYTE_ARRAY values (JPEG images,
//! keys) can only be found by reading every length prefix before them, so a
//! JPEG shard's footer lists its image lengths (`ebv.image_lengths`) and the
//! reader places images from that; for older shards without it, a row
//! group's first access under `Random` announces its whole image column and
//! walks it (one request instead of a fault per image). Keys are always
//! walked (a few KB per row group). Advice never changes what is read, only
//! how much the OS reads around it.
//!
//! Contract:
//! - an index out of range (row, row group, global row of a split) is a
//!   programming error and **panics**, like slice indexing; check
//!   `num_rows` / `num_row_groups` first;
//! - anything wrong with the files themselves (missing, unreadable,
//!   truncated, wrong schema or metadata, corrupt page headers, invalid
//!   UTF-8 keys) is a [`ReadError`] naming the file and, where it applies,
//!   the row group and column. Nothing here panics on bad bytes.
//! - Safety of the mapping: shards are immutable once they carry their final
//!   name (the writer renames a complete file into place). Modifying or
//!   truncating a shard while it is mapped is outside the contract: the OS
//!   may then deliver SIGBUS on access, as with any memory-mapped reader.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

#[cfg(unix)]
use memmap2::Advice;
use memmap2::Mmap;
use parquet::basic::{Compression, ConvertedType, Type as PhysicalType};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::checksum::Checksum;
use super::classes::read_classes_tsv;
use super::manifest::{Manifest, ShardRecord, MANIFEST_FILE};
use super::page::{
    parse_page_header, ENCODING_PLAIN, PAGE_DATA, PAGE_DATA_V2, PAGE_DICTIONARY, PAGE_INDEX,
};
use super::schema::{
    decode_image_lengths, Encoding, ShardMeta, Split, CLASSES_FILE, COL_IMAGE, COL_KEY, COL_LABEL,
    FORMAT_VERSION, IMAGE_LENGTHS_KEY,
};
use super::writer::ShardError;

/// Column names in schema order; the reader refers to columns by index.
const COLUMNS: [&str; 3] = [COL_LABEL, COL_IMAGE, COL_KEY];
const LABEL: usize = 0;
const IMAGE: usize = 1;
const KEY: usize = 2;

/// Why a shard folder or a shard cannot be read. Every variant names the
/// file; corrupt data also names the row group and the column.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: missing (listed in manifest.json)")]
    Missing { path: PathBuf },
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: truncated: {actual} bytes, manifest.json says {expected}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {actual} bytes, manifest.json says {expected}")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: not a complete Parquet file: {detail}")]
    NotParquet { path: PathBuf, detail: String },
    #[error("{path}: unreadable Parquet footer: {detail}")]
    Footer { path: PathBuf, detail: String },
    #[error("{path}: wrong schema: {detail}")]
    Schema { path: PathBuf, detail: String },
    #[error("{path}: footer metadata: {detail}")]
    Metadata { path: PathBuf, detail: String },
    #[error("{path}: does not match manifest.json: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("{path}: row group {row_group}, column '{column}': {detail}")]
    Corrupt {
        path: PathBuf,
        row_group: usize,
        column: &'static str,
        detail: String,
    },
    #[error("{path}: xxh3_128 {actual} does not match manifest.json ({expected})")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// `manifest.json` or `classes.tsv` unreadable or inconsistent.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

impl ReadError {
    /// The file the error is about.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ReadError::Missing { path }
            | ReadError::Io { path, .. }
            | ReadError::Truncated { path, .. }
            | ReadError::Size { path, .. }
            | ReadError::NotParquet { path, .. }
            | ReadError::Footer { path, .. }
            | ReadError::Schema { path, .. }
            | ReadError::Metadata { path, .. }
            | ReadError::Mismatch { path, .. }
            | ReadError::Corrupt { path, .. }
            | ReadError::Checksum { path, .. } => Some(path),
            ReadError::Shard(ShardError::Io { path, .. })
            | ReadError::Shard(ShardError::Parquet { path, .. })
            | ReadError::Shard(ShardError::Invalid { path, .. }) => Some(path),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> ReadError {
        ReadError::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
}

/// How a shard's pages are about to be read; see the module header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// The OS default: a fault reads around itself.
    #[default]
    Normal,
    /// Front to back, once: aggressive readahead, and the kernel may drop
    /// pages soon after they are read (one-pass scans such as
    /// `ebv-stats --deep`; not for data read again, like an eval split).
    Sequential,
    /// Scattered rows: a fault reads its own page only; announce larger
    /// reads with [`RowGroup::prefetch_image`].
    Random,
}

impl Access {
    fn code(self) -> u8 {
        match self {
            Access::Normal => 0,
            Access::Sequential => 1,
            Access::Random => 2,
        }
    }
}

/// One row, borrowed from the mapped shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub label: u32,
    pub key: &'a str,
    /// The stored image: JPEG bytes, or H*W*3 RGB8 bytes for raw shards.
    pub image: &'a [u8],
}

/// Where one value lies, relative to its column chunk. Eight bytes a row
/// keeps the cache small (a 1.8M-row set costs ~36 MB for keys and images
/// if every row group is touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    offset: u32,
    len: u32,
}

/// The decoded page layout of one row group.
#[derive(Debug)]
struct RowGroupIndex {
    labels: Vec<u32>,
    key_base: usize,
    keys: Vec<Span>,
    image_base: usize,
    images: Vec<Span>,
}

/// The values region of one data page.
struct PageValues {
    start: usize,
    end: usize,
    count: usize,
}

/// A memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    metadata: ParquetMetaData,
    meta: ShardMeta,
    rows: u64,
    /// First row of each row group, plus the total at the end.
    group_starts: Vec<u64>,
    groups: Vec<OnceLock<RowGroupIndex>>,
    /// The last [`Access`] given to [`Shard::advise`], as its code.
    access: AtomicU8,
    /// JPEG shards: every image's length from the footer
    /// (`ebv.image_lengths`), in row order; None when the footer has none.
    image_lengths: Option<Vec<u32>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .field("row_groups", &self.groups.len())
            .field("meta", &self.meta)
            .finish()
    }
}

impl Shard {
    /// Map one shard and check what the file alone can tell: Parquet magic
    /// and footer, format version, the v1 schema and footer metadata, and
    /// that every column chunk is uncompressed and inside the file.
    pub fn open(path: &Path) -> Result<Shard, ReadError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::Missing {
                path: path.to_path_buf(),
            },
            _ => ReadError::io(path, e),
        })?;
        let len = file.metadata().map_err(|e| ReadError::io(path, e))?.len();
        if len < 12 {
            return Err(ReadError::NotParquet {
                path: path.to_path_buf(),
                detail: format!("{len} bytes, too short for a Parquet file"),
            });
        }
        // SAFETY: the map is read-only and shards are immutable once named
        // (see the module contract); we never create a `&mut` into it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ReadError::io(path, e))?;
        // The footer is a few KB at the end: without this, its fault would
        // read `read_ahead_kb` of images around it (8 MiB on some disks).
        #[cfg(unix)]
        let _ = map.advise(Advice::Random);
        let metadata = read_footer(path, &map)?;
        let kv = key_values(&metadata);
        let meta = check_schema_and_meta(path, &metadata, &kv)?;
        let mut group_starts = Vec::with_capacity(metadata.num_row_groups() + 1);
        let mut rows = 0u64;
        for (i, rg) in metadata.row_groups().iter().enumerate() {
            group_starts.push(rows);
            let n = u64::try_from(rg.num_rows()).map_err(|_| ReadError::Footer {
                path: path.to_path_buf(),
                detail: format!("row group {i} has {} rows", rg.num_rows()),
            })?;
            rows += n;
            check_chunks(path, &map, i, rg)?;
        }
        group_starts.push(rows);
        let declared = metadata.file_metadata().num_rows();
        if declared != rows as i64 {
            return Err(ReadError::Footer {
                path: path.to_path_buf(),
                detail: format!("footer says {declared} rows, its row groups hold {rows}"),
            });
        }
        let image_lengths = match kv.get(IMAGE_LENGTHS_KEY) {
            None => None,
            Some(_) if meta.encoding != Encoding::Jpeg => {
                return Err(ReadError::Metadata {
                    path: path.to_path_buf(),
                    detail: format!("'{IMAGE_LENGTHS_KEY}' in a {} shard", meta.encoding),
                })
            }
            Some(v) => {
                Some(
                    decode_image_lengths(v, rows).map_err(|detail| ReadError::Metadata {
                        path: path.to_path_buf(),
                        detail,
                    })?,
                )
            }
        };
        let groups = (0..metadata.num_row_groups())
            .map(|_| OnceLock::new())
            .collect();
        let shard = Shard {
            path: path.to_path_buf(),
            map,
            metadata,
            meta,
            rows,
            group_starts,
            groups,
            access: AtomicU8::new(Access::Random.code()),
            image_lengths,
        };
        shard.advise(Access::Normal);
        Ok(shard)
    }

    /// Tell the OS how this shard's pages are about to be read. A hint: an
    /// OS that refuses it (or has no `madvise`) reads the same bytes, maybe
    /// slower, so a refusal is not an error.
    pub fn advise(&self, access: Access) {
        self.access.store(access.code(), Ordering::Relaxed);
        #[cfg(unix)]
        {
            let advice = match access {
                Access::Normal => Advice::Normal,
                Access::Sequential => Advice::Sequential,
                Access::Random => Advice::Random,
            };
            // Advisory; see the doc comment.
            let _ = self.map.advise(advice);
        }
    }

    /// Whether an image's place is known without reading the image column:
    /// raw shards (fixed width) and JPEG shards whose footer lists the image
    /// lengths. Otherwise a row group's first access reads its images whole.
    pub fn locates_images_without_reading(&self) -> bool {
        self.meta.encoding == Encoding::Raw || self.image_lengths.is_some()
    }

    /// The access pattern last given to [`Shard::advise`].
    pub fn access(&self) -> Access {
        match self.access.load(Ordering::Relaxed) {
            1 => Access::Sequential,
            2 => Access::Random,
            _ => Access::Normal,
        }
    }

    /// Ask the OS to start reading `range` of the file now (`MADV_WILLNEED`):
    /// one request for the whole range, where touching it page by page under
    /// [`Access::Random`] would fault once per page. Returns at once; a
    /// range outside the file is ignored (it cannot come from this reader).
    fn prefetch(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if range.start < range.end && range.end <= self.map.len() {
            // Advisory, like `advise`.
            let _ = self
                .map
                .advise_range(Advice::WillNeed, range.start, range.end - range.start);
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// Open a shard listed in `manifest` and check it against its record:
    /// size (so a truncated file is named as such before anything is
    /// parsed), footer metadata, split, rows and row groups. The checksum
    /// is not computed here (that reads every byte); see [`Shard::checksum`].
    pub fn open_listed(
        dir: &Path,
        record: &ShardRecord,
        manifest: &Manifest,
    ) -> Result<Shard, ReadError> {
        let path = dir.join(&record.file);
        let actual = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::Missing { path })
            }
            Err(e) => return Err(ReadError::io(&path, e)),
        };
        if actual < record.bytes {
            return Err(ReadError::Truncated {
                path,
                expected: record.bytes,
                actual,
            });
        }
        if actual != record.bytes {
            return Err(ReadError::Size {
                path,
                expected: record.bytes,
                actual,
            });
        }
        let shard = Shard::open(&path)?;
        let m = &shard.meta;
        let mismatch = |detail: String| ReadError::Mismatch {
            path: path.clone(),
            detail,
        };
        let checks: [(&str, String, String); 7] = [
            (
                "encoding",
                m.encoding.to_string(),
                manifest.encoding.to_string(),
            ),
            ("height", m.height.to_string(), manifest.height.to_string()),
            ("width", m.width.to_string(), manifest.width.to_string()),
            (
                "num_classes",
                m.num_classes.to_string(),
                manifest.num_classes.to_string(),
            ),
            ("plan", m.plan.clone(), manifest.plan.clone()),
            ("split", m.split.to_string(), record.split.to_string()),
            (
                "row groups",
                shard.num_row_groups().to_string(),
                record.row_groups.to_string(),
            ),
        ];
        for (what, footer, listed) in checks {
            if footer != listed {
                return Err(mismatch(format!(
                    "{what}: file has {footer}, manifest has {listed}"
                )));
            }
        }
        if shard.rows != record.rows {
            return Err(mismatch(format!(
                "rows: file has {}, manifest has {}",
                shard.rows, record.rows
            )));
        }
        if !record.file.starts_with(&format!("{}-", record.split)) {
            return Err(mismatch(format!(
                "file name does not start with its split '{}'",
                record.split
            )));
        }
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name (`train-00000.parquet`).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Footer key-value metadata (`ebv.*`).
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    /// The parsed Parquet footer.
    pub fn metadata(&self) -> &ParquetMetaData {
        &self.metadata
    }

    /// The whole mapped file.
    pub fn mapped(&self) -> &[u8] {
        &self.map
    }

    pub fn num_rows(&self) -> u64 {
        self.rows
    }

    pub fn num_row_groups(&self) -> usize {
        self.groups.len()
    }

    /// Rows of row group `rg`. Panics if `rg >= num_row_groups()`.
    pub fn row_group_len(&self, rg: usize) -> u64 {
        self.group_starts[rg + 1] - self.group_starts[rg]
    }

    /// Bytes of the image column chunks (page headers included), from the
    /// footer.
    pub fn image_bytes(&self) -> u64 {
        self.metadata
            .row_groups()
            .iter()
            .map(|rg| rg.column(IMAGE).compressed_size().max(0) as u64)
            .sum()
    }

    /// The row group holding `row` and the row's index within it.
    /// Panics if `row >= num_rows()`.
    pub fn locate(&self, row: u64) -> (usize, usize) {
        assert!(
            row < self.rows,
            "row {row} out of range: {} has {} rows",
            self.path.display(),
            self.rows
        );
        // group_starts is sorted; the group is the last start <= row.
        let rg = self.group_starts.partition_point(|&s| s <= row) - 1;
        (rg, (row - self.group_starts[rg]) as usize)
    }

    /// Row `row` of this shard. Panics if `row >= num_rows()`.
    pub fn row(&self, row: u64) -> Result<Row<'_>, ReadError> {
        let (rg, i) = self.locate(row);
        Ok(self.row_group(rg)?.row(i))
    }

    /// Row group `rg`, its page layout parsed on first use and cached.
    /// Panics if `rg >= num_row_groups()`.
    pub fn row_group(&self, rg: usize) -> Result<RowGroup<'_>, ReadError> {
        let cell = &self.groups[rg];
        let index = match cell.get() {
            Some(index) => index,
            None => {
                // Two threads may both build it; one result is kept, and
                // both are identical, so the race is harmless.
                let built = self.build_index(rg)?;
                cell.get_or_init(|| built)
            }
        };
        Ok(RowGroup {
            shard: self,
            index: rg,
            first_row: self.group_starts[rg],
            data: index,
        })
    }

    /// Every row group in file order (sequential iteration).
    pub fn row_groups(&self) -> impl Iterator<Item = Result<RowGroup<'_>, ReadError>> + '_ {
        (0..self.num_row_groups()).map(move |rg| self.row_group(rg))
    }

    /// Every label of the shard in row order, decoded from the label pages
    /// only: the image and key columns are not touched and nothing is
    /// cached (this is what the default `ebv-stats` reads).
    pub fn labels(&self) -> Result<Vec<u32>, ReadError> {
        let mut out = Vec::with_capacity(self.rows as usize);
        for rg in 0..self.num_row_groups() {
            if let Some(index) = self.groups[rg].get() {
                out.extend_from_slice(&index.labels);
            } else {
                let pages = self.pages(rg, LABEL)?;
                out.extend(self.decode_labels(rg, &pages)?);
            }
        }
        Ok(out)
    }

    /// Parse every page of every row group (what `--verify` does besides
    /// the checksum). Caches the row-group layouts as a side effect.
    pub fn check_pages(&self) -> Result<(), ReadError> {
        for g in self.row_groups() {
            self.check_listed_lengths(&g?)?;
        }
        Ok(())
    }

    /// Where row group `g`'s index came from the footer's image lengths
    /// (read without touching the images), walk the page's length prefixes
    /// too: they must agree. A footer edited so that its lengths still fill
    /// the page would otherwise slice every image at the wrong place, and
    /// the damage be blamed on the images. Reads a few bytes per image.
    pub fn check_listed_lengths(&self, g: &RowGroup<'_>) -> Result<(), ReadError> {
        if self.image_lengths.is_none() {
            return Ok(());
        }
        let pages = self.pages(g.index, IMAGE)?;
        let walked = self.image_spans(g.index, &pages)?;
        if walked.0 != g.data.image_base || walked.1 != g.data.images {
            let first = walked
                .1
                .iter()
                .zip(&g.data.images)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(self.corrupt(
                g.index,
                IMAGE,
                format!("row {first}: length prefix disagrees with '{IMAGE_LENGTHS_KEY}'"),
            ));
        }
        Ok(())
    }

    /// The file's checksum (see `checksum`), calling `progress` with the
    /// bytes hashed after each 4 MiB.
    pub fn checksum(&self, progress: &dyn Fn(u64)) -> String {
        Checksum::of_chunked(&self.map, progress)
    }

    fn corrupt(&self, rg: usize, col: usize, detail: String) -> ReadError {
        ReadError::Corrupt {
            path: self.path.clone(),
            row_group: rg,
            column: COLUMNS[col],
            detail,
        }
    }

    /// The byte range of a column chunk (checked against the file at open).
    fn chunk_range(&self, rg: usize, col: usize) -> (usize, usize) {
        let cc = self.metadata.row_group(rg).column(col);
        let start = cc
            .dictionary_page_offset()
            .unwrap_or(cc.data_page_offset())
            .max(0) as usize;
        (start, start + cc.compressed_size().max(0) as usize)
    }

    /// Walk the pages of one column chunk and return where each data
    /// page's PLAIN values lie.
    fn pages(&self, rg: usize, col: usize) -> Result<Vec<PageValues>, ReadError> {
        let (start, end) = self.chunk_range(rg, col);
        let rows = self.row_group_len(rg) as usize;
        let mut pos = start;
        let mut out = Vec::new();
        let mut values = 0usize;
        while pos < end {
            let h = parse_page_header(&self.map[pos..end])
                .map_err(|e| self.corrupt(rg, col, format!("page header at byte {pos}: {e}")))?;
            let body = pos + h.header_len;
            let next = body
                .checked_add(h.compressed_size as usize)
                .filter(|&n| n <= end)
                .ok_or_else(|| {
                    self.corrupt(
                        rg,
                        col,
                        format!(
                            "page at byte {pos} claims {} bytes, past the end of its column chunk",
                            h.compressed_size
                        ),
                    )
                })?;
            match h.page_type {
                PAGE_DATA | PAGE_DATA_V2 => {
                    let encoding = h.encoding.unwrap_or(-1);
                    if encoding != ENCODING_PLAIN {
                        return Err(self.corrupt(
                            rg,
                            col,
                            format!("page at byte {pos} has encoding {encoding}, expected PLAIN"),
                        ));
                    }
                    if h.compressed_size != h.uncompressed_size {
                        return Err(self.corrupt(
                            rg,
                            col,
                            format!(
                                "page at byte {pos}: compressed size {} differs from uncompressed {} in an uncompressed file",
                                h.compressed_size, h.uncompressed_size
                            ),
                        ));
                    }
                    let levels = if h.page_type == PAGE_DATA_V2 {
                        h.levels_len as usize
                    } else {
                        // V1 pages of required, non-nested columns carry no levels.
                        0
                    };
                    if body + levels > next {
                        return Err(self.corrupt(
                            rg,
                            col,
                            format!("page at byte {pos}: levels longer than the page"),
                        ));
                    }
                    let count = h.num_values.unwrap_or(0);
                    let count = usize::try_from(count).map_err(|_| {
                        self.corrupt(rg, col, format!("page at byte {pos}: {count} values"))
                    })?;
                    values += count;
                    out.push(PageValues {
                        start: body + levels,
                        end: next,
                        count,
                    });
                }
                PAGE_DICTIONARY => {
                    return Err(self.corrupt(
                        rg,
                        col,
                        "dictionary page: format v1 stores every column PLAIN without a dictionary"
                            .into(),
                    ))
                }
                // Index pages (never written in practice) carry no values.
                PAGE_INDEX => {}
                other => {
                    return Err(self.corrupt(
                        rg,
                        col,
                        format!("page at byte {pos} has unknown page type {other}"),
                    ))
                }
            }
            pos = next;
        }
        if values != rows {
            return Err(self.corrupt(
                rg,
                col,
                format!("pages hold {values} values, the row group has {rows} rows"),
            ));
        }
        Ok(out)
    }

    fn decode_labels(&self, rg: usize, pages: &[PageValues]) -> Result<Vec<u32>, ReadError> {
        let mut labels = Vec::with_capacity(self.row_group_len(rg) as usize);
        for p in pages {
            let bytes = &self.map[p.start..p.end];
            if bytes.len() != p.count * 4 {
                return Err(self.corrupt(
                    rg,
                    LABEL,
                    format!(
                        "page at byte {} holds {} bytes for {} uint32 values",
                        p.start,
                        bytes.len(),
                        p.count
                    ),
                ));
            }
            labels.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(labels)
    }

    /// Spans of PLAIN BYTE_ARRAY values (4-byte little-endian length, then
    /// the bytes), or of FIXED_LEN_BYTE_ARRAY values of `fixed` bytes.
    fn spans(
        &self,
        rg: usize,
        col: usize,
        pages: &[PageValues],
        fixed: Option<usize>,
    ) -> Result<(usize, Vec<Span>), ReadError> {
        let (base, end) = self.chunk_range(rg, col);
        if end - base > u32::MAX as usize {
            return Err(self.corrupt(rg, col, "column chunk larger than 4 GiB".into()));
        }
        let mut spans = Vec::with_capacity(self.row_group_len(rg) as usize);
        for p in pages {
            match fixed {
                Some(width) => {
                    if p.end - p.start != p.count * width {
                        return Err(self.corrupt(
                            rg,
                            col,
                            format!(
                                "page at byte {} holds {} bytes for {} values of {width} bytes",
                                p.start,
                                p.end - p.start,
                                p.count
                            ),
                        ));
                    }
                    spans.extend((0..p.count).map(|i| Span {
                        offset: (p.start + i * width - base) as u32,
                        len: width as u32,
                    }));
                }
                None => {
                    let mut pos = p.start;
                    for i in 0..p.count {
                        let len = self
                            .map
                            .get(pos..pos + 4)
                            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                            .filter(|&len| pos + 4 + len <= p.end)
                            .ok_or_else(|| {
                                self.corrupt(
                                    rg,
                                    col,
                                    format!(
                                        "value {i} of the page at byte {}: length runs past the page",
                                        p.start
                                    ),
                                )
                            })?;
                        spans.push(Span {
                            offset: (pos + 4 - base) as u32,
                            len: len as u32,
                        });
                        pos += 4 + len;
                    }
                    if pos != p.end {
                        return Err(self.corrupt(
                            rg,
                            col,
                            format!(
                                "page at byte {} has {} bytes after its {} values",
                                p.start,
                                p.end - pos,
                                p.count
                            ),
                        ));
                    }
                }
            }
        }
        Ok((base, spans))
    }

    /// The image spans of row group `rg`, read from the column itself.
    fn image_spans(
        &self,
        rg: usize,
        pages: &[PageValues],
    ) -> Result<(usize, Vec<Span>), ReadError> {
        let fixed = match self.meta.encoding {
            Encoding::Raw => Some(self.meta.height as usize * self.meta.width as usize * 3),
            Encoding::Jpeg => None,
        };
        self.spans(rg, IMAGE, pages, fixed)
    }

    /// The image spans of row group `rg` from the footer's lengths, without
    /// touching the values: None without lengths or when the chunk is not
    /// the one data page `ebv-pack` writes (then the column is walked). The
    /// lengths must fill the page exactly; `check_pages` also compares them
    /// with the length prefixes.
    fn listed_spans(
        &self,
        rg: usize,
        pages: &[PageValues],
    ) -> Result<Option<(usize, Vec<Span>)>, ReadError> {
        let (Some(all), [page]) = (&self.image_lengths, pages) else {
            return Ok(None);
        };
        let lens = &all[self.group_starts[rg] as usize..self.group_starts[rg + 1] as usize];
        let total: u64 = lens.iter().map(|&l| u64::from(l) + 4).sum();
        if page.count != lens.len() || total != (page.end - page.start) as u64 {
            return Err(self.corrupt(
                rg,
                IMAGE,
                format!(
                    "'{IMAGE_LENGTHS_KEY}' lists {} images of {total} bytes with prefixes, \
                     the page holds {} values in {} bytes",
                    lens.len(),
                    page.count,
                    page.end - page.start
                ),
            ));
        }
        let (base, end) = self.chunk_range(rg, IMAGE);
        if end - base > u32::MAX as usize {
            return Err(self.corrupt(rg, IMAGE, "column chunk larger than 4 GiB".into()));
        }
        let mut pos = page.start;
        let spans = lens
            .iter()
            .map(|&len| {
                let span = Span {
                    offset: (pos + 4 - base) as u32,
                    len,
                };
                pos += 4 + len as usize;
                span
            })
            .collect();
        Ok(Some((base, spans)))
    }

    fn build_index(&self, rg: usize) -> Result<RowGroupIndex, ReadError> {
        if self.access() == Access::Random {
            // The walks below touch every key (and, without the footer's
            // lengths, every JPEG's length prefix): one request per chunk
            // instead of a fault per page.
            for col in [LABEL, KEY, IMAGE] {
                if col != IMAGE || !self.locates_images_without_reading() {
                    let (start, end) = self.chunk_range(rg, col);
                    self.prefetch(start..end);
                }
            }
        }
        let label_pages = self.pages(rg, LABEL)?;
        let labels = self.decode_labels(rg, &label_pages)?;
        let image_pages = self.pages(rg, IMAGE)?;
        let (image_base, images) = match self.listed_spans(rg, &image_pages)? {
            Some(found) => found,
            None => self.image_spans(rg, &image_pages)?,
        };
        let key_pages = self.pages(rg, KEY)?;
        let (key_base, keys) = self.spans(rg, KEY, &key_pages, None)?;
        // Validate UTF-8 once here so that key access later cannot fail.
        for (i, s) in keys.iter().enumerate() {
            let start = key_base + s.offset as usize;
            if std::str::from_utf8(&self.map[start..start + s.len as usize]).is_err() {
                return Err(self.corrupt(rg, KEY, format!("row {i}: key is not UTF-8")));
            }
        }
        Ok(RowGroupIndex {
            labels,
            key_base,
            keys,
            image_base,
            images,
        })
    }
}

/// Read and decode the Parquet footer of a mapped file.
fn read_footer(path: &Path, map: &Mmap) -> Result<ParquetMetaData, ReadError> {
    let n = map.len();
    let not = |detail: String| ReadError::NotParquet {
        path: path.to_path_buf(),
        detail,
    };
    if &map[..4] != b"PAR1" {
        return Err(not("no PAR1 magic at the start".into()));
    }
    if &map[n - 4..] != b"PAR1" {
        return Err(not(
            "no PAR1 magic at the end (truncated, or not finished writing)".into(),
        ));
    }
    let footer_len = u32::from_le_bytes([map[n - 8], map[n - 7], map[n - 6], map[n - 5]]) as usize;
    if footer_len + 12 > n {
        return Err(ReadError::Footer {
            path: path.to_path_buf(),
            detail: format!("footer length {footer_len} exceeds the file ({n} bytes)"),
        });
    }
    // One request for the whole footer (tens of KB with the image
    // lengths) instead of a fault per page under `Access::Random`.
    #[cfg(unix)]
    let _ = map.advise_range(Advice::WillNeed, n - 8 - footer_len, footer_len);
    ParquetMetaDataReader::decode_metadata(&map[n - 8 - footer_len..n - 8]).map_err(|e| {
        ReadError::Footer {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    })
}

/// The footer's key-value metadata.
fn key_values(md: &ParquetMetaData) -> HashMap<String, String> {
    md.file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// Check the v1 schema and parse the `ebv.*` footer metadata (`kv`, from
/// [`key_values`]).
fn check_schema_and_meta(
    path: &Path,
    md: &ParquetMetaData,
    kv: &HashMap<String, String>,
) -> Result<ShardMeta, ReadError> {
    let fm = md.file_metadata();
    let meta = ShardMeta::from_key_values(kv).map_err(|detail| ReadError::Metadata {
        path: path.to_path_buf(),
        detail,
    })?;
    if meta.format_version != FORMAT_VERSION {
        return Err(ReadError::Metadata {
            path: path.to_path_buf(),
            detail: format!(
                "format version {}, this reader reads version {FORMAT_VERSION}",
                meta.format_version
            ),
        });
    }
    let schema = |detail: String| ReadError::Schema {
        path: path.to_path_buf(),
        detail,
    };
    let descr = fm.schema_descr();
    let names: Vec<&str> = descr.columns().iter().map(|c| c.name()).collect();
    if names != COLUMNS {
        return Err(schema(format!("columns {names:?}, expected {COLUMNS:?}")));
    }
    for c in descr.columns() {
        if c.max_def_level() != 0 || c.max_rep_level() != 0 {
            return Err(schema(format!(
                "column '{}' is nullable or nested; v1 columns are required",
                c.name()
            )));
        }
    }
    let label = descr.column(LABEL);
    if label.physical_type() != PhysicalType::INT32
        || label.converted_type() != ConvertedType::UINT_32
    {
        return Err(schema(format!(
            "column 'label' is {} ({}), expected INT32 (UINT_32)",
            label.physical_type(),
            label.converted_type()
        )));
    }
    let image = descr.column(IMAGE);
    let expected_len = u64::from(meta.height) * u64::from(meta.width) * 3;
    match (meta.encoding, image.physical_type()) {
        (Encoding::Jpeg, PhysicalType::BYTE_ARRAY) => {}
        (Encoding::Raw, PhysicalType::FIXED_LEN_BYTE_ARRAY)
            if image.type_length() as u64 == expected_len => {}
        (enc, ty) => {
            return Err(schema(format!(
                "column 'image' is {ty} of length {} for encoding {enc} at {}x{}",
                image.type_length(),
                meta.width,
                meta.height
            )))
        }
    }
    let key = descr.column(KEY);
    if key.physical_type() != PhysicalType::BYTE_ARRAY {
        return Err(schema(format!(
            "column 'key' is {}, expected BYTE_ARRAY (utf8)",
            key.physical_type()
        )));
    }
    Ok(meta)
}

/// Footer-level checks of one row group's column chunks, so that later
/// page walks stay inside the file.
fn check_chunks(
    path: &Path,
    map: &[u8],
    rg: usize,
    meta: &parquet::file::metadata::RowGroupMetaData,
) -> Result<(), ReadError> {
    if meta.num_columns() != COLUMNS.len() {
        return Err(ReadError::Footer {
            path: path.to_path_buf(),
            detail: format!("row group {rg} has {} columns", meta.num_columns()),
        });
    }
    for (col, name) in COLUMNS.iter().enumerate() {
        let cc = meta.column(col);
        let corrupt = |detail: String| ReadError::Corrupt {
            path: path.to_path_buf(),
            row_group: rg,
            column: name,
            detail,
        };
        if cc.compression() != Compression::UNCOMPRESSED {
            return Err(corrupt(format!(
                "compressed with {}; format v1 is uncompressed",
                cc.compression()
            )));
        }
        if cc.dictionary_page_offset().is_some() {
            return Err(corrupt("has a dictionary page; format v1 is PLAIN".into()));
        }
        let start = cc.data_page_offset();
        let len = cc.compressed_size();
        let end = start.checked_add(len);
        match end {
            Some(end) if start >= 4 && len >= 0 && end as u64 <= map.len() as u64 - 8 => {}
            _ => {
                return Err(corrupt(format!(
                    "column chunk at byte {start}, {len} bytes, lies outside the file ({} bytes)",
                    map.len()
                )))
            }
        }
        if cc.num_values() != meta.num_rows() {
            return Err(corrupt(format!(
                "{} values for {} rows",
                cc.num_values(),
                meta.num_rows()
            )));
        }
    }
    Ok(())
}

/// One row group of a shard with its page layout parsed. Accessors take
/// an index within the row group and panic when it is out of range.
#[derive(Clone, Copy)]
pub struct RowGroup<'a> {
    shard: &'a Shard,
    index: usize,
    first_row: u64,
    data: &'a RowGroupIndex,
}

impl<'a> RowGroup<'a> {
    /// The row group's index in its shard.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The shard row of this group's first row.
    pub fn first_row(&self) -> u64 {
        self.first_row
    }

    pub fn len(&self) -> usize {
        self.data.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.labels.is_empty()
    }

    /// Every label of the row group.
    pub fn labels(&self) -> &'a [u32] {
        &self.data.labels
    }

    pub fn label(&self, i: usize) -> u32 {
        self.data.labels[i]
    }

    pub fn key(&self, i: usize) -> &'a str {
        let s = self.data.keys[i];
        let start = self.data.key_base + s.offset as usize;
        let bytes = &self.shard.map[start..start + s.len as usize];
        // SAFETY: `build_index` checked that every key of this row group is
        // UTF-8, and the mapping is immutable (module contract).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The stored image bytes, a slice of the mapped file.
    pub fn image(&self, i: usize) -> &'a [u8] {
        let s = self.data.images[i];
        let start = self.data.image_base + s.offset as usize;
        &self.shard.map[start..start + s.len as usize]
    }

    /// Announce that image `i` is about to be read (see the module
    /// header): under [`Access::Random`] its bytes then arrive as one read
    /// instead of a fault per page. Cheap when they are already cached.
    pub fn prefetch_image(&self, i: usize) {
        let s = self.data.images[i];
        let start = self.data.image_base + s.offset as usize;
        self.shard.prefetch(start..start + s.len as usize);
    }

    pub fn row(&self, i: usize) -> Row<'a> {
        Row {
            label: self.label(i),
            key: self.key(i),
            image: self.image(i),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Row<'a>> + 'a {
        let g = *self;
        (0..g.len()).map(move |i| g.row(i))
    }
}

/// An output folder of `ebv-pack`: manifest, classes and every shard,
/// mapped and checked against the manifest.
#[derive(Debug)]
pub struct ShardSet {
    dir: PathBuf,
    manifest: Manifest,
    classes: Vec<String>,
    /// In manifest order.
    shards: Vec<Shard>,
    /// Per split: indices into `shards` in file-name order, and the global
    /// row at which each starts (plus the split's total at the end).
    splits: [(Vec<usize>, Vec<u64>); 2],
}

fn split_slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Val => 1,
    }
}

impl ShardSet {
    /// Open `dir`: read `manifest.json` and `classes.tsv`, then map and
    /// check every listed shard (see [`Shard::open_listed`]). Fails on the
    /// first problem, naming the file.
    pub fn open(dir: impl AsRef<Path>) -> Result<ShardSet, ReadError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::load(&manifest_path)?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ReadError::Metadata {
                path: manifest_path,
                detail: format!(
                    "format version {}, this reader reads version {FORMAT_VERSION}",
                    manifest.format_version
                ),
            });
        }
        let classes_path = dir.join(CLASSES_FILE);
        let classes = read_classes_tsv(&classes_path)?;
        if classes.len() != manifest.num_classes as usize {
            return Err(ReadError::Mismatch {
                path: classes_path,
                detail: format!(
                    "{} classes, manifest.json says {}",
                    classes.len(),
                    manifest.num_classes
                ),
            });
        }
        let shards = manifest
            .shards
            .iter()
            .map(|r| Shard::open_listed(&dir, r, &manifest))
            .collect::<Result<Vec<_>, _>>()?;
        let mut splits: [(Vec<usize>, Vec<u64>); 2] = Default::default();
        for split in Split::ALL {
            let mut idx: Vec<usize> = (0..shards.len())
                .filter(|&i| manifest.shards[i].split == split)
                .collect();
            idx.sort_by(|&a, &b| manifest.shards[a].file.cmp(&manifest.shards[b].file));
            let mut starts = Vec::with_capacity(idx.len() + 1);
            let mut total = 0u64;
            for &i in &idx {
                starts.push(total);
                total += shards[i].num_rows();
            }
            starts.push(total);
            splits[split_slot(split)] = (idx, starts);
        }
        Ok(ShardSet {
            dir,
            manifest,
            classes,
            shards,
            splits,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every shard, in manifest order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shards of `split` in file-name order (the order of its global
    /// row index).
    pub fn split_shards(&self, split: Split) -> impl Iterator<Item = &Shard> + '_ {
        self.splits[split_slot(split)]
            .0
            .iter()
            .map(move |&i| &self.shards[i])
    }

    /// [`Shard::advise`] for every shard of `split`.
    pub fn advise(&self, split: Split, access: Access) {
        for shard in self.split_shards(split) {
            shard.advise(access);
        }
    }

    /// Rows of `split`.
    pub fn num_rows(&self, split: Split) -> u64 {
        self.splits[split_slot(split)]
            .1
            .last()
            .copied()
            .unwrap_or(0)
    }

    /// Where global row `index` of `split` lives: (index into
    /// [`ShardSet::shards`], row within that shard). Panics if
    /// `index >= num_rows(split)`.
    pub fn locate(&self, split: Split, index: u64) -> (usize, u64) {
        let (idx, starts) = &self.splits[split_slot(split)];
        let total = starts.last().copied().unwrap_or(0);
        assert!(
            index < total,
            "row {index} out of range: split {split} has {total} rows"
        );
        let k = starts.partition_point(|&s| s <= index) - 1;
        (idx[k], index - starts[k])
    }

    /// Global row `index` of `split` (shards in file-name order). Panics if
    /// `index >= num_rows(split)`.
    pub fn row(&self, split: Split, index: u64) -> Result<Row<'_>, ReadError> {
        let (shard, row) = self.locate(split, index);
        self.shards[shard].row(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardWriter;

    fn meta(encoding: Encoding) -> ShardMeta {
        ShardMeta {
            format_version: FORMAT_VERSION,
            encoding,
            height: 2,
            width: 2,
            split: Split::Train,
            num_classes: 3,
            plan: "test".into(),
        }
    }

    /// 10 rows in row groups of 3, images of varied lengths (0 included).
    fn jpeg_rows() -> Vec<(u32, String, Vec<u8>)> {
        (0..10u32)
            .map(|i| {
                let len = [5, 0, 17, 3, 4096, 1, 9, 300, 2, 8000][i as usize];
                let img = (0..len).map(|b| (b as u32 * 7 + i) as u8).collect();
                (i % 3, format!("k{i}"), img)
            })
            .collect()
    }

    fn write(dir: &Path, enc: Encoding, rows: &[(u32, String, Vec<u8>)], lengths: bool) -> PathBuf {
        let mut w = ShardWriter::create(dir, 0, &meta(enc), 3).unwrap();
        w.list_image_lengths = lengths;
        for (label, key, img) in rows {
            w.push(*label, img.clone(), key).unwrap();
        }
        w.finish().unwrap().path
    }

    fn read_all(shard: &Shard) -> Vec<(u32, String, Vec<u8>)> {
        shard
            .row_groups()
            .flat_map(|g| {
                g.unwrap()
                    .iter()
                    .map(|r| (r.label, r.key.to_string(), r.image.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn jpeg_images_are_found_from_the_footer_lengths_or_by_walking() {
        let rows = jpeg_rows();
        for lengths in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), Encoding::Jpeg, &rows, lengths);
            for access in [Access::Normal, Access::Random] {
                let shard = Shard::open(&path).unwrap();
                assert_eq!(shard.image_lengths.is_some(), lengths);
                assert_eq!(shard.locates_images_without_reading(), lengths);
                shard.advise(access);
                assert_eq!(read_all(&shard), rows, "lengths {lengths}, {access:?}");
                shard.check_pages().unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let raw: Vec<_> = (0..4u32)
            .map(|i| (i, format!("r{i}"), vec![i as u8; 12]))
            .collect();
        let shard = Shard::open(&write(dir.path(), Encoding::Raw, &raw, true)).unwrap();
        assert!(shard.image_lengths.is_none() && shard.locates_images_without_reading());
        assert_eq!(read_all(&shard), raw);
    }

    #[test]
    fn a_length_prefix_that_disagrees_with_the_footer_is_named_by_check_pages() {
        let rows = jpeg_rows();
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), Encoding::Jpeg, &rows, true);
        // Row 2 of row group 1 (shard row 5, 1 byte): its prefix sits 4
        // bytes before its bytes.
        let offset = {
            let shard = Shard::open(&path).unwrap();
            let g = shard.row_group(1).unwrap();
            g.image(2).as_ptr() as usize - shard.mapped().as_ptr() as usize - 4
        };
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[offset..offset + 4], 1u32.to_le_bytes());
        bytes[offset] = 2;
        std::fs::write(&path, &bytes).unwrap();
        let shard = Shard::open(&path).unwrap();
        // The footer still places every image where it is...
        assert_eq!(read_all(&shard), rows);
        // ...and the full check walks the prefixes.
        let e = shard.check_pages().unwrap_err().to_string();
        assert!(
            e.contains("train-00000.parquet") && e.contains("row group 1") && e.contains("image"),
            "{e}"
        );
    }

    #[test]
    fn short_and_non_parquet_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        std::fs::write(&p, b"PAR1").unwrap();
        let e = Shard::open(&p).unwrap_err();
        assert!(matches!(e, ReadError::NotParquet { .. }), "{e}");
        std::fs::write(&p, b"PAR1 some bytes but no end magic").unwrap();
        let e = Shard::open(&p).unwrap_err().to_string();
        assert!(e.contains("x.parquet") && e.contains("end"), "{e}");
        let mut bogus = b"PAR1".to_vec();
        bogus.extend([7u8; 20]);
        bogus.extend(1000u32.to_le_bytes());
        bogus.extend(b"PAR1");
        std::fs::write(&p, &bogus).unwrap();
        let e = Shard::open(&p).unwrap_err();
        assert!(matches!(e, ReadError::Footer { .. }), "{e}");
        let e = Shard::open(&dir.path().join("absent.parquet")).unwrap_err();
        assert!(matches!(e, ReadError::Missing { .. }), "{e}");
    }
}
