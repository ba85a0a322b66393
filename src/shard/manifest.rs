//! `manifest.json`: what a pack run produced, from what, and what it refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::schema::{Encoding, Split};
use super::writer::{write_atomic, ShardError};

pub const MANIFEST_FILE: &str = "manifest.json";

/// The source archive or folder a pack run read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub name: String,
    /// Total bytes (the archive's size, or the sum of a folder's files).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub modified: u64,
}

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub file: String,
    pub split: Split,
    pub rows: u64,
    pub row_groups: u64,
    pub bytes: u64,
    /// XXH3-128 of the whole file, 32 hex digits (check with
    /// `ebv-stats --verify` or `xxhsum -H2`).
    pub xxh3_128: String,
}

/// An entry of the source that is not in any shard, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEntry {
    pub key: String,
    pub split: Option<Split>,
    pub reason: String,
}

/// Group a rejection reason by its kind ("corrupt jpeg", "empty file", …)
/// so that details such as line numbers do not make every reason unique.
/// `ebv-pack`'s summary and `ebv-stats` count by this.
pub fn reason_kind(reason: &str) -> String {
    if reason.starts_with("listed in ") {
        return "listed but not found in the source".into();
    }
    let cut = reason.find([':', '(']).unwrap_or(reason.len());
    reason[..cut].trim().to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitTotals {
    pub shards: u64,
    pub rows: u64,
    pub bytes: u64,
    pub rejected: u64,
    /// Rows stored as the source's own JPEG bytes (the rest were converted);
    /// 0 in manifests written before it was recorded.
    #[serde(default)]
    pub passthrough: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub encoding: Encoding,
    pub height: u32,
    pub width: u32,
    pub num_classes: u32,
    /// The resolved options of the run, as the packer saw them.
    pub options: serde_json::Value,
    pub source: SourceInfo,
    /// The plan fingerprint written into every shard's footer.
    pub plan: String,
    pub shards: Vec<ShardRecord>,
    pub totals: BTreeMap<Split, SplitTotals>,
    pub rejected: Vec<RejectedEntry>,
}

impl Manifest {
    /// Reads a manifest. Its shard names must be plain `.parquet` file
    /// names, each listed once: a path (`x/../../other/val-00000.parquet`)
    /// would have readers open files outside the folder, and a shard listed
    /// twice would be read and counted twice.
    pub fn load(path: &Path) -> Result<Manifest, ShardError> {
        let bytes = std::fs::read(path).map_err(|e| ShardError::io(path, e))?;
        let invalid = |detail: String| ShardError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for r in &manifest.shards {
            let plain = !r.file.contains(['/', '\\', '\0'])
                && !r.file.starts_with('.')
                && r.file.ends_with(".parquet");
            if !plain {
                return Err(invalid(format!(
                    "shard {:?} is not the name of a .parquet file in this folder",
                    r.file
                )));
            }
            if !seen.insert(r.file.as_str()) {
                return Err(invalid(format!("shard {:?} is listed twice", r.file)));
            }
        }
        Ok(manifest)
    }

    pub fn save(&self, path: &Path) -> Result<(), ShardError> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| ShardError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomic(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_group_by_kind() {
        assert_eq!(reason_kind("corrupt jpeg: bad huffman"), "corrupt jpeg");
        assert_eq!(reason_kind("empty file"), "empty file");
        assert_eq!(
            reason_kind("listed in train.csv line 3 but not found in the source"),
            "listed but not found in the source"
        );
        assert_eq!(
            reason_kind("not part of the layout (IDX source)"),
            "not part of the layout"
        );
        assert_eq!(
            reason_kind("unsupported image format (tiff)"),
            "unsupported image format"
        );
    }
}
