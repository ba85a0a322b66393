//! Full integrity check of an output folder: every byte hashed, every page
//! header parsed, every count compared with `manifest.json`.
//!
//! Unlike [`super::ShardSet::open`], which stops at the first problem, this
//! checks each shard on its own and collects every problem, so one run
//! lists everything that is wrong. Only an unreadable `manifest.json` stops
//! it (there is then nothing to check against).

use std::collections::BTreeSet;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use super::checksum::{file_checksum, CHECKSUM_NAME};
use super::classes::read_classes_tsv;
use super::manifest::{Manifest, ShardRecord, MANIFEST_FILE};
use super::reader::{ReadError, Shard};
use super::schema::{Split, CLASSES_FILE};

/// One thing found wrong, and the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub problem: String,
}

/// The outcome of [`verify_dir`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub shards_checked: u64,
    pub bytes_hashed: u64,
    pub problems: Vec<Problem>,
}

/// Check `dir` against its manifest: each listed shard's size, footer,
/// schema, row and row-group counts, checksum (XXH3-128), page structure and label
/// range; the per-split totals; `classes.tsv`; and shard files on disk that
/// the manifest does not list. `progress` receives bytes hashed (it is
/// called from several threads). Returns `Err` only when `manifest.json`
/// itself cannot be read.
pub fn verify_dir(dir: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport, ReadError> {
    let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
    let mut problems = Vec::new();
    let mut add = |file: &str, problem: String| {
        problems.push(Problem {
            file: file.to_string(),
            problem,
        })
    };

    match read_classes_tsv(&dir.join(CLASSES_FILE)) {
        Ok(c) if c.len() != manifest.num_classes as usize => add(
            CLASSES_FILE,
            format!(
                "{} classes, manifest.json says {}",
                c.len(),
                manifest.num_classes
            ),
        ),
        Ok(_) => {}
        Err(e) => add(CLASSES_FILE, e.to_string()),
    }

    for split in Split::ALL {
        let listed: Vec<&ShardRecord> = manifest
            .shards
            .iter()
            .filter(|r| r.split == split)
            .collect();
        let Some(t) = manifest.totals.get(&split) else {
            if !listed.is_empty() {
                add(
                    MANIFEST_FILE,
                    format!("no totals for split {split}, which has shards"),
                );
            }
            continue;
        };
        let sums = [
            ("shards", listed.len() as u64, t.shards),
            ("rows", listed.iter().map(|r| r.rows).sum(), t.rows),
            ("bytes", listed.iter().map(|r| r.bytes).sum(), t.bytes),
            (
                "rejected",
                manifest
                    .rejected
                    .iter()
                    .filter(|r| r.split == Some(split))
                    .count() as u64,
                t.rejected,
            ),
        ];
        for (what, sum, total) in sums {
            if sum != total {
                add(
                    MANIFEST_FILE,
                    format!("{split} {what}: shards sum to {sum}, totals say {total}"),
                );
            }
        }
    }

    // Shard files on disk that the manifest does not list.
    let listed: BTreeSet<&str> = manifest.shards.iter().map(|r| r.file.as_str()).collect();
    let rd = std::fs::read_dir(dir).map_err(|e| ReadError::Io {
        path: dir.to_path_buf(),
        cause: e,
    })?;
    let mut strays = BTreeSet::new();
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shard_like =
            (name.starts_with("train-") || name.starts_with("val-")) && name.ends_with(".parquet");
        if shard_like && !listed.contains(name.as_str()) {
            strays.insert(name);
        }
    }
    for name in strays {
        add(&name, "shard file not listed in manifest.json".into());
    }

    let results: Vec<(String, u64, Vec<String>)> = manifest
        .shards
        .par_iter()
        .map(|r| {
            let (hashed, found) = check_shard(dir, r, &manifest, progress);
            (r.file.clone(), hashed, found)
        })
        .collect();
    let mut bytes_hashed = 0;
    for (file, hashed, found) in results {
        bytes_hashed += hashed;
        for problem in found {
            add(&file, problem);
        }
    }
    Ok(VerifyReport {
        ok: problems.is_empty(),
        shards_checked: manifest.shards.len() as u64,
        bytes_hashed,
        problems,
    })
}

/// Every problem of one listed shard; returns the bytes hashed too.
fn check_shard(
    dir: &Path,
    record: &ShardRecord,
    manifest: &Manifest,
    progress: &(dyn Fn(u64) + Sync),
) -> (u64, Vec<String>) {
    let mut found = Vec::new();
    // The checksum comes first and needs only the bytes, so it is reported
    // even when the file is too damaged to parse.
    let path = dir.join(&record.file);
    let mut hashed = 0;
    match hash_file(&path, progress) {
        Ok((len, sum)) => {
            hashed = len;
            if sum != record.xxh3_128 {
                found.push(format!(
                    "{CHECKSUM_NAME} {sum} does not match manifest.json ({})",
                    record.xxh3_128
                ));
            }
        }
        Err(e) => found.push(strip_path(&e.to_string(), &path)),
    }
    if !path.exists() {
        return (hashed, found);
    }
    match Shard::open_listed(dir, record, manifest) {
        Ok(shard) => {
            if let Err(e) = shard.check_pages() {
                found.push(strip_path(&e.to_string(), &path));
            } else if let Ok(labels) = shard.labels() {
                if let Some((row, label)) = labels
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| l >= manifest.num_classes)
                {
                    found.push(format!(
                        "row {row} has label {label}, but there are {} classes",
                        manifest.num_classes
                    ));
                }
            }
        }
        Err(e) => found.push(strip_path(&e.to_string(), &path)),
    }
    (hashed, found)
}

/// Errors carry the full path; in a report grouped by file the file name
/// is already there.
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

/// Length and checksum of a file; a missing file is [`ReadError::Missing`].
fn hash_file(path: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<(u64, String), ReadError> {
    file_checksum(path, progress).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
        },
        _ => ReadError::Io {
            path: path.to_path_buf(),
            cause: e,
        },
    })
}
