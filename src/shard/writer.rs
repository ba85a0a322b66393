//! Writing one shard: rows in, a complete Parquet file out, atomically.
//!
//! Invariants: the file appears under its final name only after every byte
//! is written (temporary name + rename), so a process killed at any moment
//! never leaves a final-named shard that is not whole; a writer dropped
//! before `finish` removes its temporary file. Durability against power
//! loss is the caller's step: [`sync_files`] before publishing a manifest
//! (syncing each shard as it closes, on the writer thread, would stall the
//! pipeline on the disk's flush rate, ~0.3 GB/s here, for a guarantee the
//! manifest gives anyway; a closed shard's flush is only started, on a
//! thread of its own, so that the final sync has less left to wait for).
//!
//! Bytes go to the file around the page cache where the filesystem allows
//! it ([`DirectFile`]), and the image column is spliced in from the rows'
//! own buffers ([`ImageChunk`]): a raw image crosses the writer thread in
//! one copy.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray, UInt32Array};
use arrow_schema::Schema;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding as PqEncoding};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::checksum::Checksum;
use super::chunk::ImageChunk;
use super::direct::DirectFile;
use super::schema::{
    arrow_schema, encode_image_lengths, shard_file_name, Encoding, ShardMeta, COL_KEY, COL_LABEL,
    IMAGE_LENGTHS_KEY,
};

/// Errors of the shard layer; each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: parquet: {cause}")]
    Parquet {
        path: PathBuf,
        cause: parquet::errors::ParquetError,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl ShardError {
    pub fn io(path: &Path, source: std::io::Error) -> ShardError {
        ShardError::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
    fn parquet(path: &Path, source: parquet::errors::ParquetError) -> ShardError {
        ShardError::Parquet {
            path: path.to_path_buf(),
            cause: source,
        }
    }
}

/// Write `bytes` to `path` atomically: temp file in the same folder, sync,
/// rename, sync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ShardError> {
    write_replace(path, bytes, true)
}

/// Like [`write_atomic`] but without syncing: atomic against a killed
/// process, not against power loss. For small progress records.
pub fn write_replace(path: &Path, bytes: &[u8], durable: bool) -> Result<(), ShardError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            sync_dir(path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| ShardError::io(path, e))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// The file name a [`write_replace`] temporary (`.NAME.PID.tmp`) was
/// written for, or None when `name` is not one.
pub fn replace_temp_target(name: &str) -> Option<&str> {
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (target, pid) = inner.rsplit_once('.')?;
    (!target.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then_some(target)
}

/// Remove the [`write_replace`] temporaries of the files `targets` from
/// `dir`: what a process killed mid-write leaves behind (named after its
/// pid, so no later write reuses them). Only for a caller that holds the
/// folder's lock, so that no other process can be writing them; the
/// names are limited to `targets` so that another program's files of a
/// similar pattern are never touched.
pub fn remove_replace_temps(dir: &Path, targets: &[&str]) -> Result<(), ShardError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ShardError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ShardError::io(dir, e))?;
        let name = entry.file_name();
        let Some(target) = name.to_str().and_then(replace_temp_target) else {
            continue;
        };
        if !targets.contains(&target) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ShardError::io(&path, e)),
        }
    }
    Ok(())
}

/// Flushes of finished shards still running, by final path. Their outcome
/// must reach [`sync_files`]: once a failed flush has reported its error,
/// Linux does not report it again to a later `fsync` on a new descriptor.
type Flush = (PathBuf, std::thread::JoinHandle<std::io::Result<()>>);

fn pending_flushes() -> std::sync::MutexGuard<'static, Vec<Flush>> {
    static PENDING: std::sync::Mutex<Vec<Flush>> = std::sync::Mutex::new(Vec::new());
    // Only pushes and drains happen under the lock: a poisoned list is whole.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Flush `paths` (and their folders) to stable storage, after the flushes
/// their shards started when they closed have ended, whose errors it reports.
pub fn sync_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<(), ShardError> {
    let paths: Vec<&Path> = paths.into_iter().collect();
    let started: Vec<Flush> = {
        let mut pending = pending_flushes();
        let (mine, others) = pending
            .drain(..)
            .partition(|(p, _)| paths.contains(&p.as_path()));
        *pending = others;
        mine
    };
    for (path, flush) in started {
        flush
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("flush thread panicked")))
            .map_err(|e| ShardError::io(&path, e))?;
    }
    let mut dirs = std::collections::BTreeSet::new();
    for path in paths {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| ShardError::io(path, e))?;
        dirs.insert(path.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| ShardError::io(&dir, e))?;
    }
    Ok(())
}

