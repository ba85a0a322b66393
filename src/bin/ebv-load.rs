//! `ebv-load --shards DIR [--split train] [--batches N] [--json]`: run the
//! streaming loader alone for an epoch (or N batches) and print images/s,
//! so users can see whether input is their training bottleneck. The batches
//! are built exactly as training builds them and then dropped.
//! Exit 0 ok, 2 error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ebv::data::{default_workers, Augment, Loader, LoaderConfig, OnError, SamplerState, Shuffle};
use ebv::shard::{ShardSet, Split};

#[derive(Parser, Debug)]
#[command(
    name = "ebv-load",
    version,
    about = "Run the streaming loader alone and report images/s"
)]
struct Args {
    /// Output folder of ebv-pack (manifest.json, classes.tsv, shards).
    #[arg(long)]
    shards: PathBuf,
    #[arg(long, default_value = "train")]
    split: Split,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Worker threads [default: all cores but one].
    #[arg(long)]
    workers: Option<usize>,
    /// Finished batches allowed to wait for the consumer.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Output side (size x size).
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Training augmentation: RandomResizedCrop, flip, RandomErasing (p 0.1).
    #[arg(long, overrides_with = "no_aug")]
    aug: bool,
    /// Evaluation transform instead: resize shorter side to --eval-resize, centre crop.
    #[arg(long = "no-aug", overrides_with = "aug")]
    no_aug: bool,
    /// Eval resize of the shorter side (0: --size, the identity for size x size shards).
    #[arg(long, default_value_t = 0)]
    eval_resize: u32,
    /// Batch-level mixup, Beta(0.2, 0.2).
    #[arg(long)]
    mixup: bool,
    /// Batch-level cutmix, Beta(1, 1) (with --mixup: one of the two per batch).
    #[arg(long)]
    cutmix: bool,
    /// none, global, or buffer:N [default: global for train; none for val,
    /// as evaluation reads it].
    #[arg(long)]
    shuffle: Option<Shuffle>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First epoch.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// Epochs to run, from --epoch on (the buffer pool carries over, as in
    /// training, so later epochs show the steady state).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: u64,
    #[arg(long, default_value_t = 0)]
    rank: u32,
    #[arg(long, default_value_t = 1)]
    world: u32,
    /// Stop after N batches in all (default: every batch of every epoch).
    #[arg(long)]
    batches: Option<u64>,
    /// Keep the last, short batch [default for val, as evaluation does].
    #[arg(long, conflicts_with = "drop_last")]
    keep_last: bool,
    /// Drop the last, short batch [default for train, as training does].
    #[arg(long)]
    drop_last: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// CPU seconds of the whole process (all threads).
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    let set = Arc::new(
        ShardSet::open(&args.shards)
            .with_context(|| format!("opening {}", args.shards.display()))?,
    );
    let encoding = set
        .split_shards(args.split)
        .next()
        .map(|s| s.meta().encoding.to_string())
        .unwrap_or_default();
    let aug = !args.no_aug && args.aug;
    let mut augment = if aug {
        Augment::train(args.size)
    } else {
        Augment::eval(args.size, args.eval_resize)
    };
    if let Err((field, why)) = augment.check() {
        anyhow::bail!("--{}: {why}", field.replace('_', "-"));
    }
    augment.mixup_alpha = args.mixup.then_some(0.2);
    augment.cutmix_alpha = args.cutmix.then_some(1.0);
    let workers = args.workers.unwrap_or_else(default_workers);
    // Each split is read the way its consumer reads it: training shuffles,
    // drops the short last batch and replaces unreadable images;
    // evaluation reads every image once, in file order, and leaves
    // unreadable ones out.
    let val = args.split == Split::Val;
    let shuffle = args
        .shuffle
        .unwrap_or(if val { Shuffle::None } else { Shuffle::Global });
    let drop_last = if args.keep_last || args.drop_last {
        args.drop_last
    } else {
        !val
    };
    let cfg = LoaderConfig {
        split: args.split,
        batch: args.batch,
        workers,
        prefetch: args.prefetch,
        shuffle,
        rank: args.rank,
        world: args.world,
        drop_last,
        augment,
        on_error: if val { OnError::Skip } else { OnError::Replace },
    };
    let loader = Loader::new(Arc::clone(&set), cfg, args.seed)?;
    if loader.batches_per_epoch() == 0 {
        anyhow::bail!(
            "the {} split has {} rows{}, fewer than one --batch of {}{}",
            args.split,
            set.num_rows(args.split),
            if args.world > 1 {
                format!(" split over --world {}", args.world)
            } else {
                String::new()
            },
            args.batch,
            if drop_last {
                " (--keep-last keeps a short last batch)"
            } else {
                ""
            }
        );
    }
    let end_epoch = args
        .epoch
        .checked_add(args.epochs)
        .context("--epoch + --epochs is past the last epoch number")?;
    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    let mut images = 0u64;
    let mut batches = 0u64;
    let (mut replaced, mut skipped) = (0u64, 0u64);
    let mut errors = Vec::new();
    let limit = args.batches.unwrap_or(u64::MAX);
    for epoch in args.epoch..end_epoch {
        if batches >= limit {
            break;
        }
        let state = SamplerState {
            seed: args.seed,
            epoch,
            position: 0,
        };
        let mut iter = loader.epoch(state)?;
        while batches < limit {
            let Some(batch) = iter.next() else { break };
            let batch = batch?;
            for e in &batch.replaced {
                let what = if val { "left out" } else { "replaced" };
                eprintln!("ebv-load: {what} a sample: {e}");
            }
            images += batch.len() as u64;
            batches += 1;
        }
        let summary = iter.summary();
        replaced += summary.replaced;
        skipped += summary.skipped;
        errors.extend(summary.errors.iter().cloned());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_s() - cpu0;
    Ok(serde_json::json!({
        "shards": args.shards.display().to_string(),
        "split": args.split.to_string(),
        "encoding": encoding,
        "aug": aug,
        "mixup": args.mixup,
        "cutmix": args.cutmix,
        "shuffle": shuffle.to_string(),
        "drop_last": drop_last,
        "workers": workers,
        "batch": args.batch,
        "size": args.size,
        "batches": batches,
        "images": images,
        "wall_s": wall,
        "cpu_s": cpu,
        "images_per_s": images as f64 / wall,
        "images_per_cpu_s": images as f64 / cpu,
        "output_bytes_per_s": images as f64 * 3.0 * f64::from(args.size).powi(2) * 4.0 / wall,
        "epochs": args.epochs,
        "replaced": replaced,
        "skipped": skipped,
        "errors": errors,
    }))
}

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            let text = if args.json {
                report.to_string()
            } else {
                format!(
                    "{} images in {} batches, {:.2} s: {:.0} images/s ({:.0} per CPU-second), {} replaced, {} left out",
                    report["images"],
                    report["batches"],
                    report["wall_s"].as_f64().unwrap_or(0.0),
                    report["images_per_s"].as_f64().unwrap_or(0.0),
                    report["images_per_cpu_s"].as_f64().unwrap_or(0.0),
                    report["replaced"],
                    report["skipped"],
                )
            };
            if let Err(e) = ebv::progress::out_line(text) {
                eprintln!("ebv-load: error: writing to stdout: {e}");
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ebv-load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
