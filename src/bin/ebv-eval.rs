//! `ebv-eval --checkpoint C --shards DIR [--split val] [--json]`: top-1,
//! top-5 and loss of a trained model over a split. C is a run folder (its
//! latest checkpoint), a checkpoint folder or a `model.safetensors` (also
//! torchvision's, with `--arch`/`--head`). Shards whose class names differ
//! from the run's are refused unless `--ignore-class-names`. Exit 0 ok, 2
//! error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use ebv::data::Loader;
use ebv::kernels::KernelImpl;
use ebv::shard::{ShardSet, Split};
use ebv::train::{evaluate, open_model, ModelFlags, Recipe};

#[derive(Parser, Debug)]
#[command(
    name = "ebv-eval",
    version,
    about = "Evaluate a trained model on shards"
)]
struct Args {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    shards: PathBuf,
    #[arg(long, default_value = "val")]
    split: Split,
    #[command(flatten)]
    model: ModelFlags,
    /// Batch size (default: the run's eval batch, else 256).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    workers: Option<usize>,
    /// Evaluate even when the shards' class names differ from the run's
    /// classes.tsv (same count): labels then may not mean the classes the
    /// model learned.
    #[arg(long)]
    ignore_class_names: bool,
    #[arg(long)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

fn run(a: &Args) -> anyhow::Result<serde_json::Value> {
    let dev = Device::Cpu;
    let over = a.model.overrides();
    let loaded = open_model(&a.checkpoint, &over, &dev, KernelImpl::Ebv)
        .with_context(|| format!("opening {}", a.checkpoint.display()))?;
    for o in &loaded.overridden {
        eprintln!("ebv-eval: note: {o} overrides the model's own setting");
    }
    let mut recipe = loaded.recipe.clone().unwrap_or_else(|| {
        let mut r = Recipe::default();
        r.data.eval_resize = 256;
        r.data.eval_batch = 256;
        r
    });
    if let Some(s) = a.model.size {
        recipe.data.size = s;
    }
    if let Some(r) = a.model.eval_resize {
        recipe.data.eval_resize = r;
    }
    if let Some(b) = a.batch {
        recipe.data.eval_batch = b;
    }
    if let Some(w) = a.workers {
        recipe.data.workers = w;
    }
    a.model
        .check_sizes(recipe.data.size, recipe.data.eval_resize)?;
    let set = Arc::new(ShardSet::open(&a.shards)?);
    let classes = set.classes().len();
    if classes != loaded.model.spec().classes {
        anyhow::bail!(
            "{} has {classes} classes but the model was built for {}",
            a.shards.display(),
            loaded.model.spec().classes
        );
    }
    if let Some(names) = &loaded.classes {
        if let Some(i) = names.iter().zip(set.classes()).position(|(a, b)| a != b) {
            let what = format!(
                "label {i} is {:?} in {}'s classes.tsv but {:?} in the run's",
                set.classes()[i],
                a.shards.display(),
                names[i]
            );
            if !a.ignore_class_names {
                anyhow::bail!(
                    "{what}: these shards label other classes than the model was trained on (pass --ignore-class-names to evaluate anyway)"
                );
            }
            eprintln!("ebv-eval: warning: {what}; evaluating anyway (--ignore-class-names)");
        }
    }
    if set.num_rows(a.split) == 0 {
        anyhow::bail!("{}: no rows in split {}", a.shards.display(), a.split);
    }
    let mut cfg = recipe.eval_loader();
    cfg.split = a.split;
    let loader = Loader::new(set, cfg, 0)?;
    let m = evaluate(&loaded.model, &loader, &dev, a.quiet)?;
    if m.skipped > 0 {
        // Said on stderr whatever the output format: the figures are over
        // the readable images only.
        eprintln!(
            "ebv-eval: warning: {} of the {} {} images could not be read and were left out \
             (first: {}); ebv-stats --verify checks the shards",
            m.skipped,
            m.images + m.skipped,
            a.split,
            m.first_skipped.as_deref().unwrap_or("?")
        );
    }
    if !a.json {
        let left_out = if m.skipped > 0 {
            format!(", {} unreadable left out", m.skipped)
        } else {
            String::new()
        };
        ebv::progress::out_line(format!(
            "{} on {} ({} images{left_out}): top-1 {:.4}  top-5 {:.4}  loss {:.4}",
            loaded.weights.display(),
            a.split,
            m.images,
            m.top1,
            m.top5,
            m.loss
        ))
        .context("writing to stdout")?;
    }
    Ok(serde_json::json!({
        "checkpoint": loaded.weights,
        "split": a.split.to_string(),
        "top1": m.top1, "top5": m.top5, "loss": m.loss,
        "images": m.images, "skipped": m.skipped,
    }))
}

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    let args = Args::parse();
    ebv::train::configure_runtime();
    match run(&args) {
        Ok(v) => {
            if args.json {
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                if let Err(e) = ebv::progress::out_line(text) {
                    eprintln!("ebv-eval: error: writing to stdout: {e}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ebv-eval: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
