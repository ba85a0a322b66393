//! The figures behind `ebv-stats`: what is inside an output folder of
//! `ebv-pack`, how it is balanced, and whether it is intact.
//!
//! - [`summary`]: the default figures, from the manifest, footers and label
//!   column only (no image byte is read);
//! - [`deep`]: `--deep`, every image decoded (mean/std, duplicates,
//!   failures);
//! - [`crate::shard::verify_dir`]: `--verify`, checksums and counts;
//! - [`plot`]: `--plot`, a PNG with the class-size histograms and samples.
//!
//! [`run`] ties them together and returns one [`Report`], which serialises
//! to the JSON document of `ebv-stats --json` and renders to the text
//! tables ([`render_text`]). The JSON layout is versioned by
//! [`JSON_VERSION`]; keys are only ever added with a version bump.

pub mod deep;
mod font;
pub mod plot;
pub mod summary;
mod text;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::shard::{Access, Manifest, ReadError, ShardSet, Split, VerifyReport, MANIFEST_FILE};

pub use deep::{deep_scan, DeepReport, DeepSplit, JpegMix};
pub use summary::{summarize, Summary};
pub use text::render_text;

/// Version of the JSON document's layout (`"ebv_stats"` key).
pub const JSON_VERSION: u32 = 3;

/// Default `--min-images`.
pub const DEFAULT_MIN_IMAGES: u64 = 10;

/// Errors that stop `ebv-stats` (exit code 2). Each names its file.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}: cannot write the plot: {detail}")]
    Plot { path: PathBuf, detail: String },
}

/// What to compute.
#[derive(Debug, Clone)]
pub struct StatsOptions {
    pub deep: bool,
    pub verify: bool,
    pub plot: Option<PathBuf>,
    pub min_images: u64,
    /// No progress bars.
    pub quiet: bool,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            deep: false,
            verify: false,
            plot: None,
            min_images: DEFAULT_MIN_IMAGES,
            quiet: false,
        }
    }
}

/// Everything `ebv-stats` found: the JSON document of `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`JSON_VERSION`].
    pub ebv_stats: u32,
    pub dir: String,
    /// `null` only when `--verify` found the folder too damaged to open.
    pub summary: Option<Summary>,
    /// `null` without `--deep`.
    pub deep: Option<DeepReport>,
    /// `null` without `--verify`.
    pub verify: Option<VerifyReport>,
    /// The PNG written by `--plot`, else `null`.
    pub plot: Option<String>,
    pub wall_s: f64,
}

impl Report {
    /// Whether a requested check failed (exit code 1): `--verify` found a
    /// problem, or, with `--verify --deep`, an image failed to decode or
    /// its coded data is damaged.
    pub fn failed(&self) -> bool {
        match &self.verify {
            None => false,
            Some(v) => {
                !v.ok
                    || self.deep.as_ref().is_some_and(|d| {
                        d.splits
                            .values()
                            .any(|s| s.failures > 0 || s.damaged.is_some_and(|n| n > 0))
                    })
            }
        }
    }
}

/// What of the shard folder `dir` a plot written to `path` would replace:
/// its manifest, its class list or a shard (by name in the folder, or as
/// the same file through a link).
fn plot_over_input(dir: &Path, path: &Path) -> Option<String> {
    let is_input = |name: &str| {
        name == MANIFEST_FILE || name == crate::shard::CLASSES_FILE || name.ends_with(".parquet")
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let name = path.file_name()?.to_str()?;
    let folder = canonical(crate::file_kind::folder_of(path));
    if is_input(name) && folder.is_some() && folder == canonical(dir) {
        return Some(name.to_string());
    }
    // The same file under another name (a link into the folder).
    std::fs::metadata(path).ok()?;
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = e.file_name().to_str()?.to_string();
        (is_input(&n) && crate::file_kind::same_file(&e.path(), path)).then_some(n)
    })
}

/// Compute the report for the output folder `dir`.
///
/// Without `--verify`, a folder that cannot be opened (missing or damaged
/// shard, …) is an error. With it, the problems are the report: `run`
/// returns `Ok` with `verify.ok == false` and, if the folder cannot be
/// opened at all, `summary == None`.
pub fn run(dir: &Path, opts: &StatsOptions) -> Result<Report, StatsError> {
    let start = Instant::now();
    if let Some(path) = &opts.plot {
        if let Some(input) = plot_over_input(dir, path) {
            return Err(StatsError::Plot {
                path: path.clone(),
                detail: format!(
                    "it is the folder's own {input}, which the plot would replace; write the \
                     plot elsewhere"
                ),
            });
        }
    }
    let mut report = Report {
        ebv_stats: JSON_VERSION,
        dir: dir.display().to_string(),
        summary: None,
        deep: None,
        verify: None,
        plot: None,
        wall_s: 0.0,
    };
    if opts.verify {
        // The manifest sizes the progress bar; verify_dir reads it again
        // (it is small) so that it stays usable on its own.
        let manifest = Manifest::load(&dir.join(MANIFEST_FILE)).map_err(ReadError::from)?;
        let total: u64 = manifest.shards.iter().map(|r| r.bytes).sum();
        let bar = crate::progress::bar(total, "B", opts.quiet);
        bar.set_message("verifying");
        let done = AtomicU64::new(0);
        let v = crate::shard::verify_dir(dir, &|n| {
            let d = done.fetch_add(n, Ordering::Relaxed) + n;
            bar.set_position(d);
        })?;
        bar.finish_and_clear();
        report.verify = Some(v);
    }
    let verify_failed = report.verify.as_ref().is_some_and(|v| !v.ok);

    let set = match ShardSet::open(dir) {
        Ok(set) => set,
        Err(_) if verify_failed => {
            report.wall_s = start.elapsed().as_secs_f64();
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    let summary = match summarize(&set, opts.min_images) {
        Ok(s) => s,
        Err(_) if verify_failed => {
            report.wall_s = start.elapsed().as_secs_f64();
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    if opts.deep {
        // Every row group once, front to back: full readahead, and the
        // pages may go as soon as they are decoded.
        for split in Split::ALL {
            set.advise(split, Access::Sequential);
        }
        let rows: u64 = set.shards().iter().map(|s| s.num_rows()).sum();
        let bar = crate::progress::bar(rows, "img", opts.quiet);
        bar.set_message("decoding");
        // Under --verify the decode is a check: the coded data too.
        let d = deep_scan(&set, opts.verify, &|n| bar.inc(n));
        bar.finish_and_clear();
        match d {
            Ok(d) => report.deep = Some(d),
            // A page that --verify already reported as corrupt.
            Err(_) if verify_failed => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &opts.plot {
        plot::write_plot(&set, &summary, path)?;
        report.plot = Some(path.display().to_string());
    }
    report.summary = Some(summary);
    report.wall_s = start.elapsed().as_secs_f64();
    Ok(report)
}
