//! `ebv-predict --checkpoint C IMAGE... [--top-k 5] [--json]`: the top-k
//! classes of image files, with names and cosines (EBV) or logits (FC).
//! A failing image is reported and the others still predicted; exit 0 when
//! all succeeded, 2 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use ebv::data::{IMAGENET_MEAN, IMAGENET_STD};
use ebv::kernels::KernelImpl;
use ebv::train::{open_model, predict, ModelFlags};

#[derive(Parser, Debug)]
#[command(name = "ebv-predict", version, about = "Top-k classes of image files")]
struct Args {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    #[command(flatten)]
    model: ModelFlags,
    #[arg(long)]
    json: bool,
}

fn run(a: &Args) -> anyhow::Result<(Vec<serde_json::Value>, bool)> {
    if a.top_k == 0 {
        anyhow::bail!("--top-k 0: must be at least 1");
    }
    let dev = Device::Cpu;
    let over = a.model.overrides();
    let loaded = open_model(&a.checkpoint, &over, &dev, KernelImpl::Ebv)
        .with_context(|| format!("opening {}", a.checkpoint.display()))?;
    for o in &loaded.overridden {
        eprintln!("ebv-predict: note: {o} overrides the model's own setting");
    }
    let (size, resize, mean, std) = match &loaded.recipe {
        Some(r) => (r.data.size, r.data.eval_resize, r.data.mean, r.data.std),
        None => (224, 256, IMAGENET_MEAN, IMAGENET_STD),
    };
    let size = a.model.size.unwrap_or(size);
    let resize = a.model.eval_resize.unwrap_or(resize);
    a.model.check_sizes(size, resize)?;
    let mut out = Vec::new();
    let mut failed = false;
    for img in &a.images {
        match predict(&loaded, img, size, resize, (mean, std), a.top_k, &dev) {
            Ok(p) => {
                if !a.json {
                    let mut text = p.image.clone();
                    for (i, (c, name, s)) in p.top.iter().enumerate() {
                        text.push_str(&format!(
                            "\n  {}. {name} (class {c}): {} {s:.4}",
                            i + 1,
                            p.score
                        ));
                    }
                    ebv::progress::out_line(text).context("writing to stdout")?;
                }
                out.push(serde_json::to_value(&p)?);
            }
            Err(e) => {
                failed = true;
                eprintln!("ebv-predict: {e}");
                out.push(serde_json::json!({"image": img, "error": e.to_string()}));
            }
        }
    }
    Ok((out, failed))
}

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    let args = Args::parse();
    ebv::train::configure_runtime();
    match run(&args) {
        Ok((v, failed)) => {
            if args.json {
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                if let Err(e) = ebv::progress::out_line(text) {
                    eprintln!("ebv-predict: error: writing to stdout: {e}");
                    return ExitCode::from(2);
                }
            }
            if failed {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ebv-predict: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
