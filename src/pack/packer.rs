//! The pack pipeline: plan → permute → encode in parallel → write shards.
//!
//! Workers (a rayon pool of `--threads`) encode fixed-size chunks of the
//! permuted item list; results come back in input order, so the shards are
//! identical whatever the thread count. One thread writes while the pool
//! encodes the next chunks (a few ahead, within a byte budget, so memory
//! does not grow with threads × image size); train and val go
//! through the same pipeline, one after the other, without a drain between.
//! The thread that hands chunks to the pool announces each chunk's zip
//! entries to the OS a few chunks ahead (`Source::prefetch`), so that reads
//! in permuted order from an archive larger than the page cache are in
//! flight together rather than one page fault at a time.
//! After each finished shard a small record (`.ebv-pack/<shard>.json`) notes
//! where the next shard starts and what was rejected so far; a rerun with the
//! same plan resumes after the last one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::encode::{
    encode_file, encode_pixels, stored_whole, EncodeConfig, Encoded, Progressive, Verify,
};
use super::layout::{self, Item, LayoutKind, ListColumns, Payload, Plan};
use super::source::Source;
use super::PackError;
use crate::image::{DecodeLimits, ResizeMode, Subsampling};
use crate::progress::human_bytes;
use crate::shard::{
    file_checksum, reason_kind, shard_file_name, sync_files, write_classes_tsv, write_replace,
    Encoding, Manifest, RejectedEntry, ShardMeta, ShardRecord, ShardWriter, Split, SplitTotals,
    CLASSES_FILE, FORMAT_VERSION, MANIFEST_FILE,
};

const STATE_DIR: &str = ".ebv-pack";

/// Options of one pack run (the CLI's flags, resolved).
#[derive(Debug, Clone, Serialize)]
pub struct PackOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    pub layout: Option<LayoutKind>,
    pub encoding: Encoding,
    pub height: u32,
    pub width: u32,
    pub resize: ResizeMode,
    pub quality: u8,
    /// Chroma sampling of re-encoded JPEGs.
    pub subsampling: Subsampling,
    /// Whether progressive source JPEGs are passed through or re-encoded.
    pub progressive: Progressive,
    pub seed: u64,
    /// Rows per shard; `None` picks a default for the encoding.
    pub shard_rows: Option<usize>,
    /// Rows per row group; `None` picks a default for the encoding.
    pub row_group_rows: Option<usize>,
    pub threads: Option<usize>,
    pub verify: Verify,
    pub max_pixels: u64,
    /// One class name per line, in label order (IDX sources have none).
    pub class_names: Option<PathBuf>,
    /// The image and label columns of CSV lists, when not the defaults.
    pub columns: ListColumns,
    pub force: bool,
    pub quiet: bool,
}

impl PackOptions {
    /// Defaults for `source` → `out`, as the CLI documents them.
    pub fn new(source: impl Into<PathBuf>, out: impl Into<PathBuf>) -> PackOptions {
        PackOptions {
            source: source.into(),
            out: out.into(),
            layout: None,
            encoding: Encoding::Jpeg,
            height: 224,
            width: 224,
            resize: ResizeMode::Stretch,
            quality: 95,
            subsampling: Subsampling::S420,
            progressive: Progressive::Keep,
            seed: 0,
            shard_rows: None,
            row_group_rows: None,
            threads: None,
            verify: Verify::Header,
            max_pixels: DecodeLimits::default().max_pixels,
            class_names: None,
            columns: ListColumns::default(),
            force: false,
            quiet: false,
        }
    }
}

/// Bytes one stored image takes, for sizing row groups and shards: exact
/// for raw pixels, ~1/8 of that for JPEG (18.7 KB measured for 224×224
/// photo-like images at q90).
fn bytes_per_image(encoding: Encoding, height: u32, width: u32) -> usize {
    let raw = height as usize * width as usize * 3;
    match encoding {
        Encoding::Raw => raw,
        Encoding::Jpeg => (raw / 8).max(1024),
    }
}

/// Target bytes of a row group and of a shard (see BENCHMARKS.md for the
/// measurement behind them).
const ROW_GROUP_BYTES: usize = 16 << 20;
const SHARD_BYTES: usize = 192 << 20;

/// Default rows per row group: about 16 MiB of images (891 rows of
/// 224×224 JPEG, 111 of raw).
pub fn default_row_group_rows(encoding: Encoding, height: u32, width: u32) -> usize {
    (ROW_GROUP_BYTES / bytes_per_image(encoding, height, width)).clamp(1, 65_536)
}

/// Default rows per shard: a whole number of row groups, about 192 MiB.
pub fn default_shard_rows(encoding: Encoding, height: u32, width: u32) -> usize {
    let rg = default_row_group_rows(encoding, height, width);
    (SHARD_BYTES / ROW_GROUP_BYTES) * rg
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitSummary {
    pub rows: u64,
    pub shards: u64,
    pub bytes: u64,
    pub rejected: u64,
    /// Rows stored as the source's own JPEG bytes.
    pub passthrough: u64,
    /// Rows decoded and resized (then stored raw or re-encoded).
    pub converted: u64,
}

/// What a pack run did; printed by `ebv-pack` and as `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PackSummary {
    pub out: PathBuf,
    pub layout: LayoutKind,
    pub num_classes: usize,
    pub splits: BTreeMap<Split, SplitSummary>,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// What the layout decided on its own (a header row skipped, a
    /// validation folder chosen); also in the manifest's options.
    pub notes: Vec<String>,
    /// An empty split, or classes left without training rows.
    pub warnings: Vec<String>,
    /// Shards written by this run / kept from an interrupted earlier run.
    pub shards_written: u64,
    pub shards_reused: u64,
    /// The output already held this pack: nothing was read or written,
    /// the counts are the manifest's and the rates are 0.
    pub already_complete: bool,
    pub bytes_written: u64,
    pub wall_s: f64,
    pub images_per_s: f64,
    /// CPU time of the whole process (all threads) during the run, and the
    /// rate per CPU-second: the fair figure on a shared machine.
    pub cpu_s: f64,
    pub images_per_cpu_s: f64,
}

/// User + system CPU seconds used so far by this process, all threads.
fn process_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What is kept after each finished shard so that a rerun can resume.
#[derive(Debug, Serialize, Deserialize)]
struct ShardState {
    plan: String,
    record: ShardRecord,
    next_input: usize,
    rejected: Vec<RejectedEntry>,
    passthrough: u64,
}

