//! `ebv-train --shards DIR [--config pipelines/X.toml] [--ebv FILE] --out runs/NAME`:
//! train a ResNet against EBV targets (or an FC baseline) on `ebv-pack`
//! shards. `--resume` continues a run exactly; Ctrl-C stops with a
//! checkpoint. `--bench-steps N --synthetic` times training steps on
//! random data instead; `--check-kernels` checks the training kernels on
//! the device against f64 CPU references. Exit 0 ok, 1 a kernel check
//! failed, 2 error, 130 interrupted (checkpoint written).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use ebv::train::dist::{launch_local, rank_args, Collective, Solo, World};
#[cfg(feature = "cuda")]
use ebv::train::dist::{NcclGroup, RENDEZVOUS_ENV, RENDEZVOUS_TIMEOUT_ENV};
use ebv::train::{
    bench_steps, check_precision, install_interrupt_handler, train_with, Recipe, TrainOptions,
};

#[derive(Parser, Debug)]
#[command(
    name = "ebv-train",
    version,
    about = "Train a ResNet against EBV targets"
)]
struct Args {
    /// Output folder of ebv-pack (train and val shards).
    #[arg(long, required_unless_present_any = ["synthetic", "check_kernels"])]
    shards: Option<PathBuf>,
    /// Recipe (TOML); values it leaves out take the paper's ImageNet defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// EBV basis file from `ebv-basis generate` (EBV head).
    #[arg(long)]
    ebv: Option<PathBuf>,
    /// Run folder: config, metrics, checkpoints, summary.
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Start from these weights (torchvision names; mismatched shapes such
    /// as another class count's fc are skipped).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Override a recipe value: section.key=value (repeatable), e.g. optim.lr=0.1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Shorthands for common overrides.
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    arch: Option<String>,
    #[arg(long)]
    width: Option<usize>,
    /// ebv or fc.
    #[arg(long)]
    head: Option<String>,
    #[arg(long)]
    tau: Option<f64>,
    #[arg(long)]
    size: Option<u32>,
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// ebv (this crate's kernels: its CPU ops; on CUDA, cuDNN and its own CUDA kernels) or candle (candle's own ops).
    #[arg(long)]
    kernels: Option<String>,
    /// f32, or bf16 mixed precision (GPUs; f32 master weights).
    #[arg(long)]
    precision: Option<String>,
    /// cpu or cuda:K (cuda needs a build with --features cuda). Default:
    /// cpu, or cuda:LOCAL_RANK when started as one rank of several.
    #[arg(long)]
    device: Option<String>,
    /// Train data-parallel on N GPUs of this host: starts one process per
    /// GPU (RANK/WORLD_SIZE/LOCAL_RANK set, NCCL id through a rendezvous
    /// file in --out). Needs a build with --features cuda. For several
    /// hosts, start the ranks with your launcher instead (README).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    gpus: Option<usize>,
    /// Stop with a checkpoint after this many steps in all.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Time N training steps on random data (with --synthetic) and exit.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    bench_steps: Option<usize>,
    /// Check the training kernels on --device in --precision (f32 or bf16)
    /// against this crate's CPU kernels in f64: conv2d (cuDNN on a GPU),
    /// max-pool and BatchNorm, output and gradients, both --kernels; on a
    /// GPU also time ResNet-50's conv layers. Exit 1 when a check fails.
    #[arg(long)]
    check_kernels: bool,
    /// Use random images and labels instead of shards (benchmarks).
    #[arg(long)]
    synthetic: bool,
    /// Classes and EBV dimension of the synthetic benchmark.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// [default: the recipe's model.dim, else 1000]
    #[arg(long)]
    dim: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn device(spec: &str) -> anyhow::Result<Device> {
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let k = spec
        .strip_prefix("cuda:")
        .or_else(|| (spec == "cuda").then_some("0"))
        .with_context(|| format!("--device {spec}: expected cpu or cuda:K"))?;
    let k: usize = k
        .parse()
        .with_context(|| format!("--device {spec}: bad GPU index"))?;
    let dev = Device::new_cuda(k).with_context(|| format!("--device {spec}"))?;
    // Only a matter of speed: training is the same without it.
    if let Err(e) = ebv::kernels::keep_device_memory(&dev) {
        eprintln!(
            "ebv-train: warning: --device {spec}: could not keep freed GPU memory pooled: {e}"
        );
    }
    Ok(dev)
}

fn overrides(a: &Args) -> Vec<String> {
    let mut o = a.set.clone();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            o.push(format!("{k}={v}"));
        }
    };
    add("schedule.epochs", a.epochs.map(|v| v.to_string()));
    add("data.batch", a.batch.map(|v| v.to_string()));
    add("optim.lr", a.lr.map(|v| format!("{v:?}")));
    add("model.arch", a.arch.clone().map(|v| format!("{v:?}")));
    add("model.width", a.width.map(|v| v.to_string()));
    add("model.head", a.head.clone().map(|v| format!("{v:?}")));
    add("model.tau", a.tau.map(|v| format!("{v:?}")));
    add("data.size", a.size.map(|v| v.to_string()));
    add("data.workers", a.workers.map(|v| v.to_string()));
    add("run.seed", a.seed.map(|v| v.to_string()));
    add("run.kernels", a.kernels.clone().map(|v| format!("{v:?}")));
    add(
        "run.precision",
        a.precision.clone().map(|v| format!("{v:?}")),
    );
    o
}

