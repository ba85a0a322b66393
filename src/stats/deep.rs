//! `ebv-stats --deep`: decode every image (in parallel, one task per row
//! group) for the per-channel mean and standard deviation, exact
//! duplicates and decode failures; asked to, it also walks each JPEG's
//! coded data as libjpeg reads it, for the damage the decoder turns into
//! pixels without a word ([`crate::image::check_coded_data`]).
//!
//! Invariants: the figures do not depend on the thread count or the order
//! in which row groups finish — pixel sums are exact integers (u64 per
//! image, u128 in total) and only turned into floating point at the end;
//! duplicate groups are found by sorting the content hashes.

use std::collections::BTreeMap;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::image::{check_coded_data, decode_rgb8, DecodeLimits, JpegHeader};
use crate::shard::{Encoding, ReadError, ShardSet, Split};

/// At most this many decode failures are listed (all are counted).
pub const FAILURE_LIMIT: usize = 100;
/// At most this many duplicate groups are listed, each with at most
/// [`EXAMPLE_ROWS`] rows (all are counted).
pub const EXAMPLE_LIMIT: usize = 20;
pub const EXAMPLE_ROWS: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeepReport {
    /// Always both `train` and `val`.
    pub splits: BTreeMap<Split, DeepSplit>,
    pub duplicates: Duplicates,
    pub failures: Vec<Failure>,
    pub failures_truncated: bool,
    /// Whether every JPEG's coded data was walked (`--deep --verify`):
    /// without it, `damaged` is empty and the splits' counts are null.
    pub coded_data_checked: bool,
    /// Images that decode although their coded data is damaged as libjpeg
    /// reports it ("Corrupt JPEG data": data ending before the last block,
    /// bytes left after it, codes no table holds; or "Inconsistent
    /// progression sequence"); at most
    /// [`FAILURE_LIMIT`] listed, all counted.
    pub damaged: Vec<Failure>,
    pub damaged_truncated: bool,
    pub images: u64,
    pub wall_s: f64,
    pub images_per_s: f64,
    pub threads: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeepSplit {
    pub images: u64,
    pub decoded: u64,
    pub failures: u64,
    /// Decoded images with damaged coded data (counted in `decoded` and
    /// in the mean and std: the loader reads them as the decoder does).
    /// None (JSON null) unless the coded data was checked.
    pub damaged: Option<u64>,
    /// Pixels behind `mean` and `std` (every pixel of every decoded image).
    pub pixels: u64,
    /// Per channel (R, G, B), on the 0–1 scale (value / 255): what goes
    /// into a training recipe's `Normalize(mean, std)`. None (JSON null)
    /// when no pixel was decoded: an empty split has no mean, not 0.
    pub mean: Option<[f64; 3]>,
    /// Population standard deviation over all pixels, 0–1 scale.
    pub std: Option<[f64; 3]>,
    /// Decoded images whose size is not the manifest's H×W.
    pub other_size: u64,
    /// Groups of two or more byte-identical images within the split.
    pub duplicate_groups: u64,
    /// Rows that repeat an earlier row of the same split (each group of n
    /// counts n − 1).
    pub duplicate_rows: u64,
    /// How the JPEGs are coded (JPEG shards only; JSON null for raw ones):
    /// progressive frames and chroma sampling set what every epoch's decode
    /// costs.
    pub jpeg: Option<JpegMix>,
}

/// Counts of the JPEG codings in a split, from each image's markers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JpegMix {
    /// Sequential frames: baseline or extended.
    pub sequential: u64,
    pub progressive: u64,
    /// Images per chroma sampling (`4:2:0`, `4:4:4`, ...; see
    /// [`JpegHeader::chroma`]).
    pub chroma: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Duplicates {
    /// Images present in both splits (train/val leakage).
    pub across_splits: Across,
    /// Some duplicate groups (within or across splits) with their rows.
    pub examples: Vec<DuplicateGroup>,
    pub examples_truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Across {
    /// Distinct images found in both splits.
    pub groups: u64,
    /// Train rows holding one of those images.
    pub train_rows: u64,
    /// Val rows holding one of those images.
    pub val_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateGroup {
    /// First 128 bits of the SHA-256 of the stored image bytes, hex.
    pub content_hash: String,
    pub count: u64,
    pub rows: Vec<RowRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowRef {
    pub split: Split,
    pub file: String,
    pub row: u64,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub split: Split,
    pub file: String,
    pub row: u64,
    pub key: String,
    pub error: String,
}

/// Exact per-channel sums of a split.
#[derive(Debug, Clone, Default)]
struct Acc {
    images: u64,
    decoded: u64,
    failures: u64,
    damaged: u64,
    pixels: u64,
    sum: [u128; 3],
    sumsq: [u128; 3],
    other_size: u64,
    jpeg: JpegMix,
}

impl Acc {
    fn merge(&mut self, o: &Acc) {
        self.jpeg.sequential += o.jpeg.sequential;
        self.jpeg.progressive += o.jpeg.progressive;
        for (k, v) in &o.jpeg.chroma {
            *self.jpeg.chroma.entry(k.clone()).or_default() += v;
        }
        self.images += o.images;
        self.decoded += o.decoded;
        self.failures += o.failures;
        self.damaged += o.damaged;
        self.pixels += o.pixels;
        self.other_size += o.other_size;
        for c in 0..3 {
            self.sum[c] += o.sum[c];
            self.sumsq[c] += o.sumsq[c];
        }
    }
}

/// What one row group contributes.
#[derive(Default)]
struct Part {
    acc: [Acc; 2],
    /// (content hash, split slot, shard index, row in shard)
    hashes: Vec<(u128, u8, u32, u64)>,
    failures: Vec<Failure>,
    damaged: Vec<Failure>,
}

/// Exact per-channel sums and sums of squares of RGB8 pixels.
///
/// Why the shape: a stride-3 loop does not vectorise, so bytes are summed
/// in 48-byte lanes (16 pixels; lane j holds channel j % 3) into u32
/// accumulators, flushed to u64 before they could overflow
/// (65,535 × 255² < 2³²).
pub fn channel_sums(px: &[u8]) -> ([u64; 3], [u64; 3]) {
    const LANES: usize = 48;
    const FLUSH: u32 = 65_535;
    let mut sum = [0u64; 3];
    let mut sq = [0u64; 3];
    let mut s = [0u32; LANES];
    let mut q = [0u32; LANES];
    let mut n = 0u32;
    let flush =
        |s: &mut [u32; LANES], q: &mut [u32; LANES], sum: &mut [u64; 3], sq: &mut [u64; 3]| {
            for j in 0..LANES {
                sum[j % 3] += u64::from(s[j]);
                sq[j % 3] += u64::from(q[j]);
            }
            *s = [0; LANES];
            *q = [0; LANES];
        };
    let mut chunks = px.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            let v = u32::from(c[j]);
            s[j] += v;
            q[j] += v * v;
        }
        n += 1;
        if n == FLUSH {
            flush(&mut s, &mut q, &mut sum, &mut sq);
            n = 0;
        }
    }
    flush(&mut s, &mut q, &mut sum, &mut sq);
    for (j, &b) in chunks.remainder().iter().enumerate() {
        let v = u64::from(b);
        sum[j % 3] += v;
        sq[j % 3] += v * v;
    }
    (sum, sq)
}

fn slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Val => 1,
    }
}