/// Pack `opts.source` into `opts.out`.
pub fn pack(opts: &PackOptions) -> Result<PackSummary, PackError> {
    let start = Instant::now();
    let cpu_start = process_cpu_s();
    validate(opts)?;
    let class_names = match &opts.class_names {
        Some(path) => Some(read_names(path)?),
        None => None,
    };
    let source = Source::open(&opts.source, Some((&opts.out, is_pack_output)))?;
    if let Some(file) = source.foreign_in_skipped() {
        // The output folder is left out of the source: whatever else lies
        // in it would be neither packed nor listed as rejected.
        return Err(PackError::Usage(format!(
            "--out {} lies inside the source and holds files ebv-pack did not write, e.g. \
             '{file}': they would be left out of the pack without a word; choose an --out \
             outside the source, or an empty folder",
            opts.out.display()
        )));
    }
    let mut plan = layout::plan(&source, opts.layout, class_names.as_deref(), &opts.columns)?;
    if plan.items.is_empty() {
        // Lists name their images: when none resolves, the paths or the
        // columns are wrong, not the layout.
        let listed = plan
            .rejected
            .iter()
            .find(|r| r.reason.contains(" line "))
            .filter(|_| plan.layout == LayoutKind::ListFiles);
        return Err(PackError::Layout(match listed {
            Some(r) => format!(
                "{}: no row of its list files names an image of the source (first: '{}': {}); \
                 check the lists' paths and, for CSV lists, --image-column and --label-column",
                opts.source.display(),
                r.key,
                r.reason
            ),
            None => format!(
                "{}: the source has the {} layout but none of its {} entries is an image to \
                 pack (rerun with --layout to force another layout)",
                opts.source.display(),
                plan.layout,
                source.entries().len()
            ),
        }));
    }
    let shard_rows = opts
        .shard_rows
        .unwrap_or_else(|| default_shard_rows(opts.encoding, opts.height, opts.width));
    let row_group_rows = opts
        .row_group_rows
        .unwrap_or_else(|| default_row_group_rows(opts.encoding, opts.height, opts.width))
        .min(shard_rows);
    let cfg = EncodeConfig {
        encoding: opts.encoding,
        height: opts.height,
        width: opts.width,
        resize: opts.resize,
        quality: opts.quality,
        subsampling: opts.subsampling,
        progressive: opts.progressive,
        verify: opts.verify,
        limits: DecodeLimits {
            max_pixels: opts.max_pixels,
        },
    };
    // Moved, not copied: at 1.8M entries each copy of the keys is ~150 MB.
    let splits = permute(std::mem::take(&mut plan.items), opts.seed);
    let mut resolved = serde_json::json!({
        "layout": plan.layout,
        "encoding": opts.encoding,
        "height": opts.height,
        "width": opts.width,
        "resize": opts.resize,
        "quality": opts.quality,
        "seed": opts.seed,
        "shard_rows": shard_rows,
        "row_group_rows": row_group_rows,
        "verify": opts.verify,
        "max_pixels": opts.max_pixels,
        "layout_notes": plan.notes,
    });
    // Only where it decides stored bytes: a raw pack's options (and the
    // fingerprint its reruns compare) are the same as before the flag. A JPEG
    // pack made before it re-encoded with other chroma, so it differs.
    if opts.encoding == Encoding::Jpeg {
        resolved["subsampling"] = opts.subsampling.as_str().into();
        // Only when asked: the default keeps the fingerprint of packs made
        // before the flag.
        if opts.progressive != Progressive::Keep {
            resolved["progressive"] = opts.progressive.as_str().into();
        }
    }
    // Only when given: the options of packs made before these flags existed
    // stay the same, so that their reruns still find them complete.
    if let Some(c) = &opts.columns.image {
        resolved["image_column"] = c.as_str().into();
    }
    if let Some(c) = &opts.columns.label {
        resolved["label_column"] = c.as_str().into();
    }
    let fingerprint = fingerprint(&resolved, &source, &plan, &splits);

    let out = &opts.out;
    // Held until the pack returns: a second ebv-pack into the same folder
    // would take this one's temporary shards for stale ones and delete them.
    // No pid in it: the output is the same bytes whoever packed it.
    let _lock = crate::lock::DirLock::acquire(out, "ebv-pack", false)?;
    let state_dir = out.join(STATE_DIR);
    let manifest_path = out.join(MANIFEST_FILE);
    if opts.force {
        clear_output(out)?;
    } else if manifest_path.exists() {
        let manifest = Manifest::load(&manifest_path)?;
        if manifest.plan != fingerprint {
            return Err(PackError::Usage(format!(
                "{} already holds a different pack (manifest plan {}, this run {}: another \
                 source, layout or options, or a JPEG pack made before --subsampling); rerun \
                 with --force to replace it, or choose another --out",
                out.display(),
                short(&manifest.plan),
                short(&fingerprint)
            )));
        }
        let damaged = damaged_shards(out, &manifest);
        if damaged.is_empty() {
            let summary = complete_summary(out, &manifest, &plan, &splits, start);
            nothing_packed(&summary, out, &manifest.rejected)?;
            return Ok(summary);
        }
        return Err(PackError::Usage(format!(
            "{}: this pack is complete but {} of its {} shards are damaged ({}); rerun with \
             --force to pack it again",
            out.display(),
            damaged.len(),
            manifest.shards.len(),
            damaged
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    remove_stale_temps(out)?;
    std::fs::create_dir_all(&state_dir).map_err(|e| PackError::io(&state_dir, e))?;
    check_disk_space(opts, &source, &splits, kept_bytes(out, &fingerprint))?;
    write_classes_tsv(&out.join(CLASSES_FILE), &plan.classes)?;

    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| PackError::Usage(format!("--threads {threads}: {e}")))?;
    let total: usize = splits.values().map(Vec::len).sum();
    let (chunk, queue) = pipeline_shape(
        threads,
        bytes_per_image(opts.encoding, opts.height, opts.width),
    );
    let bar = crate::progress::bar(total as u64, "img", opts.quiet);
    bar.set_message("packing");

    let ctx = Context {
        source: &source,
        plan: &plan,
        cfg,
        out,
        state_dir: &state_dir,
        fingerprint: &fingerprint,
        shard_rows,
        row_group_rows,
        pool: &pool,
        chunk,
        queue,
        bar: &bar,
        spare: std::sync::Mutex::new(Vec::new()),
        // Only raw rows are worth reusing: each is exactly one decode's
        // output; a JPEG row is too small to decode into and would grow.
        spare_cap: match cfg.encoding {
            Encoding::Raw => SPARE_BYTES / bytes_per_image(cfg.encoding, cfg.height, cfg.width),
            Encoding::Jpeg => 0,
        },
    };
    let mut records = Vec::new();
    let mut rejected = plan.rejected.clone();
    let mut summary_splits = BTreeMap::new();
    let (mut written, mut reused) = (0u64, 0u64);
    let inputs: Vec<(Split, &[Item])> = splits.iter().map(|(s, v)| (*s, v.as_slice())).collect();
    let dones = ctx.run_splits(&inputs)?;
    for (&(split, _), done) in inputs.iter().zip(dones) {
        let mut s = SplitSummary {
            rows: done.records.iter().map(|r| r.rows).sum(),
            shards: done.records.len() as u64,
            bytes: done.records.iter().map(|r| r.bytes).sum(),
            rejected: done.rejected.len() as u64,
            passthrough: done.passthrough,
            converted: 0,
        };
        s.converted = s.rows - s.passthrough;
        written += done.written;
        reused += done.records.len() as u64 - done.written;
        summary_splits.insert(split, s);
        records.extend(done.records);
        rejected.extend(done.rejected);
    }
    bar.finish_and_clear();

    let mut totals = BTreeMap::new();
    for split in Split::ALL {
        let t = SplitTotals {
            shards: records.iter().filter(|r| r.split == split).count() as u64,
            rows: records
                .iter()
                .filter(|r| r.split == split)
                .map(|r| r.rows)
                .sum(),
            bytes: records
                .iter()
                .filter(|r| r.split == split)
                .map(|r| r.bytes)
                .sum(),
            rejected: rejected.iter().filter(|r| r.split == Some(split)).count() as u64,
            passthrough: summary_splits
                .get(&split)
                .map_or(0, |s: &SplitSummary| s.passthrough),
        };
        // Every rejection of the split, the layout's as well as the encoder's.
        if let Some(s) = summary_splits.get_mut(&split) {
            s.rejected = t.rejected;
        }
        totals.insert(split, t);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        encoding: opts.encoding,
        height: opts.height,
        width: opts.width,
        num_classes: plan.classes.len() as u32,
        options: resolved,
        source: source.info().clone(),
        plan: fingerprint,
        shards: records,
        totals,
        rejected,
    };
    // The manifest vouches for the shards: they reach the disk before it does.
    let paths: Vec<PathBuf> = manifest.shards.iter().map(|r| out.join(&r.file)).collect();
    sync_files(paths.iter().map(PathBuf::as_path))?;
    manifest.save(&manifest_path)?;
    std::fs::remove_dir_all(&state_dir).map_err(|e| PackError::io(&state_dir, e))?;

    let wall_s = start.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s() - cpu_start;
    let images: u64 = summary_splits.values().map(|s: &SplitSummary| s.rows).sum();
    let summary = PackSummary {
        out: out.clone(),
        layout: plan.layout,
        num_classes: plan.classes.len(),
        rejected: manifest.rejected.len() as u64,
        rejected_by_reason: by_reason(&manifest.rejected),
        notes: plan.notes.clone(),
        warnings: warnings(&plan, &splits, &manifest.rejected[plan.rejected.len()..]),
        splits: summary_splits,
        shards_written: written,
        shards_reused: reused,
        already_complete: false,
        bytes_written: manifest.shards.iter().map(|r| r.bytes).sum(),
        wall_s,
        images_per_s: images as f64 / wall_s.max(1e-9),
        cpu_s,
        images_per_cpu_s: images as f64 / cpu_s.max(1e-9),
    };
    nothing_packed(&summary, out, &manifest.rejected)?;
    Ok(summary)
}

/// A pack without a single row is an error, not an empty success: every
/// image was rejected, and the reasons say why.
fn nothing_packed(
    summary: &PackSummary,
    out: &Path,
    rejected: &[RejectedEntry],
) -> Result<(), PackError> {
    if summary.splits.values().any(|s| s.rows > 0) {
        return Ok(());
    }
    let reasons: Vec<String> = summary
        .rejected_by_reason
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    let examples: Vec<String> = rejected
        .iter()
        .take(3)
        .map(|r| format!("{}: {}", r.key, r.reason))
        .collect();
    Err(PackError::Layout(format!(
        "nothing was packed: all {} entries were rejected ({}); e.g. {}. Every rejection is \
         listed with its reason in {}",
        rejected.len(),
        reasons.join(", "),
        examples.join("; "),
        out.join(MANIFEST_FILE).display()
    )))
}

/// Warnings about what the pack holds: an empty split, classes without a
/// training row. `encode_rejected` are the rejections of items (after the
/// plan's own), whose keys are unique within a split.
fn warnings(
    plan: &Plan,
    splits: &BTreeMap<Split, Vec<Item>>,
    encode_rejected: &[RejectedEntry],
) -> Vec<String> {
    let mut out = Vec::new();
    for split in Split::ALL {
        let n = splits.get(&split).map_or(0, Vec::len);
        let lost = encode_rejected
            .iter()
            .filter(|r| r.split == Some(split))
            .count();
        if n == 0 {
            out.push(format!("{split}: no rows ({})", why_empty(plan, split)));
        } else if lost >= n {
            out.push(format!(
                "{split}: no rows (all {n} of its images were rejected)"
            ));
        }
    }
    let lost: std::collections::HashSet<&str> = encode_rejected
        .iter()
        .filter(|r| r.split == Some(Split::Train))
        .map(|r| r.key.as_str())
        .collect();
    let mut per_class = vec![(0usize, 0usize); plan.classes.len()];
    for it in splits.get(&Split::Train).into_iter().flatten() {
        if let Some(c) = per_class.get_mut(it.label as usize) {
            c.0 += 1;
            c.1 += usize::from(!lost.contains(it.key.as_str()));
        }
    }
    let empty: Vec<String> = per_class
        .iter()
        .enumerate()
        .filter(|(_, (_, kept))| *kept == 0)
        .map(|(label, (images, _))| {
            let name = &plan.classes[label];
            if *images == 0 {
                // Its training entries were all rejected before decoding
                // (encrypted, another compression): say how many.
                let unread = plan
                    .rejected
                    .iter()
                    .filter(|r| {
                        r.split == Some(Split::Train) && layout::class_of(&r.key) == Some(name)
                    })
                    .count();
                if plan.layout == LayoutKind::ClassFolders && unread > 0 {
                    format!("'{name}' (label {label}, all {unread} training entries unreadable)")
                } else {
                    format!("'{name}' (label {label}, no training images)")
                }
            } else {
                format!("'{name}' (label {label}, all {images} training images rejected)")
            }
        })
        .collect();
    if !empty.is_empty() {
        let shown = empty
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if empty.len() > 10 {
            format!(" and {} more", empty.len() - 10)
        } else {
            String::new()
        };
        out.push(format!(
            "{} of {} classes have no training rows: {shown}{more}",
            empty.len(),
            plan.classes.len()
        ));
    }
    for group in layout::same_but_normalization(&plan.classes) {
        let names = group
            .iter()
            .map(|&c| format!("{:?} (label {c})", plan.classes[c]))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(format!(
            "classes {names} are one name in different Unicode normalization forms (NFC, NFD): \
             packed as different classes; rename the folders or labels if they are one"
        ));
    }
    out
}

/// Why a split has no items: its folder or list file was rejected (an
/// unreadable folder, a list that is a named pipe), its entries all were,
/// or the source has none.
fn why_empty(plan: &Plan, split: Split) -> String {
    let of_split: Vec<&RejectedEntry> = plan
        .rejected
        .iter()
        .filter(|r| r.split == Some(split))
        .collect();
    let Some(first) = of_split.first() else {
        if plan.layout != LayoutKind::ListFiles {
            return format!("the source has no {split} images");
        }
        // Lists name the split's images: without one for the split, its
        // images (if the source has any) are listed nowhere.
        let unlisted: Vec<&RejectedEntry> = plan
            .rejected
            .iter()
            .filter(|r| r.split.is_none() && r.reason.starts_with(layout::NOT_LISTED))
            .collect();
        let mut why =
            format!("the source has no {split} list file, e.g. {split}.csv or {split}.txt");
        match unlisted.as_slice() {
            [] => {}
            [r] => why.push_str(&format!("; 1 file no list names was rejected: '{}'", r.key)),
            [r, ..] => why.push_str(&format!(
                "; {} files no list names were rejected, e.g. '{}'",
                unlisted.len(),
                r.key
            )),
        }
        return why;
    };
    if let Some(r) = of_split.iter().find(|r| r.key.ends_with('/')) {
        return format!("its folder '{}' was rejected: {}", r.key, r.reason);
    }
    let list = of_split
        .iter()
        .find(|r| plan.layout == LayoutKind::ListFiles && layout::is_list_of(&r.key, split));
    if let Some(r) = list {
        return format!("its list file '{}' was rejected: {}", r.key, r.reason);
    }
    format!(
        "all {} of its entries were rejected, e.g. '{}': {}",
        of_split.len(),
        first.key,
        first.reason
    )
}

fn validate(opts: &PackOptions) -> Result<(), PackError> {
    let bad = |m: String| Err(PackError::Usage(m));
    let same = std::fs::canonicalize(&opts.source)
        .ok()
        .zip(std::fs::canonicalize(&opts.out).ok())
        .is_some_and(|(a, b)| a == b);
    if same {
        return bad(format!(
            "--out {} is the source folder itself; choose another output folder",
            opts.out.display()
        ));
    }
    // Said here, before the output is created: creating it would only
    // report "File exists".
    if let Ok(link) = std::fs::symlink_metadata(&opts.out) {
        let out = opts.out.display();
        match std::fs::metadata(&opts.out) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return bad(format!("--out {out} is a file, not a folder")),
            Err(e) if link.file_type().is_symlink() => {
                let target = std::fs::read_link(&opts.out)
                    .map_or_else(|_| "?".to_string(), |t| t.display().to_string());
                return bad(match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("--out {out} is a symbolic link to a missing folder ({target})")
                    }
                    _ => format!(
                        "--out {out} is a symbolic link to {target}, which is unreadable: {e}"
                    ),
                });
            }
            Err(e) => return Err(PackError::io(&opts.out, e)),
        }
    }
    if opts.height == 0 || opts.width == 0 || opts.height > 8192 || opts.width > 8192 {
        return bad(format!(
            "--size {}x{}: each side must be 1..=8192",
            opts.width, opts.height
        ));
    }
    if !(1..=100).contains(&opts.quality) {
        return bad(format!("--quality {}: must be 1..=100", opts.quality));
    }
    if opts.shard_rows == Some(0) {
        return bad("--shard-rows must be at least 1".into());
    }
    if opts.row_group_rows == Some(0) {
        return bad("--row-group-rows must be at least 1".into());
    }
    if opts.threads == Some(0) {
        return bad("--threads must be at least 1".into());
    }
    Ok(())
}