/// Ask the kernel to start writing `file` back now, without waiting, so that
/// the one [`sync_files`] before the manifest finds little left to flush.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules I/O.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = crate::file_kind::folder_of(path);
    File::open(dir)?.sync_all()
}

/// A `Write` that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Checksum,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a finished shard looks like on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenShard {
    pub path: PathBuf,
    pub file: String,
    pub rows: u64,
    pub row_groups: u64,
    pub bytes: u64,
    /// XXH3-128 of the file (see `checksum`).
    pub xxh3_128: String,
}

/// Buffers rows of one row group, then hands them to Parquet.
///
/// The label and key columns go through the parquet crate's Arrow column
/// writers; the image column is spliced in as one page built from the rows'
/// own buffers (`ImageChunk`), so an image is copied once on its way to
/// the file (into `DirectFile`'s block buffer), not four times.
pub struct ShardWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file_name: String,
    writer: Option<SerializedFileWriter<HashingWriter<DirectFile>>>,
    columns: ArrowRowGroupWriterFactory,
    schema: Arc<Schema>,
    encoding: Encoding,
    image_len: usize,
    row_group_rows: usize,
    labels: Vec<u32>,
    images: Vec<Vec<u8>>,
    image_bytes: u64,
    keys: Vec<String>,
    /// The image buffers of the last row group written, for reuse.
    spent: Vec<Vec<u8>>,
    /// Every JPEG's length in row order, for the footer (empty for raw).
    image_lengths: Vec<u32>,
    /// Whether the footer gets the lengths (off only to make, in tests, a
    /// shard like those written before the key existed).
    pub(crate) list_image_lengths: bool,
    rows: u64,
    row_groups: u64,
}

/// Writer settings for the label and key columns (the image column's one
/// page is uncompressed and PLAIN by construction).
fn properties(meta: &ShardMeta) -> WriterProperties {
    let kv = meta
        .to_key_values()
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        // Label min/max per row group lets a reader skip by class cheaply.
        .set_column_statistics_enabled(ColumnPath::from(COL_LABEL), EnabledStatistics::Chunk)
        .set_column_encoding(ColumnPath::from(COL_KEY), PqEncoding::PLAIN)
        .set_key_value_metadata(Some(kv))
        .build()
}

