//! Shard format v1: one output folder holds `manifest.json`, `classes.tsv`
//! and Parquet shards named `{split}-{NNNNN}.parquet`.
//!
//! Columns: `label` (uint32, dense 0..C in `classes.tsv` order), `image`
//! (`binary` JPEG, or `fixed_size_binary(H*W*3)` raw RGB8), `key` (utf8, the
//! entry's path in the source). The image column is uncompressed, PLAIN,
//! without dictionary or statistics, so a reader can slice every image out
//! of a memory-mapped file without copying. Footer key-value metadata
//! carries the format version, encoding, H, W, split and class count.
//!
//! Invariant: a file with a final shard name is complete. Shards are written
//! under a temporary name, then renamed; they are synced to disk before the
//! manifest that lists them is written.
//!
//! This module knows nothing of training or of how shards are produced.

mod checksum;
mod chunk;
mod classes;
mod direct;
mod manifest;
mod page;
mod reader;
mod schema;
mod verify;
mod writer;

pub use checksum::{file_checksum, Checksum, CHECKSUM_NAME};
pub use classes::{read_classes_tsv, write_classes_tsv};
pub use manifest::{
    reason_kind, Manifest, RejectedEntry, ShardRecord, SourceInfo, SplitTotals, MANIFEST_FILE,
};
pub use reader::{Access, ReadError, Row, RowGroup, Shard, ShardSet};
pub use schema::{
    arrow_schema, decode_image_lengths, encode_image_lengths, shard_file_name, Encoding, ShardMeta,
    Split, CLASSES_FILE, COL_IMAGE, COL_KEY, COL_LABEL, FORMAT_VERSION, IMAGE_LENGTHS_KEY,
};
pub use verify::{verify_dir, Problem, VerifyReport};
pub use writer::{
    remove_replace_temps, replace_temp_target, sync_files, write_atomic, write_replace, ShardError,
    ShardWriter, WrittenShard,
};