fn content_hash(bytes: &[u8]) -> u128 {
    let d = Sha256::digest(bytes);
    let mut h = [0u8; 16];
    h.copy_from_slice(&d[..16]);
    u128::from_be_bytes(h)
}

/// Keeps the first [`FAILURE_LIMIT`] of `more` (in order) in `list`;
/// whether some were left out.
fn keep_first(list: &mut Vec<Failure>, more: Vec<Failure>) -> bool {
    let room = FAILURE_LIMIT.saturating_sub(list.len());
    let left_out = more.len() > room;
    list.extend(more.into_iter().take(room));
    left_out
}

/// Decode every image of `set`; with `check_coded_data`, walk every
/// JPEG's coded data too (about half a decode's CPU again). `on_rows` is
/// told how many rows each finished row group held (for a progress bar;
/// called from worker threads).
pub fn deep_scan(
    set: &ShardSet,
    check_coded: bool,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<DeepReport, ReadError> {
    let start = Instant::now();
    let manifest = set.manifest();
    let (h, w) = (manifest.height, manifest.width);
    let raw = manifest.encoding == Encoding::Raw;
    // Raw rows have no coded data.
    let check_coded = check_coded && !raw;
    let tasks: Vec<(usize, usize)> = set
        .shards()
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.num_row_groups()).map(move |rg| (i, rg)))
        .collect();

    let parts: Vec<Part> = tasks
        .par_iter()
        .map(|&(si, rg)| -> Result<Part, ReadError> {
            let shard = &set.shards()[si];
            let split = shard.meta().split;
            let group = shard.row_group(rg)?;
            // Images sliced by a wrong footer would be blamed for its damage.
            shard.check_listed_lengths(&group)?;
            let mut part = Part::default();
            part.hashes.reserve(group.len());
            let acc = &mut part.acc[slot(split)];
            for (i, row) in group.iter().enumerate() {
                let shard_row = group.first_row() + i as u64;
                acc.images += 1;
                part.hashes.push((
                    content_hash(row.image),
                    slot(split) as u8,
                    si as u32,
                    shard_row,
                ));
                let failure = |error: String| Failure {
                    split,
                    file: shard.file_name(),
                    row: shard_row,
                    key: row.key.to_string(),
                    error,
                };
                // Raw rows are the pixels already; only JPEG needs decoding.
                let decoded;
                let (pixels, size) = if raw {
                    (row.image, (w, h))
                } else {
                    // What cannot be walked cannot be decoded either: the
                    // decode below reports it.
                    if let Ok(header) = JpegHeader::parse(row.image) {
                        match header.progressive {
                            true => acc.jpeg.progressive += 1,
                            false => acc.jpeg.sequential += 1,
                        }
                        *acc.jpeg.chroma.entry(header.chroma()).or_default() += 1;
                    }
                    match decode_rgb8(row.image, DecodeLimits::default()) {
                        Ok(img) => {
                            if check_coded {
                                if let Err(e) = check_coded_data(row.image) {
                                    acc.damaged += 1;
                                    part.damaged.push(failure(e.to_string()));
                                }
                            }
                            decoded = img;
                            (&decoded.data[..], (decoded.width, decoded.height))
                        }
                        Err(e) => {
                            acc.failures += 1;
                            part.failures.push(failure(e.to_string()));
                            continue;
                        }
                    }
                };
                acc.decoded += 1;
                if size != (w, h) {
                    acc.other_size += 1;
                }
                acc.pixels += (pixels.len() / 3) as u64;
                let (s, q) = channel_sums(pixels);
                for c in 0..3 {
                    acc.sum[c] += u128::from(s[c]);
                    acc.sumsq[c] += u128::from(q[c]);
                }
            }
            on_rows(group.len() as u64);
            Ok(part)
        })
        .collect::<Result<_, _>>()?;

    let mut acc = [Acc::default(), Acc::default()];
    let mut hashes = Vec::new();
    let (mut failures, mut failures_truncated) = (Vec::new(), false);
    let (mut damaged, mut damaged_truncated) = (Vec::new(), false);
    // `parts` is in task order, so the listed failures are the first ones
    // in file order whatever the scheduling.
    for p in parts {
        for (a, b) in acc.iter_mut().zip(&p.acc) {
            a.merge(b);
        }
        hashes.extend(p.hashes);
        failures_truncated |= keep_first(&mut failures, p.failures);
        damaged_truncated |= keep_first(&mut damaged, p.damaged);
    }

    let mut splits: BTreeMap<Split, DeepSplit> = BTreeMap::new();
    for split in Split::ALL {
        let a = &acc[slot(split)];
        let mut d = DeepSplit {
            images: a.images,
            decoded: a.decoded,
            failures: a.failures,
            damaged: check_coded.then_some(a.damaged),
            pixels: a.pixels,
            other_size: a.other_size,
            jpeg: (!raw).then(|| a.jpeg.clone()),
            ..Default::default()
        };
        if a.pixels > 0 {
            let n = a.pixels as f64;
            let (mut mean, mut std) = ([0.0; 3], [0.0; 3]);
            for c in 0..3 {
                let m = a.sum[c] as f64 / n;
                let var = (a.sumsq[c] as f64 / n - m * m).max(0.0);
                mean[c] = m / 255.0;
                std[c] = var.sqrt() / 255.0;
            }
            (d.mean, d.std) = (Some(mean), Some(std));
        }
        splits.insert(split, d);
    }

    // Duplicates: sort by hash (ties by position so examples are stable).
    hashes.par_sort_unstable();
    let mut duplicates = Duplicates::default();
    let mut i = 0;
    while i < hashes.len() {
        let mut j = i + 1;
        while j < hashes.len() && hashes[j].0 == hashes[i].0 {
            j += 1;
        }
        let group = &hashes[i..j];
        i = j;
        if group.len() < 2 {
            continue;
        }
        let n_train = group.iter().filter(|g| g.1 == 0).count() as u64;
        let n_val = group.len() as u64 - n_train;
        for (split, n) in [(Split::Train, n_train), (Split::Val, n_val)] {
            if n >= 2 {
                if let Some(d) = splits.get_mut(&split) {
                    d.duplicate_groups += 1;
                    d.duplicate_rows += n - 1;
                }
            }
        }
        if n_train > 0 && n_val > 0 {
            duplicates.across_splits.groups += 1;
            duplicates.across_splits.train_rows += n_train;
            duplicates.across_splits.val_rows += n_val;
        }
        if duplicates.examples.len() < EXAMPLE_LIMIT {
            let mut rows = Vec::new();
            for &(_, sl, si, row) in group.iter().take(EXAMPLE_ROWS) {
                let shard = &set.shards()[si as usize];
                rows.push(RowRef {
                    split: if sl == 0 { Split::Train } else { Split::Val },
                    file: shard.file_name(),
                    row,
                    key: shard.row(row)?.key.to_string(),
                });
            }
            duplicates.examples.push(DuplicateGroup {
                content_hash: format!("{:032x}", group[0].0),
                count: group.len() as u64,
                rows,
            });
        } else {
            duplicates.examples_truncated = true;
        }
    }

    let images = acc[0].images + acc[1].images;
    let wall_s = start.elapsed().as_secs_f64();
    Ok(DeepReport {
        splits,
        duplicates,
        failures,
        failures_truncated,
        coded_data_checked: check_coded,
        damaged,
        damaged_truncated,
        images,
        wall_s,
        images_per_s: images as f64 / wall_s.max(1e-9),
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sums_match_a_plain_loop() {
        // Lengths around the lane width and a long run past the flush point.
        for len in [0usize, 3, 45, 48, 51, 96 * 3 + 3, 65_535 * 48 + 99] {
            let px: Vec<u8> = (0..len).map(|i| ((i * 7919 + i / 5) % 256) as u8).collect();
            let mut sum = [0u64; 3];
            let mut sq = [0u64; 3];
            for (i, &b) in px.iter().enumerate() {
                sum[i % 3] += b as u64;
                sq[i % 3] += (b as u64) * (b as u64);
            }
            assert_eq!(channel_sums(&px), (sum, sq), "len {len}");
        }
        let white = vec![255u8; 70_000 * 48];
        let (s, q) = channel_sums(&white);
        assert_eq!(s[0], 255 * 70_000 * 16);
        assert_eq!(q[2], 255 * 255 * 70_000 * 16);
    }
}