fn read_names(path: &Path) -> Result<Vec<String>, PackError> {
    let text = std::fs::read_to_string(path).map_err(|e| PackError::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let mut seen = std::collections::HashMap::new();
    for (i, n) in names.iter().enumerate() {
        if let Some(first) = seen.insert(n.as_str(), i) {
            return Err(PackError::Usage(format!(
                "--class-names {}: name {n:?} is given twice (classes {first} and {i}); \
                 every class needs its own name",
                path.display()
            )));
        }
    }
    Ok(names)
}

/// Items of each split in a seeded order that mixes classes. The order
/// depends only on the seed and the item list, never on timing.
fn permute(items: Vec<Item>, seed: u64) -> BTreeMap<Split, Vec<Item>> {
    let mut by_split: BTreeMap<Split, Vec<Item>> = BTreeMap::new();
    for it in items {
        by_split.entry(it.split).or_default().push(it);
    }
    for (split, v) in by_split.iter_mut() {
        // Start from a canonical order so the source's listing order does not matter.
        v.sort_by(|a, b| a.key.cmp(&b.key));
        let stream = match split {
            Split::Train => 0x7472_6169_6e00_0000,
            Split::Val => 0x7661_6c00_0000_0000,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream);
        v.shuffle(&mut rng);
    }
    by_split
}

fn fingerprint(
    resolved: &serde_json::Value,
    source: &Source,
    plan: &Plan,
    splits: &BTreeMap<Split, Vec<Item>>,
) -> String {
    let mut h = Sha256::new();
    h.update(format!("ebv-pack v{FORMAT_VERSION}\n{resolved}\n"));
    h.update(source.identity());
    h.update(b"\n");
    for c in &plan.classes {
        h.update(c.as_bytes());
        h.update(b"\n");
    }
    for (split, items) in splits {
        h.update(split.as_str());
        for it in items {
            h.update(it.key.as_bytes());
            h.update(it.label.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// Whether a file of the output folder (its path relative to the folder)
/// is one a pack writes there, or the README a `shards/` folder keeps.
fn is_pack_output(rel: &str) -> bool {
    match rel.split_once('/') {
        Some((top, _)) => top == STATE_DIR,
        None => {
            is_shard_name(rel)
                || rel == MANIFEST_FILE
                || rel == CLASSES_FILE
                || rel == crate::lock::LOCK_FILE
                || is_temp(rel)
                || rel.starts_with("README")
        }
    }
}

fn is_shard_name(name: &str) -> bool {
    (name.starts_with("train-") || name.starts_with("val-")) && name.ends_with(".parquet")
}

fn clear_output(out: &Path) -> Result<(), PackError> {
    let rd = std::fs::read_dir(out).map_err(|e| PackError::io(out, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| PackError::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == STATE_DIR {
            std::fs::remove_dir_all(&path).map_err(|e| PackError::io(&path, e))?;
        } else if is_shard_name(&name)
            || name == MANIFEST_FILE
            || name == CLASSES_FILE
            || is_temp(&name)
        {
            std::fs::remove_file(&path).map_err(|e| PackError::io(&path, e))?;
        }
    }
    Ok(())
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn remove_stale_temps(out: &Path) -> Result<(), PackError> {
    let rd = std::fs::read_dir(out).map_err(|e| PackError::io(out, e))?;
    for entry in rd.flatten() {
        if is_temp(&entry.file_name().to_string_lossy()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| PackError::io(&path, e))?;
        }
    }
    Ok(())
}

/// The shards of a complete pack that are missing or not the size the
/// manifest recorded, each with what is wrong.
fn damaged_shards(out: &Path, manifest: &Manifest) -> Vec<String> {
    manifest
        .shards
        .iter()
        .filter_map(|r| match std::fs::metadata(out.join(&r.file)) {
            Ok(m) if m.len() == r.bytes => None,
            Ok(m) => Some(format!("{} has {} bytes, not {}", r.file, m.len(), r.bytes)),
            Err(e) => Some(format!("{}: {e}", r.file)),
        })
        .collect()
}

fn complete_summary(
    out: &Path,
    manifest: &Manifest,
    plan: &Plan,
    splits: &BTreeMap<Split, Vec<Item>>,
    start: Instant,
) -> PackSummary {
    let mut summary_splits = BTreeMap::new();
    for (split, t) in &manifest.totals {
        summary_splits.insert(
            *split,
            SplitSummary {
                rows: t.rows,
                shards: t.shards,
                bytes: t.bytes,
                rejected: t.rejected,
                passthrough: t.passthrough,
                converted: t.rows.saturating_sub(t.passthrough),
            },
        );
    }
    // The same plan gives the same plan rejections first; the rest are the
    // items' own.
    let encode_rejected = manifest.rejected.get(plan.rejected.len()..).unwrap_or(&[]);
    PackSummary {
        out: out.to_path_buf(),
        layout: plan.layout,
        num_classes: manifest.num_classes as usize,
        splits: summary_splits,
        rejected: manifest.rejected.len() as u64,
        rejected_by_reason: by_reason(&manifest.rejected),
        notes: plan.notes.clone(),
        warnings: warnings(plan, splits, encode_rejected),
        shards_written: 0,
        shards_reused: manifest.shards.len() as u64,
        already_complete: true,
        bytes_written: 0,
        wall_s: start.elapsed().as_secs_f64(),
        images_per_s: 0.0,
        cpu_s: 0.0,
        images_per_cpu_s: 0.0,
    }
}

fn by_reason(rejected: &[RejectedEntry]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in rejected {
        *m.entry(reason_kind(&r.reason)).or_insert(0) += 1;
    }
    m
}

fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes of the complete shards an interrupted run of this plan left in
/// `out` (they stay, so a resumed run needs that much less room). Only the
/// size is checked here; the resume itself verifies their checksums.
fn kept_bytes(out: &Path, fingerprint: &str) -> u64 {
    let mut total = 0;
    for split in Split::ALL {
        for index in 0.. {
            let name = shard_file_name(split, index);
            let state = std::fs::read(out.join(STATE_DIR).join(format!("{name}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<ShardState>(&b).ok());
            let Some(state) = state.filter(|s| s.plan == fingerprint) else {
                break;
            };
            if !std::fs::metadata(out.join(&name)).is_ok_and(|m| m.len() == state.record.bytes) {
                break;
            }
            total += state.record.bytes;
        }
    }
    total
}

/// Bytes the run still has to write: the estimate for the whole output
/// less the shards kept from an interrupted run, plus a 5 % margin.
fn bytes_needed(estimate: u64, kept: u64) -> u64 {
    let rest = estimate.saturating_sub(kept);
    rest.saturating_add(rest / 20)
}

/// Of `items` (source files), the share a JPEG pack would store as they
/// are, judged from the headers of up to [`SPACE_SAMPLE`] of them spread
/// evenly: files larger than a re-encode are either the right size at a
/// high quality (kept whole) or larger images (re-encoded smaller), and
/// only their headers tell which.
fn passthrough_share<'a>(
    opts: &PackOptions,
    source: &Source,
    items: impl Iterator<Item = &'a Item>,
) -> f64 {
    let items: Vec<&Item> = items.collect();
    if items.is_empty() {
        return 0.0;
    }
    let step = items.len().div_ceil(SPACE_SAMPLE);
    let (mut seen, mut kept) = (0usize, 0usize);
    for it in items.iter().step_by(step) {
        let Payload::Entry(i) = it.payload else {
            continue;
        };
        let Ok(bytes) = source.read(&source.entries()[i]) else {
            continue;
        };
        seen += 1;
        let whole = crate::image::JpegHeader::parse(&bytes)
            .is_ok_and(|h| stored_whole(&h, opts.width, opts.height, opts.progressive));
        kept += usize::from(whole);
    }
    if seen == 0 {
        return 0.0;
    }
    kept as f64 / seen as f64
}

/// How many files [`passthrough_share`] reads.
const SPACE_SAMPLE: usize = 32;

/// Bytes the whole output is expected to take.
fn output_estimate(
    opts: &PackOptions,
    source: &Source,
    splits: &BTreeMap<Split, Vec<Item>>,
) -> u64 {
    let pixels = u64::from(opts.height) * u64::from(opts.width);
    let raw = pixels * 3;
    // A re-encoded image takes about 0.5 bytes per pixel at q95.
    let reencoded = pixels / 2 + 1024;
    let entries = source.entries();
    let larger = |it: &&Item| match it.payload {
        Payload::Entry(i) => entries[i].size > reencoded,
        Payload::Idx { .. } => false,
    };
    // A passed-through JPEG costs its own size, a re-encoded one
    // `reencoded`: the smaller of the two for a file of at most that
    // size; for a larger one, which of the two a sample of them says.
    let share = if opts.encoding == Encoding::Jpeg {
        passthrough_share(opts, source, splits.values().flatten().filter(larger))
    } else {
        0.0
    };
    let mut estimate = 0u64;
    for it in splits.values().flatten() {
        estimate += it.key.len() as u64 + 8;
        estimate += match (opts.encoding, &it.payload) {
            (Encoding::Raw, _) => raw,
            (Encoding::Jpeg, Payload::Entry(i)) if entries[*i].size > reencoded => {
                let size = entries[*i].size as f64;
                (share * size + (1.0 - share) * reencoded as f64) as u64
            }
            (Encoding::Jpeg, Payload::Entry(i)) => entries[*i].size,
            (Encoding::Jpeg, Payload::Idx { .. }) => reencoded,
        };
    }
    estimate
}

/// Refuse to start when the estimated output cannot fit on the disk.
fn check_disk_space(
    opts: &PackOptions,
    source: &Source,
    splits: &BTreeMap<Split, Vec<Item>>,
    kept: u64,
) -> Result<(), PackError> {
    let estimate = output_estimate(opts, source, splits);
    let raw = u64::from(opts.height) * u64::from(opts.width) * 3;
    let Some(free) = free_space(&opts.out) else {
        return Ok(());
    };
    let needed = bytes_needed(estimate, kept);
    if needed > free {
        let hint = if opts.encoding == Encoding::Raw {
            format!(
                " Raw pixels take {raw} bytes per image; --encoding jpeg stores them about 8x smaller."
            )
        } else {
            String::new()
        };
        let resumed = if kept > 0 {
            format!(
                " (after the {} of shards kept from the interrupted run)",
                human_bytes(kept)
            )
        } else {
            String::new()
        };
        return Err(PackError::NoSpace(format!(
            "{}: the output needs about {} more{resumed} but only {} are free.{hint}",
            opts.out.display(),
            human_bytes(needed),
            human_bytes(free)
        )));
    }
    Ok(())
}

struct Context<'a> {
    source: &'a Source,
    plan: &'a Plan,
    cfg: EncodeConfig,
    out: &'a Path,
    state_dir: &'a Path,
    fingerprint: &'a str,
    shard_rows: usize,
    row_group_rows: usize,
    pool: &'a rayon::ThreadPool,
    /// Items per chunk and chunks that may wait for the writer
    /// ([`pipeline_shape`]).
    chunk: usize,
    queue: usize,
    bar: &'a indicatif::ProgressBar,
    /// Image buffers of written row groups, for the workers to decode into.
    spare: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept in `spare`.
    spare_cap: usize,
}

/// Bytes of raw rows kept for reuse: about what the pipeline holds between
/// pool and writer at the defaults (6 chunks of 64 raw 224² images and a
/// row group), so steady state allocates nothing.
const SPARE_BYTES: usize = 80 << 20;

/// Chunks of entries announced to the OS ([`Source::prefetch`]) ahead of
/// the pool: the one it is about to encode and the next ones, so that on an
/// archive larger than the page cache the reads of a whole chunk or two are
/// in flight together instead of one page fault at a time.
const PREFETCH_CHUNKS: usize = 3;

/// Most encoded chunks that may wait for the writer. Deep enough that a
/// writer stalled for a moment (a block write to the device, a shard's
/// footer) does not stop the pool; 6 × 64 raw 224² images ≈ 58 MB.
const QUEUE_CHUNKS: usize = 6;

/// Budget of encoded bytes that may wait for the writer (the queued
/// chunks): it keeps memory independent of the thread count and image size.
/// The defaults (2 to 16 threads, 224² raw) stay within it at full depth.
const QUEUE_BYTES: usize = 192 << 20;

/// Items per chunk and queue depth for `threads` workers and images of
/// `image_bytes` once encoded. A chunk holds 32 items per thread when they
/// fit a sixth of [`QUEUE_BYTES`], else fewer, but never fewer than one per
/// thread (so every worker has an image); the queue is as deep as the budget
/// allows, 1 to [`QUEUE_CHUNKS`]. Queued bytes are thus at most
/// `max(QUEUE_BYTES, threads × image_bytes)`.
fn pipeline_shape(threads: usize, image_bytes: usize) -> (usize, usize) {
    let image_bytes = image_bytes.max(1);
    let fit = QUEUE_BYTES / QUEUE_CHUNKS / image_bytes;
    let chunk = (threads * 32).min(fit.max(threads)).max(1);
    let queue = (QUEUE_BYTES / (chunk * image_bytes)).clamp(1, QUEUE_CHUNKS);
    (chunk, queue)
}

/// One split on its way through the writer.
struct SplitWrite<'i> {
    split: Split,
    items: &'i [Item],
    meta: ShardMeta,
    writer: Option<ShardWriter>,
    /// Rejections since the last finished shard (recorded with the next one).
    pending_rejects: Vec<RejectedEntry>,
    /// Passthrough rows of the open shard.
    passthrough: u64,
    done: SplitDone,
}

struct SplitDone {
    records: Vec<ShardRecord>,
    rejected: Vec<RejectedEntry>,
    passthrough: u64,
    written: u64,
}

type Outcome = Result<Encoded, String>;

impl Context<'_> {
    fn encode(&self, item: &Item) -> Outcome {
        match item.payload {
            Payload::Entry(i) => {
                let bytes = self.source.read(&self.source.entries()[i])?;
                // A poisoned lock only means another worker panicked; a
                // fresh buffer is as good.
                let spare = self
                    .spare
                    .lock()
                    .ok()
                    .and_then(|mut v| v.pop())
                    .unwrap_or_default();
                encode_file(bytes, &self.cfg, spare)
            }
            Payload::Idx { set, index } => {
                let s = &self.plan.idx_sets[set];
                let pixels = s
                    .image(index)
                    .ok_or_else(|| format!("IDX image {index} is out of range"))?;
                encode_pixels(pixels, s.width, s.height, s.channels, &self.cfg)
            }
        }
    }

    fn meta(&self, split: Split) -> ShardMeta {
        ShardMeta {
            format_version: FORMAT_VERSION,
            encoding: self.cfg.encoding,
            height: self.cfg.height,
            width: self.cfg.width,
            split,
            num_classes: self.plan.classes.len() as u32,
            plan: self.fingerprint.to_string(),
        }
    }

    /// Shards finished by an earlier run of the same plan, in order.
    fn resumable(&self, split: Split) -> Result<Vec<ShardState>, PackError> {
        let mut states = Vec::new();
        loop {
            let name = shard_file_name(split, states.len());
            let path = self.state_dir.join(format!("{name}.json"));
            let Ok(bytes) = std::fs::read(&path) else {
                break;
            };
            let Ok(state) = serde_json::from_slice::<ShardState>(&bytes) else {
                break;
            };
            if state.plan != self.fingerprint {
                return Err(PackError::Usage(format!(
                    "{} holds shards of a different pack run; rerun with --force to replace them",
                    self.out.display()
                )));
            }
            // A shard's flush runs in the background and is awaited only
            // before the manifest, so after a crash of the machine (not just
            // of the process) a listed shard may hold garbage: keep it only
            // when its bytes hash as recorded.
            let intact = std::fs::metadata(self.out.join(&name))
                .is_ok_and(|m| m.len() == state.record.bytes)
                && file_checksum(&self.out.join(&name), &|_| {})
                    .is_ok_and(|(_, h)| h == state.record.xxh3_128);
            if !intact {
                break;
            }
            states.push(state);
        }
        Ok(states)
    }

    /// Packs every split through one pipeline: the pool encodes chunks of
    /// the splits in order while this thread writes, so the pool does not
    /// idle at a split boundary while the writer drains its queue.
    fn run_splits(&self, splits: &[(Split, &[Item])]) -> Result<Vec<SplitDone>, PackError> {
        let mut states = Vec::with_capacity(splits.len());
        // First item of each split this run encodes (after the shards that a
        // resumed run keeps).
        let mut starts = Vec::with_capacity(splits.len());
        for &(split, items) in splits {
            let kept = self.resumable(split)?;
            let pos = kept.last().map_or(0, |s| s.next_input).min(items.len());
            let mut done = SplitDone {
                records: Vec::new(),
                rejected: Vec::new(),
                passthrough: 0,
                written: 0,
            };
            for s in kept {
                done.records.push(s.record);
                done.rejected.extend(s.rejected);
                done.passthrough += s.passthrough;
            }
            self.bar.inc(pos as u64);
            starts.push(pos);
            states.push(SplitWrite {
                split,
                items,
                meta: self.meta(split),
                writer: None,
                pending_rejects: Vec::new(),
                passthrough: 0,
                done,
            });
        }

        std::thread::scope(|scope| -> Result<(), PackError> {
            let (tx, rx) = crossbeam_channel::bounded::<(usize, usize, Vec<Outcome>)>(self.queue);
            scope.spawn(move || {
                for (si, &(_, items)) in splits.iter().enumerate() {
                    let mut start = starts[si];
                    // Entries up to here have been announced to the OS.
                    let mut announced = start;
                    while start < items.len() {
                        let end = (start + self.chunk).min(items.len());
                        let ahead = (start + PREFETCH_CHUNKS * self.chunk).min(items.len());
                        for item in &items[announced..ahead] {
                            if let Payload::Entry(i) = item.payload {
                                self.source.prefetch(&self.source.entries()[i]);
                            }
                        }
                        announced = ahead;
                        let outs: Vec<Outcome> = self.pool.install(|| {
                            items[start..end]
                                .par_iter()
                                .map(|it| self.encode(it))
                                .collect()
                        });
                        if tx.send((si, start, outs)).is_err() {
                            return; // the writer stopped on an error
                        }
                        start = end;
                    }
                }
            });
            let mut open = 0;
            for (si, start, outs) in rx {
                // Splits arrive in order: the ones before `si` are complete.
                while open < si {
                    self.close_split(&mut states[open])?;
                    open += 1;
                }
                let st = &mut states[si];
                for (k, out) in outs.into_iter().enumerate() {
                    self.write_one(st, start + k, out)?;
                }
            }
            for st in &mut states[open..] {
                self.close_split(st)?;
            }
            Ok(())
        })?;
        Ok(states.into_iter().map(|s| s.done).collect())
    }

    /// Appends item `i` of a split to its current shard (or records its
    /// rejection), closing the shard when it is full.
    fn write_one(&self, st: &mut SplitWrite<'_>, i: usize, out: Outcome) -> Result<(), PackError> {
        let item = &st.items[i];
        self.bar.inc(1);
        let bytes = match out {
            Ok(Encoded::Passthrough(b)) => {
                st.passthrough += 1;
                b
            }
            Ok(Encoded::Converted(b)) => b,
            Err(reason) => {
                st.pending_rejects.push(RejectedEntry {
                    key: item.key.clone(),
                    split: Some(st.split),
                    reason,
                });
                return Ok(());
            }
        };
        let index = st.done.records.len();
        let w = match st.writer.as_mut() {
            Some(w) => w,
            None => st.writer.insert(ShardWriter::create(
                self.out,
                index,
                &st.meta,
                self.row_group_rows,
            )?),
        };
        w.push(item.label, bytes, &item.key)?;
        let spent = w.take_spent();
        if !spent.is_empty() {
            if let Ok(mut spare) = self.spare.lock() {
                let room = self.spare_cap.saturating_sub(spare.len());
                spare.extend(spent.into_iter().take(room));
            }
        }
        if w.rows() as usize >= self.shard_rows {
            if let Some(w) = st.writer.take() {
                self.finish_shard(st, w, i + 1)?;
            }
        }
        Ok(())
    }

    /// Finishes a split's last shard; rejections after it go to the split's
    /// list (a resumed run encodes them again, as before this split ended).
    fn close_split(&self, st: &mut SplitWrite<'_>) -> Result<(), PackError> {
        if let Some(w) = st.writer.take() {
            self.finish_shard(st, w, st.items.len())?;
        }
        st.done.rejected.append(&mut st.pending_rejects);
        Ok(())
    }

    fn finish_shard(
        &self,
        st: &mut SplitWrite<'_>,
        writer: ShardWriter,
        next_input: usize,
    ) -> Result<(), PackError> {
        let w = writer.finish()?;
        let record = ShardRecord {
            file: w.file.clone(),
            split: st.split,
            rows: w.rows,
            row_groups: w.row_groups,
            bytes: w.bytes,
            xxh3_128: w.xxh3_128,
        };
        let state = ShardState {
            plan: self.fingerprint.to_string(),
            record: record.clone(),
            next_input,
            rejected: std::mem::take(&mut st.pending_rejects),
            passthrough: std::mem::take(&mut st.passthrough),
        };
        let path = self.state_dir.join(format!("{}.json", w.file));
        let json = serde_json::to_vec(&state).map_err(|e| PackError::Usage(e.to_string()))?;
        write_replace(&path, &json, false)?;
        let done = &mut st.done;
        done.records.push(record);
        done.rejected.extend(state.rejected);
        done.passthrough += state.passthrough;
        done.written += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sizes_follow_image_bytes() {
        assert_eq!(default_row_group_rows(Encoding::Raw, 224, 224), 111);
        assert_eq!(default_row_group_rows(Encoding::Jpeg, 224, 224), 891);
        assert_eq!(default_shard_rows(Encoding::Raw, 224, 224), 12 * 111);
        assert_eq!(default_row_group_rows(Encoding::Raw, 32, 32), 5461);
        assert_eq!(default_row_group_rows(Encoding::Jpeg, 8192, 8192), 1);
    }

    #[test]
    fn queued_bytes_stay_within_the_budget() {
        // The defaults keep their shape: 32 items per thread, 6 deep.
        assert_eq!(pipeline_shape(2, 224 * 224 * 3), (64, 6));
        for threads in [1, 2, 16, 64, 256] {
            for side in [32usize, 224, 1024, 4096, 8192] {
                let image = side * side * 3;
                let (chunk, queue) = pipeline_shape(threads, image);
                assert!(chunk >= threads.min(32 * threads) && queue >= 1);
                let queued = chunk * queue * image;
                assert!(
                    queued <= QUEUE_BYTES.max(threads * image),
                    "{threads} threads, {side}²: {chunk} × {queue} × {image} = {queued}"
                );
            }
        }
    }

    /// Noise JPEGs at quality 100 are far larger than a q95 re-encode of
    /// their size: kept whole they cost their own size, re-encoded (a
    /// larger source) about 0.5 bytes per output pixel; the estimate tells
    /// which from their headers.
    #[test]
    fn the_estimate_follows_what_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut total = 0u64;
        for i in 0..40 {
            let side = 32u32;
            let noise: Vec<u8> = (0..side * side * 3)
                .map(|_| rand::Rng::random::<u8>(&mut rng))
                .collect();
            let jpeg =
                crate::image::encode_jpeg(&noise, side, side, 100, Subsampling::S444).unwrap();
            let key = format!("train/c{}/{i}.jpg", i % 2);
            total += jpeg.len() as u64 + key.len() as u64 + 8;
            let path = src.join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, jpeg).unwrap();
        }
        let source = Source::open(&src, None).unwrap();
        let plan = layout::plan(&source, None, None, &ListColumns::default()).unwrap();
        let splits = permute(plan.items, 0);
        let mut opts = PackOptions::new(&src, dir.path().join("out"));
        (opts.width, opts.height) = (32, 32);
        // Each file is kept as it is: the estimate is their sizes.
        let kept = output_estimate(&opts, &source, &splits);
        assert!(
            total > 40 * (32 * 32 / 2 + 1024) * 2,
            "noise too small: {total}"
        );
        assert_eq!(kept, total);
        // At 16×16 every one is re-encoded, at about 0.5 bytes a pixel.
        (opts.width, opts.height) = (16, 16);
        let keys: u64 = splits
            .values()
            .flatten()
            .map(|it| it.key.len() as u64 + 8)
            .sum();
        assert_eq!(
            output_estimate(&opts, &source, &splits),
            keys + 40 * (16 * 16 / 2 + 1024)
        );
    }

    #[test]
    fn kept_shards_reduce_the_space_needed() {
        assert_eq!(bytes_needed(1000, 0), 1050);
        assert_eq!(bytes_needed(1000, 600), 420);
        assert_eq!(bytes_needed(1000, 5000), 0);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::create_dir_all(out.join(STATE_DIR)).unwrap();
        let state = |file: &str, bytes: u64, plan: &str| ShardState {
            plan: plan.into(),
            record: ShardRecord {
                file: file.into(),
                split: Split::Train,
                rows: 1,
                row_groups: 1,
                bytes,
                xxh3_128: String::new(),
            },
            next_input: 1,
            rejected: Vec::new(),
            passthrough: 0,
        };
        for (i, (bytes, plan)) in [(100u64, "p"), (50, "p"), (7, "other")].iter().enumerate() {
            let name = shard_file_name(Split::Train, i);
            std::fs::write(out.join(&name), vec![0u8; *bytes as usize]).unwrap();
            let json = serde_json::to_vec(&state(&name, *bytes, plan)).unwrap();
            std::fs::write(out.join(STATE_DIR).join(format!("{name}.json")), json).unwrap();
        }
        assert_eq!(kept_bytes(out, "p"), 150);
        assert_eq!(kept_bytes(out, "q"), 0);
    }
}
