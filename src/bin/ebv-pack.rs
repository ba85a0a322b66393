//! `ebv-pack SOURCE [--out shards/]`: pack a zip or folder of labelled
//! images into Parquet shards (format v1). Exit 0 ok, 1 entries were
//! rejected under `--strict`, 2 error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ebv::image::{ResizeMode, Subsampling};
use ebv::pack::{pack, LayoutKind, ListColumns, PackOptions, PackSummary, Progressive, Verify};
use ebv::shard::Encoding;

#[derive(Parser, Debug)]
#[command(
    name = "ebv-pack",
    version,
    about = "Pack a zip or folder of labelled images into Parquet shards"
)]
struct Args {
    /// A .zip file or a folder: class folders (train/CLASS/FILE,
    /// val/CLASS/FILE), list files (train.csv, val.csv) or IDX files.
    source: PathBuf,
    /// Output folder for shards, manifest.json and classes.tsv.
    #[arg(long, default_value = "shards")]
    out: PathBuf,
    /// Force a layout instead of detecting it: class-folders, list-files, idx.
    #[arg(long)]
    layout: Option<LayoutKind>,
    /// How images are stored: jpeg (source bytes kept when already HxW) or raw RGB8.
    #[arg(long, default_value = "jpeg")]
    encoding: Encoding,
    /// Target size, WxH or a single number for a square.
    #[arg(long, default_value = "224", value_parser = parse_size)]
    size: (u32, u32),
    /// stretch (each axis to size, the paper's) or crop (shorter side, then centre crop).
    #[arg(long, default_value = "stretch")]
    resize: ResizeMode,
    /// JPEG quality for re-encoded images.
    #[arg(long, default_value_t = 95)]
    quality: u8,
    /// Chroma sampling of re-encoded images: 420 (halved both ways, averaged;
    /// libjpeg's and Pillow's default) or 444 (full).
    #[arg(long, default_value = "420", value_name = "420|444")]
    subsampling: Subsampling,
    /// Seed of the permutation that mixes classes across shards.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per shard [default: 12 row groups, about 192 MiB].
    #[arg(long)]
    shard_rows: Option<usize>,
    /// Rows per Parquet row group [default: about 16 MiB of images; 891 rows of
    /// 224x224 JPEG, 111 raw].
    #[arg(long)]
    row_group_rows: Option<usize>,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Progressive source JPEGs of the right size: keep (stored untouched) or
    /// sequential (re-encoded once, so that every epoch decodes them ~2.5x faster).
    #[arg(long, default_value = "keep", value_name = "keep|sequential")]
    progressive: Progressive,
    /// Check of JPEGs: header (markers of passed-through ones, and the scan order of
    /// progressive ones) or decode (a full decode of passed-through ones, and every
    /// JPEG's coded data checked as libjpeg reads it).
    #[arg(long, default_value = "header")]
    verify: Verify,
    /// Largest width*height decoded; larger images are rejected (decompression bombs).
    #[arg(long, default_value_t = 178_956_970)]
    max_pixels: u64,
    /// File with one class name per line in label order (IDX sources, or to rename classes).
    #[arg(long)]
    class_names: Option<PathBuf>,
    /// The image column of CSV lists: a header name or a 1-based number
    /// [default: a header's image/path/file column, else the first].
    #[arg(long, value_name = "NAME|N")]
    image_column: Option<String>,
    /// The label column of CSV lists: a header name or a 1-based number
    /// [default: a header's label/class/category/target column, else the second;
    /// needed when rows have more than two fields and no header names it].
    #[arg(long, value_name = "NAME|N")]
    label_column: Option<String>,
    /// Exit with code 1 when any entry was rejected.
    #[arg(long)]
    strict: bool,
    /// Discard an existing or interrupted pack in --out and start over.
    #[arg(long)]
    force: bool,
    /// No progress bar and no summary on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Print the summary as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("bad size '{s}' (expected 224 or 256x192)"))
    };
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => {
            let n = parse(s)?;
            Ok((n, n))
        }
    }
}

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    ebv::memory::keep_large_buffers_in_heap();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ebv-pack: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut opts = PackOptions::new(&args.source, &args.out);
    opts.layout = args.layout;
    opts.encoding = args.encoding;
    (opts.width, opts.height) = args.size;
    opts.resize = args.resize;
    opts.quality = args.quality;
    opts.subsampling = args.subsampling;
    opts.seed = args.seed;
    opts.shard_rows = args.shard_rows;
    opts.row_group_rows = args.row_group_rows;
    opts.threads = args.threads;
    opts.progressive = args.progressive;
    opts.verify = args.verify;
    opts.max_pixels = args.max_pixels;
    opts.class_names = args.class_names.clone();
    opts.columns = ListColumns {
        image: args.image_column.clone(),
        label: args.label_column.clone(),
    };
    opts.force = args.force;
    opts.quiet = args.quiet;
    let summary = pack(&opts).with_context(|| format!("packing {}", args.source.display()))?;
    if args.json {
        ebv::progress::out_line(serde_json::to_string_pretty(&summary)?)
            .context("writing the summary to stdout")?;
    }
    if !args.quiet {
        print_summary(&summary, &args.out);
    }
    if args.strict && summary.rejected > 0 {
        eprintln!(
            "ebv-pack: --strict: {} entries were rejected (see manifest.json)",
            summary.rejected
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(s: &PackSummary, out: &std::path::Path) {
    if s.already_complete {
        eprintln!(
            "{} is already complete for these options ({} shards); nothing to do (--force repacks)",
            out.display(),
            s.shards_reused
        );
    }
    eprintln!("layout {}, {} classes", s.layout, s.num_classes);
    for note in &s.notes {
        eprintln!("note: {note}");
    }
    eprintln!(
        "{:<6} {:>10} {:>7} {:>12} {:>9} {:>12} {:>10}",
        "split", "rows", "shards", "bytes", "rejected", "passthrough", "converted"
    );
    for (split, t) in &s.splits {
        eprintln!(
            "{:<6} {:>10} {:>7} {:>12} {:>9} {:>12} {:>10}",
            split.as_str(),
            t.rows,
            t.shards,
            t.bytes,
            t.rejected,
            t.passthrough,
            t.converted
        );
    }
    if s.rejected > 0 {
        eprintln!(
            "rejected {} entries (listed with reasons in manifest.json):",
            s.rejected
        );
        for (reason, n) in &s.rejected_by_reason {
            eprintln!("  {n:>8}  {reason}");
        }
    }
    for warning in &s.warnings {
        eprintln!("warning: {warning}");
    }
    if !s.already_complete {
        eprintln!(
            "wrote {} shards ({} kept from an earlier run), {:.1} MB in {:.2} s: {:.0} images/s",
            s.shards_written,
            s.shards_reused,
            s.bytes_written as f64 / 1e6,
            s.wall_s,
            s.images_per_s
        );
    }
}
