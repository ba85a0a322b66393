//! The default figures of `ebv-stats`: from the manifest, the Parquet
//! footers and the label column only, so they take a fraction of a second
//! even for 1.8M rows (no image byte is read).

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::shard::{Access, Encoding, ReadError, RejectedEntry, ShardSet, SourceInfo, Split};

/// Lists of class names in the report stop after this many names (the
/// count is always complete); 100k-class sets would otherwise print
/// megabytes.
pub const NAME_LIMIT: usize = 50;

/// The class-size histogram has at most this many bins.
pub const HISTOGRAM_BINS: u64 = 40;

/// Everything the default `ebv-stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub format_version: u32,
    pub encoding: Encoding,
    pub height: u32,
    pub width: u32,
    pub num_classes: u32,
    pub source: SourceInfo,
    /// What the packer decided on its own about the layout (a header row
    /// skipped, a validation folder chosen): `options.layout_notes`.
    pub layout_notes: Vec<String>,
    /// The `--min-images` threshold behind `below_min_images`.
    pub min_images: u64,
    /// Always both `train` and `val` (zeros for a split with no shards).
    pub splits: BTreeMap<Split, SplitSummary>,
    pub classes: ClassOverlap,
    pub rejected: RejectedSummary,
    pub shards: Vec<ShardSummary>,
    /// Images per class, per split, in label order (for the plot; not in
    /// the JSON document, where 100k classes would dominate it).
    #[serde(skip)]
    pub class_counts: BTreeMap<Split, Vec<u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SplitSummary {
    pub shards: u64,
    pub rows: u64,
    pub row_groups: u64,
    pub rows_per_row_group: MinMax,
    /// Bytes on disk (whole files).
    pub bytes: u64,
    /// Bytes of the image column (page headers included).
    pub image_bytes: u64,
    pub image_bytes_per_row: f64,
    /// Classes with at least one image in this split.
    pub classes: u64,
    /// Classes of `classes.tsv` with no image in this split.
    pub classes_missing: u64,
    /// Over the classes present in the split.
    pub images_per_class: PerClass,
    /// Classes present with fewer than `min_images` images.
    pub below_min_images: Names,
    /// Number of classes by images per class (classes present only).
    pub class_size_histogram: Vec<Bin>,
    /// Rejected source entries attributed to this split.
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinMax {
    pub min: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerClass {
    pub min: u64,
    /// The middle value; the mean of the two middle values for an even
    /// number of classes (as numpy's median).
    pub median: f64,
    pub mean: f64,
    pub max: u64,
}

/// A count with the first [`NAME_LIMIT`] names (in label order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Names {
    pub count: u64,
    pub names: Vec<String>,
    pub truncated: bool,
}

impl Names {
    fn from_iter<'a>(names: impl Iterator<Item = &'a String>) -> Names {
        let mut out = Names::default();
        for n in names {
            out.count += 1;
            if out.names.len() < NAME_LIMIT {
                out.names.push(n.clone());
            } else {
                out.truncated = true;
            }
        }
        out
    }
}

