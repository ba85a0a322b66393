//! `ebv-stats SHARDS [--json] [--deep] [--verify] [--plot out.png]`: what is
//! inside an output folder of `ebv-pack`, and whether it is intact.
//! Exit 0 ok, 1 a check requested by `--verify` failed, 2 error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ebv::stats::{render_text, run, StatsOptions, DEFAULT_MIN_IMAGES};

#[derive(Parser, Debug)]
#[command(
    name = "ebv-stats",
    version,
    about = "Inspect and verify the Parquet shards written by ebv-pack"
)]
struct Args {
    /// Output folder of ebv-pack (manifest.json, classes.tsv, shards).
    #[arg(default_value = "shards")]
    shards: PathBuf,
    /// Print every figure as one JSON document on stdout (no text).
    #[arg(long)]
    json: bool,
    /// Decode every image: per-channel mean/std, exact duplicates, decode failures.
    #[arg(long)]
    deep: bool,
    /// Check every shard's checksum (XXH3-128), page structure and counts against manifest.json; exit 1 on any problem.
    #[arg(long)]
    verify: bool,
    /// Write a PNG with the class-size histograms and a grid of sample images.
    #[arg(long, value_name = "OUT.png")]
    plot: Option<PathBuf>,
    /// Report classes with fewer than K images.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_MIN_IMAGES)]
    min_images: u64,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    let args = Args::parse();
    let opts = StatsOptions {
        deep: args.deep,
        verify: args.verify,
        plot: args.plot.clone(),
        min_images: args.min_images,
        quiet: args.quiet,
    };
    let report = match run(&args.shards, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ebv-stats: error: {e}");
            return ExitCode::from(2);
        }
    };
    let written = if args.json {
        serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|s| ebv::progress::out_line(s).map_err(|e| format!("stdout: {e}")))
    } else {
        ebv::progress::out_text(render_text(&report)).map_err(|e| format!("stdout: {e}"))
    };
    if let Err(e) = written {
        eprintln!("ebv-stats: error: {e}");
        return ExitCode::from(2);
    }
    if report.failed() {
        let problems = report.verify.as_ref().map_or(0, |v| v.problems.len());
        let failures: u64 = report
            .deep
            .as_ref()
            .map_or(0, |d| d.splits.values().map(|s| s.failures).sum());
        let damaged: u64 = report.deep.as_ref().map_or(0, |d| {
            d.splits.values().map(|s| s.damaged.unwrap_or(0)).sum()
        });
        eprintln!(
            "ebv-stats: verification failed: {problems} problem(s), {failures} image(s) that do \
             not decode, {damaged} with damaged coded data"
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