/// `--gpus N`: run this command as N ranks; the launcher's exit code.
fn launch(a: &Args, n: usize) -> anyhow::Result<u8> {
    if !cfg!(feature = "cuda") {
        anyhow::bail!("--gpus {n}: data-parallel training runs over NCCL and needs a build with --features cuda");
    }
    if a.bench_steps.is_some() {
        anyhow::bail!("--gpus: --bench-steps times one process; run it without --gpus");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let rendezvous = a.out.join(format!(".rendezvous-{}", std::process::id()));
    let exe = std::env::current_exe().context("cannot find this executable to start the ranks")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // Ctrl-C reaches every rank directly; the launcher waits for them.
    install_interrupt_handler();
    let code = launch_local(&exe, &rank_args(&args), n, &rendezvous)?;
    Ok(u8::try_from(code).unwrap_or(2))
}

/// The collective of a multi-rank run: NCCL on the rank's GPU.
#[cfg(feature = "cuda")]
fn join_group(world: World, dev: &Device) -> anyhow::Result<Box<dyn Collective>> {
    let path = std::env::var_os(RENDEZVOUS_ENV).map(PathBuf::from).with_context(|| {
        format!("{RENDEZVOUS_ENV} is not set: the ranks of a multi-rank run need a rendezvous file on a file system they share (see the README)")
    })?;
    let timeout = match std::env::var(RENDEZVOUS_TIMEOUT_ENV) {
        Ok(v) => v
            .parse::<u64>()
            .with_context(|| format!("{RENDEZVOUS_TIMEOUT_ENV}={v}: expected seconds"))?,
        Err(_) => 600,
    };
    let group = NcclGroup::join(world, dev, &path, std::time::Duration::from_secs(timeout))?;
    Ok(Box::new(group))
}

#[cfg(not(feature = "cuda"))]
fn join_group(world: World, _dev: &Device) -> anyhow::Result<Box<dyn Collective>> {
    anyhow::bail!(
        "this process is rank {} of {} (RANK/WORLD_SIZE or Slurm variables are set), but multi-rank training runs over NCCL and needs a build with --features cuda",
        world.rank,
        world.size
    )
}

/// `--check-kernels`: the report, and whether a check failed.
fn check_kernels(
    a: &Args,
    recipe: &Recipe,
    dev: &Device,
) -> anyhow::Result<(serde_json::Value, u8)> {
    check_precision(recipe, dev)?;
    let dtype = recipe.run.precision.compute_dtype();
    let mut report = ebv::kernels::check_kernels(dev, dtype).context("--check-kernels")?;
    if dev.is_cuda() {
        report.timings =
            ebv::kernels::time_convs(dev, dtype, 32, 5).context("--check-kernels timing")?;
    }
    if !a.json {
        let error = |e: &Option<String>| {
            e.as_ref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        };
        let mut text = String::new();
        for r in &report.rows {
            let verdict = match (r.ok, &r.error) {
                (false, _) => "FAIL",
                (true, Some(_)) => "n/a",
                (true, None) => "ok",
            };
            text.push_str(&format!(
                "{verdict:<4} {:<11} {:<34} {:<7} {:<7} {:.2e} (tol {:.0e}){}\n",
                r.op,
                r.case,
                r.kernels,
                r.output,
                r.rel_diff,
                r.tol,
                error(&r.error)
            ));
        }
        for t in &report.timings {
            text.push_str(&format!(
                "time {:<44} {:<7} {:>9.3} ms fwd+bwd{}\n",
                t.case,
                t.kernels,
                t.ms_forward_backward,
                error(&t.error)
            ));
        }
        text.push_str(&format!(
            "{} checks on {} in {}: {} failed",
            report.rows.len(),
            report.device,
            report.dtype,
            report.failures
        ));
        ebv::progress::out_line(text).context("writing to stdout")?;
    }
    let code = u8::from(report.failures > 0);
    Ok((serde_json::to_value(&report)?, code))
}

/// `world`: this process's place in a multi-rank job (None for one process).
/// Returns the report and the exit code (0 ok, 1 a check failed, 130
/// interrupted).
fn run(a: &Args, world: Option<World>) -> anyhow::Result<(serde_json::Value, u8)> {
    let world = world.filter(|w| w.size > 1);
    // Said before a device is chosen, so that the error names the cause
    // (no cuda in this build), not a `cuda:K` device the user never gave.
    if let Some(w) = world {
        if !cfg!(feature = "cuda") {
            return Err(join_group(w, &Device::Cpu).err().unwrap_or_else(|| {
                anyhow::anyhow!("multi-rank training needs a build with --features cuda")
            }));
        }
    }
    if a.gpus == Some(1)
        && a.device
            .as_deref()
            .is_some_and(|d| d != "cuda:0" && d != "cuda")
    {
        anyhow::bail!(
            "--gpus 1 trains on cuda:0, but --device {} was given: use one of the two",
            a.device.as_deref().unwrap_or_default()
        );
    }
    if a.init.is_some() && a.resume {
        anyhow::bail!(
            "--init starts a new run from a weights file; --resume continues the run's own \
             checkpoint (its weights would win): use one of the two"
        );
    }
    let dev = match (&a.device, world) {
        (Some(spec), _) => device(spec)?,
        (None, Some(w)) => device(&format!("cuda:{}", w.local_rank))?,
        (None, None) if a.gpus == Some(1) => device("cuda:0")?,
        (None, None) => Device::Cpu,
    };
    let sets = overrides(a);
    // A resumed run re-reads its own recipe; the flags must agree with it.
    let recipe_path = match (&a.config, a.resume) {
        (None, true) => Some(a.out.join("config.toml")),
        (p, _) => p.clone(),
    };
    let mut sets = sets;
    if let Some(size) = a.size.filter(|_| !a.resume) {
        // `--size` alone would keep the recipe's eval_resize (232 for 224)
        // and evaluate a small centre of each image: scale it along, unless
        // the user set it too.
        let asked = |k: &str| sets.iter().any(|o| o.trim_start().starts_with(k));
        if !asked("data.eval_resize") {
            let own: Vec<String> = sets
                .iter()
                .filter(|o| !o.trim_start().starts_with("data.size"))
                .cloned()
                .collect();
            let base = Recipe::load(recipe_path.as_deref(), &own)?;
            let (s0, e0) = (base.data.size, base.data.eval_resize);
            if e0 != 0 && s0 != 0 && s0 != size {
                let e =
                    ((f64::from(size) * f64::from(e0) / f64::from(s0)).round() as u32).max(size);
                sets.push(format!("data.eval_resize={e}"));
                if !a.quiet && !a.json {
                    eprintln!(
                        "ebv-train: --size {size}: data.eval_resize {e0} → {e} (the recipe's \
                         {e0}/{s0}; --set data.eval_resize=N to choose)"
                    );
                }
            }
        }
    }
    let recipe = Recipe::load(recipe_path.as_deref(), &sets)?;
    if a.check_kernels {
        return check_kernels(a, &recipe, &dev);
    }
    if let Some(steps) = a.bench_steps {
        if !a.synthetic {
            anyhow::bail!("--bench-steps runs on random data: add --synthetic");
        }
        // The recipe's d unless asked otherwise: a recipe that names one
        // refuses any other (its model.dim must match the basis).
        let dim = match (a.dim, recipe.model.dim) {
            (Some(d), r) if r != 0 && r != d => anyhow::bail!(
                "--dim {d} contradicts the recipe's model.dim = {r} (leave --dim out, or --set model.dim={d})"
            ),
            (Some(d), _) => d,
            (None, 0) => 1000,
            (None, d) => d,
        };
        let report = bench_steps(&recipe, a.classes, dim, steps.max(1), &dev)?;
        if !a.json {
            eprintln!(
                "{} {} head, batch {}, {}x{}, kernels {}, {} threads: {:.3} s/step ({:.1} img/s), peak RSS {:.2} GiB",
                report.arch,
                report.head,
                report.batch,
                report.size,
                report.size,
                report.kernels,
                report.threads,
                report.mean_step_seconds,
                report.images_per_second,
                report.peak_rss_bytes as f64 / (1u64 << 30) as f64
            );
        }
        return Ok((serde_json::to_value(&report)?, 0));
    }
    let shards = a
        .shards
        .clone()
        .context("--shards is required (or --synthetic with --bench-steps)")?;
    install_interrupt_handler();
    let group: Box<dyn Collective> = match world {
        Some(w) => join_group(w, &dev)?,
        None => Box::new(Solo),
    };
    let primary = group.rank() == 0;
    if let (Some(p), ebv::model::HeadKind::Fc) = (&a.ebv, recipe.model.head) {
        if primary && !a.quiet && !a.json {
            eprintln!(
                "ebv-train: note: --ebv {} is not used: the fc head learns its own classifier",
                p.display()
            );
        }
    }
    let opts = TrainOptions {
        recipe,
        shards,
        ebv: a.ebv.clone(),
        out: a.out.clone(),
        resume: a.resume,
        device: dev,
        quiet: a.quiet || !primary,
        max_steps: a.max_steps,
        init: a.init.clone(),
    };
    let outcome = train_with(&opts, group.as_ref())?;
    let s = &outcome.summary;
    if !a.json && !opts.quiet {
        if let Some(e) = &s.last_epoch {
            let val = e
                .val
                .as_ref()
                .map(|v| format!(", val top-1 {:.4}, top-5 {:.4}", v.top1, v.top5))
                .unwrap_or_default();
            eprintln!(
                "ebv-train: {} steps in {:.1} s ({:.1} img/s); last epoch {}: train loss {:.4}{val}",
                s.steps,
                s.train_seconds,
                s.images_per_second,
                e.epoch + 1,
                e.train_loss
            );
        }
        eprintln!("ebv-train: run folder {}", outcome.run.display());
    }
    // One summary per job: rank 0's.
    let value = if primary {
        serde_json::to_value(s)?
    } else {
        serde_json::Value::Null
    };
    let code = if s.interrupted && ebv::train::interrupted() {
        130
    } else {
        0
    };
    Ok((value, code))
}

fn main() -> ExitCode {
    ebv::progress::quiet_broken_pipe();
    let args = Args::parse();
    ebv::train::configure_runtime();
    let world = match World::from_env() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("ebv-train: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Started by no launcher: `--gpus N` makes this process the launcher.
    if let Some(n) = args.gpus.filter(|&n| n > 1 && world.is_none()) {
        return match launch(&args, n) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("ebv-train: error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(&args, world) {
        Ok((value, code)) => {
            if args.json && !value.is_null() {
                let text = serde_json::to_string_pretty(&value).unwrap_or_default();
                if let Err(e) = ebv::progress::out_line(text) {
                    eprintln!("ebv-train: error: writing to stdout: {e}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("ebv-train: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