/// `classes` classes have between `from` and `to` images (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bin {
    pub from: u64,
    pub to: u64,
    pub classes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClassOverlap {
    /// Classes with images in train and none in val.
    pub only_in_train: Names,
    /// Classes with images in val and none in train.
    pub only_in_val: Names,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RejectedSummary {
    pub total: u64,
    pub train: u64,
    pub val: u64,
    /// Entries that belong to no split (stray files, unsafe paths, …).
    pub no_split: u64,
    /// Grouped as `ebv-pack` groups them (text before ':' or '(').
    pub by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardSummary {
    pub file: String,
    pub split: Split,
    pub rows: u64,
    pub row_groups: u64,
    pub bytes: u64,
    pub image_bytes: u64,
    pub label_min: u32,
    pub label_max: u32,
    pub distinct_labels: u64,
}

pub use crate::shard::reason_kind;

/// Median of sorted values (mean of the two middle ones for even counts).
pub fn median(sorted: &[u64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0,
    }
}

/// Histogram of class sizes (only sizes >= 1): one bin per size when the
/// range is small, else [`HISTOGRAM_BINS`] bins of equal width.
pub fn class_size_histogram(counts: &[u64]) -> Vec<Bin> {
    let present: Vec<u64> = counts.iter().copied().filter(|&c| c > 0).collect();
    let (Some(&min), Some(&max)) = (present.iter().min(), present.iter().max()) else {
        return Vec::new();
    };
    let width = (max - min + 1).div_ceil(HISTOGRAM_BINS);
    let bins = (max - min) / width + 1;
    let mut out: Vec<Bin> = (0..bins)
        .map(|b| Bin {
            from: min + b * width,
            to: (min + (b + 1) * width - 1).min(max),
            classes: 0,
        })
        .collect();
    for c in present {
        out[((c - min) / width) as usize].classes += 1;
    }
    out
}

fn rejected_summary(rejected: &[RejectedEntry]) -> RejectedSummary {
    let mut r = RejectedSummary {
        total: rejected.len() as u64,
        ..Default::default()
    };
    for e in rejected {
        match e.split {
            Some(Split::Train) => r.train += 1,
            Some(Split::Val) => r.val += 1,
            None => r.no_split += 1,
        }
        *r.by_reason.entry(reason_kind(&e.reason)).or_insert(0) += 1;
    }
    r
}

/// Compute the default figures. Reads the label pages of every shard (in
/// parallel) and nothing else of the files.
pub fn summarize(set: &ShardSet, min_images: u64) -> Result<Summary, ReadError> {
    // One small label page per row group: with the OS's read-around, each
    // would pull in up to `read_ahead_kb` of images (measured: half the
    // shards' bytes at 16 MiB row groups and an 8 MiB window).
    for split in Split::ALL {
        set.advise(split, Access::Random);
    }
    let manifest = set.manifest();
    let num_classes = manifest.num_classes as usize;
    let labels: Vec<Vec<u32>> = set
        .shards()
        .par_iter()
        .map(|s| s.labels())
        .collect::<Result<_, _>>()?;

    let mut counts: BTreeMap<Split, Vec<u64>> = Split::ALL
        .iter()
        .map(|&s| (s, vec![0u64; num_classes]))
        .collect();
    let mut splits: BTreeMap<Split, SplitSummary> = Split::ALL
        .iter()
        .map(|&s| (s, SplitSummary::default()))
        .collect();
    let mut rg_rows: BTreeMap<Split, Vec<u64>> = BTreeMap::new();
    let mut shards = Vec::with_capacity(set.shards().len());
    for (shard, labels) in set.shards().iter().zip(&labels) {
        let split = shard.meta().split;
        let c = counts.entry(split).or_default();
        let mut distinct = 0u64;
        let mut seen = vec![false; num_classes];
        for &l in labels {
            let slot = c.get_mut(l as usize).ok_or_else(|| ReadError::Mismatch {
                path: shard.path().to_path_buf(),
                detail: format!("label {l}, but there are {num_classes} classes"),
            })?;
            *slot += 1;
            if !seen[l as usize] {
                seen[l as usize] = true;
                distinct += 1;
            }
        }
        let s = splits.entry(split).or_default();
        s.shards += 1;
        s.rows += shard.num_rows();
        s.row_groups += shard.num_row_groups() as u64;
        s.bytes += shard.mapped().len() as u64;
        s.image_bytes += shard.image_bytes();
        rg_rows
            .entry(split)
            .or_default()
            .extend((0..shard.num_row_groups()).map(|rg| shard.row_group_len(rg)));
        shards.push(ShardSummary {
            file: shard.file_name(),
            split,
            rows: shard.num_rows(),
            row_groups: shard.num_row_groups() as u64,
            bytes: shard.mapped().len() as u64,
            image_bytes: shard.image_bytes(),
            label_min: labels.iter().copied().min().unwrap_or(0),
            label_max: labels.iter().copied().max().unwrap_or(0),
            distinct_labels: distinct,
        });
    }

    let classes = set.classes();
    for (split, s) in splits.iter_mut() {
        let c = &counts[split];
        let mut present: Vec<u64> = c.iter().copied().filter(|&n| n > 0).collect();
        present.sort_unstable();
        s.classes = present.len() as u64;
        s.classes_missing = (num_classes - present.len()) as u64;
        if let (Some(&min), Some(&max)) = (present.first(), present.last()) {
            s.images_per_class = PerClass {
                min,
                median: median(&present),
                mean: present.iter().sum::<u64>() as f64 / present.len() as f64,
                max,
            };
        }
        s.below_min_images = Names::from_iter(
            classes
                .iter()
                .zip(c)
                .filter(|(_, &n)| n > 0 && n < min_images)
                .map(|(name, _)| name),
        );
        s.class_size_histogram = class_size_histogram(c);
        if let Some(r) = rg_rows.get(split) {
            s.rows_per_row_group = MinMax {
                min: r.iter().copied().min().unwrap_or(0),
                max: r.iter().copied().max().unwrap_or(0),
            };
        }
        s.image_bytes_per_row = if s.rows > 0 {
            s.image_bytes as f64 / s.rows as f64
        } else {
            0.0
        };
        s.rejected = manifest
            .rejected
            .iter()
            .filter(|r| r.split == Some(*split))
            .count() as u64;
    }
    let (train, val) = (&counts[&Split::Train], &counts[&Split::Val]);
    let overlap = ClassOverlap {
        only_in_train: Names::from_iter(
            classes
                .iter()
                .enumerate()
                .filter(|&(i, _)| train[i] > 0 && val[i] == 0)
                .map(|(_, n)| n),
        ),
        only_in_val: Names::from_iter(
            classes
                .iter()
                .enumerate()
                .filter(|&(i, _)| val[i] > 0 && train[i] == 0)
                .map(|(_, n)| n),
        ),
    };

    Ok(Summary {
        format_version: manifest.format_version,
        encoding: manifest.encoding,
        height: manifest.height,
        width: manifest.width,
        num_classes: manifest.num_classes,
        source: manifest.source.clone(),
        layout_notes: manifest.options["layout_notes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        min_images,
        splits,
        classes: overlap,
        rejected: rejected_summary(&manifest.rejected),
        shards,
        class_counts: counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_like_numpy() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3]), 3.0);
        assert_eq!(median(&[1, 2, 10]), 2.0);
        assert_eq!(median(&[1, 2, 4, 10]), 3.0);
    }

    #[test]
    fn histogram_bins_cover_every_present_class_once() {
        let h = class_size_histogram(&[0, 3, 3, 5, 0, 4]);
        assert_eq!(
            h,
            vec![
                Bin {
                    from: 3,
                    to: 3,
                    classes: 2
                },
                Bin {
                    from: 4,
                    to: 4,
                    classes: 1
                },
                Bin {
                    from: 5,
                    to: 5,
                    classes: 1
                }
            ]
        );
        let counts: Vec<u64> = (1..=1000).collect();
        let h = class_size_histogram(&counts);
        assert!(h.len() as u64 <= HISTOGRAM_BINS);
        assert_eq!(h.iter().map(|b| b.classes).sum::<u64>(), 1000);
        assert_eq!((h[0].from, h.last().unwrap().to), (1, 1000));
        for w in h.windows(2) {
            assert_eq!(w[0].to + 1, w[1].from);
        }
        assert!(class_size_histogram(&[0, 0]).is_empty());
    }

    #[test]
    fn reasons_group_like_ebv_pack() {
        assert_eq!(reason_kind("corrupt jpeg: bad marker"), "corrupt jpeg");
        assert_eq!(
            reason_kind("unsupported image format (tiff)"),
            "unsupported image format"
        );
        assert_eq!(
            reason_kind("listed in train.csv line 11 but not found in the source"),
            "listed but not found in the source"
        );
    }
}