impl ShardWriter {
    /// Start `{split}-{index:05}.parquet` in `dir` under a temporary name.
    pub fn create(
        dir: &Path,
        index: usize,
        meta: &ShardMeta,
        row_group_rows: usize,
    ) -> Result<ShardWriter, ShardError> {
        let file_name = shard_file_name(meta.split, index);
        let final_path = dir.join(&file_name);
        let tmp_path = temp_path(&final_path);
        let file = DirectFile::create(&tmp_path).map_err(|e| ShardError::io(&tmp_path, e))?;
        let sink = HashingWriter {
            inner: file,
            hasher: Checksum::new(),
            written: 0,
        };
        let schema = arrow_schema(meta.encoding, meta.height, meta.width);
        let row_group_rows = row_group_rows.max(1);
        // Through ArrowWriter so the footer carries the Arrow schema as
        // every Arrow-based reader expects; rows are then written below it.
        let (writer, columns) = ArrowWriter::try_new(sink, schema.clone(), Some(properties(meta)))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(|e| ShardError::parquet(&tmp_path, e))?;
        Ok(ShardWriter {
            final_path,
            tmp_path,
            file_name,
            writer: Some(writer),
            columns,
            schema,
            encoding: meta.encoding,
            image_len: (meta.height * meta.width * 3) as usize,
            row_group_rows,
            labels: Vec::with_capacity(row_group_rows),
            images: Vec::with_capacity(row_group_rows),
            image_bytes: 0,
            keys: Vec::with_capacity(row_group_rows),
            spent: Vec::new(),
            image_lengths: Vec::new(),
            list_image_lengths: true,
            rows: 0,
            row_groups: 0,
        })
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Append one row. A raw image must be exactly H*W*3 bytes. An owned
    /// buffer is kept as it is until its row group is written.
    pub fn push(
        &mut self,
        label: u32,
        image: impl Into<Vec<u8>>,
        key: &str,
    ) -> Result<(), ShardError> {
        let image = image.into();
        if self.encoding == Encoding::Raw && image.len() != self.image_len {
            return Err(ShardError::Invalid {
                path: self.tmp_path.clone(),
                detail: format!(
                    "raw image for '{key}' has {} bytes, expected {}",
                    image.len(),
                    self.image_len
                ),
            });
        }
        // A Parquet page holds at most i32::MAX bytes (values, plus a
        // 4-byte length each for variable-length ones).
        self.image_bytes += image.len() as u64 + 4;
        if self.image_bytes > i32::MAX as u64 - 64 {
            return Err(ShardError::Invalid {
                path: self.tmp_path.clone(),
                detail: "row group exceeds 2 GiB; lower --row-group-rows".into(),
            });
        }
        self.images.push(image);
        self.labels.push(label);
        self.keys.push(key.to_string());
        self.rows += 1;
        if self.labels.len() >= self.row_group_rows {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), ShardError> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let pq = |e| ShardError::parquet(&self.tmp_path, e);
        let labels: ArrayRef = Arc::new(UInt32Array::from(std::mem::take(&mut self.labels)));
        let keys: ArrayRef = Arc::new(StringArray::from(std::mem::take(&mut self.keys)));
        let images = std::mem::replace(&mut self.images, Vec::with_capacity(self.row_group_rows));
        self.image_bytes = 0;
        let rows = images.len();
        if self.encoding == Encoding::Jpeg {
            // Each fits: the row group is checked against 2 GiB above.
            self.image_lengths
                .extend(images.iter().map(|i| i.len() as u32));
        }
        let chunk = ImageChunk::new(images, self.encoding == Encoding::Jpeg)
            .ok_or_else(|| self.invalid("row group exceeds 2 GiB; lower --row-group-rows"))?;
        // One Arrow column writer per field, in schema order; the image
        // one is unused (its chunk is built above).
        let writers = self
            .columns
            .create_column_writers(self.row_groups as usize)
            .map_err(pq)?;
        let [label_writer, _, key_writer]: [ArrowColumnWriter; 3] = writers
            .try_into()
            .map_err(|w: Vec<_>| self.invalid(format!("{} column writers, expected 3", w.len())))?;
        let fields = self.schema.fields();
        let encode = |mut w: ArrowColumnWriter, col: usize, array: ArrayRef| {
            for leaf in compute_leaves(&fields[col], &array)? {
                w.write(&leaf)?;
            }
            w.close()
        };
        let label_chunk = encode(label_writer, 0, labels).map_err(pq)?;
        let key_chunk = encode(key_writer, 2, keys).map_err(pq)?;
        let writer = self.writer.as_mut().ok_or_else(|| ShardError::Invalid {
            path: self.tmp_path.clone(),
            detail: "writer already finished".into(),
        })?;
        let image_column = writer.schema_descr().column(1);
        let close = chunk.close_result(image_column).map_err(pq)?;
        let mut rg = writer.next_row_group().map_err(pq)?;
        label_chunk.append_to_row_group(&mut rg).map_err(pq)?;
        rg.append_column(&chunk, close).map_err(pq)?;
        key_chunk.append_to_row_group(&mut rg).map_err(pq)?;
        let meta = rg.close().map_err(pq)?;
        if meta.num_rows() != rows as i64 {
            return Err(self.invalid(format!(
                "row group {} holds {} rows, expected {rows}",
                self.row_groups,
                meta.num_rows()
            )));
        }
        if let Some(images) = chunk.into_images() {
            self.spent = images;
        }
        self.row_groups += 1;
        Ok(())
    }

    /// The image buffers of row groups written since the last call (their
    /// contents are stale): the caller may decode the next images into them.
    pub fn take_spent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.spent)
    }

    fn invalid(&self, e: impl std::fmt::Display) -> ShardError {
        ShardError::Invalid {
            path: self.tmp_path.clone(),
            detail: e.to_string(),
        }
    }

    /// Write the footer and move the file to its final name.
    pub fn finish(mut self) -> Result<WrittenShard, ShardError> {
        self.flush_row_group()?;
        let mut writer = self
            .writer
            .take()
            .ok_or_else(|| self.invalid("writer already finished"))?;
        if self.encoding == Encoding::Jpeg && self.list_image_lengths {
            writer.append_key_value_metadata(KeyValue::new(
                IMAGE_LENGTHS_KEY.to_string(),
                encode_image_lengths(&self.image_lengths),
            ));
        }
        let mut sink = writer
            .into_inner()
            .map_err(|e| ShardError::parquet(&self.tmp_path, e))?;
        sink.flush()
            .map_err(|e| ShardError::io(&self.tmp_path, e))?;
        let bytes = sink.written;
        let xxh3_128 = sink.hasher.hex();
        let done = sink
            .inner
            .finish()
            .map_err(|e| ShardError::io(&self.tmp_path, e))?;
        // No fsync on this thread (see the module header): the rename is
        // atomic for a killed process, and `sync_files` makes the set
        // durable once. Written through the page cache, the file is mostly
        // dirty pages: start their writeback. Written direct, its data has
        // reached the device but may sit in the device's cache, and its
        // block allocation in the journal: flush both now, so that the
        // final sync finds only the last shard's left (on a virtio disk
        // that flush took ~0.3 s for 300 MB, ~8 % of a 2,000-image pack).
        // Either call can block (a full device queue, the flush itself),
        // hence a thread of its own; `sync_files` of this path joins the
        // flush and reports its error.
        let file = done.file;
        if done.direct {
            let flush = std::thread::spawn(move || file.sync_data());
            pending_flushes().push((self.final_path.clone(), flush));
        } else {
            std::thread::spawn(move || start_writeback(&file));
        }
        // Nor a folder fsync: on ext4 that commits the journal, which waits
        // for this file's data anyway.
        std::fs::rename(&self.tmp_path, &self.final_path)
            .map_err(|e| ShardError::io(&self.final_path, e))?;
        Ok(WrittenShard {
            path: self.final_path.clone(),
            file: self.file_name.clone(),
            rows: self.rows,
            row_groups: self.row_groups,
            bytes,
            xxh3_128,
        })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flush a shard started when it closed is waited for by the sync
    /// of its path, and its error is that sync's (the kernel reports a
    /// failed flush once); flushes of other paths are left alone.
    #[test]
    fn sync_files_reports_the_flushes_its_shards_started() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let failed = || std::thread::spawn(|| Err(std::io::Error::other("flush failed: EIO")));
        pending_flushes().push((a.clone(), failed()));
        pending_flushes().push((b.clone(), failed()));
        let e = sync_files([a.as_path()]).unwrap_err().to_string();
        assert!(e.contains("a.parquet") && e.contains("EIO"), "{e}");
        // Reported once, as the kernel would; b's is still waiting.
        sync_files([a.as_path()]).unwrap();
        let e = sync_files([b.as_path()]).unwrap_err().to_string();
        assert!(e.contains("b.parquet"), "{e}");
        sync_files([a.as_path(), b.as_path()]).unwrap();
    }

    /// Only `.NAME.PID.tmp` files of the names asked for are removed.
    #[test]
    fn stale_replace_temps_of_the_named_files_are_removed() {
        assert_eq!(
            replace_temp_target(".summary.json.123.tmp"),
            Some("summary.json")
        );
        assert_eq!(replace_temp_target(".latest.9.tmp"), Some("latest"));
        for not in [
            ".epoch-0001.tmp",
            "summary.json.1.tmp",
            ".x.12a.tmp",
            "..1.tmp",
            ".lock",
        ] {
            assert_eq!(replace_temp_target(not), None, "{not}");
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [".summary.json.4.tmp", ".other.json.4.tmp", "summary.json"] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        std::fs::create_dir(d.join(".summary.json.5.tmp")).unwrap();
        write_replace(&d.join("summary.json"), b"y", false).unwrap();
        remove_replace_temps(d, &["summary.json"]).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".other.json.4.tmp", ".summary.json.5.tmp", "summary.json"]
        );
        assert_eq!(std::fs::read(d.join("summary.json")).unwrap(), b"y");
        remove_replace_temps(&d.join("absent"), &["x"]).unwrap();
    }
}
