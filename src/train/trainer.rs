//! The training loop: shards → loader → model → loss → optimiser, with
//! per-step schedule, metrics, per-epoch evaluation, checkpoints and exact
//! resume.
//!
//! Invariants:
//! - every check that can fail on the user's input (recipe, shards, basis
//!   file, class count, dimension, run folder) runs before the first step;
//! - the batches depend only on (seed, epoch, position) (see `data`), the
//!   model's initialisation only on the seed, and the kernels are
//!   deterministic at a given thread count, so a run resumed from any
//!   checkpoint logs exactly what the uninterrupted run logs;
//! - the EBV matrix lives outside the optimiser: it has no gradient and no
//!   state, and it is never part of a checkpoint's model file;
//! - an interrupt (Ctrl-C) or `--max-steps` ends the current step, writes a
//!   checkpoint at that position and returns; nothing is lost;
//! - `summary.json` is written after the session's last checkpoint; a
//!   resume with nothing to train keeps it only if it describes the latest
//!   checkpoint, and rebuilds it otherwise (a kill in between), so it never
//!   stays an earlier session's for good.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{Loader, SampleError, SamplerState};
use crate::kernels::KernelImpl;
use crate::model::{load_basis, Classifier, HeadKind, ModelSpec, ParamKind};
use crate::shard::{ShardSet, Split};

use super::checkpoint::{self, DataIdentity, TrainState};
use super::config::{OptimName, Recipe};
use super::dist::{
    broadcast_from_rank0, first_divergence, Collective, GradBuckets, Solo, DEFAULT_BUCKET_BYTES,
};
use super::eval::evaluate;
use super::loss::{hard_cross_entropy, topk_correct};
use super::metrics::{best_epoch, read_log, EpochMetrics, MetricsLog, Running, Summary};
use super::optim::{clip_grad_norm, AdamWConfig, Optimizer, Param, SgdConfig};
use super::plot::write_curves;
use super::prefetch::Prefetch;
use super::schedule::Schedule;
use super::TrainError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Process set-up for training and inference; call first thing in `main`.
/// Activations and gradients (tens of MB each at ResNet-50 sizes) stay in
/// the heap instead of a fresh `mmap` per tensor, whose first-touch page
/// zeroing took ~20% of a ResNet-50 step (12% faster steps measured,
/// BENCHMARKS.md).
pub fn configure_runtime() {
    crate::memory::keep_large_buffers_in_heap();
}

/// Activation size (elements of the stem's output for the whole batch)
/// below which candle's element-wise ops run on the calling thread.
const SMALL_ACTIVATIONS: usize = 1 << 21;

/// Size candle's own element-wise thread pool for this model, unless the
/// user set `CANDLE_NUM_THREADS`. The pool's workers spin while waiting:
/// for small activations (the Fashion-MNIST demo: 0.8M elements) the
/// wake-ups cost more than they save and the spinning competes with the
/// rayon pool of the convolution kernels (0.200 vs 0.288 s/step on 2
/// cores), while at ResNet-50 sizes (6.4M) the pool is 17% faster
/// (BENCHMARKS.md). Must run before the first tensor operation: candle
/// reads the variable once.
fn size_elementwise_pool(recipe: &Recipe, per_rank_batch: usize) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    let side = recipe.data.size as usize;
    let side = if recipe.model.small_stem {
        side
    } else {
        side.div_ceil(2)
    };
    let elements = per_rank_batch * recipe.model.width * side * side;
    if elements < SMALL_ACTIVATIONS {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Make Ctrl-C (SIGINT) stop training at the end of the current step with a
/// checkpoint, instead of killing the process. A second Ctrl-C exits at
/// once.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)"
        );
    });
}

/// Whether an interrupt was requested.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What `ebv-train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub recipe: Recipe,
    pub shards: PathBuf,
    /// The EBV basis file (required for the EBV head).
    pub ebv: Option<PathBuf>,
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    pub quiet: bool,
    /// Stop with a checkpoint once this many steps have been taken in all.
    pub max_steps: Option<u64>,
    /// Start from these weights (torchvision names); tensors whose shape
    /// differs from the model's (e.g. `fc` for another class count) are
    /// left at their initialisation.
    pub init: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run: PathBuf,
    pub summary: Summary,
}

/// Names of the files in a run folder.
const CONFIG: &str = "config.toml";
/// The run folder's copy of the basis: byte for byte the file given, so
/// that its hash is the one the checkpoints record; named after its format.
const BASIS: &str = "ebv.safetensors";
const BASIS_NPY: &str = "ebv.npy";

/// The basis a run folder keeps (`ebv.safetensors`, or `ebv.npy` when the
/// run was given a NumPy file), if any.
pub fn run_basis(run: &Path) -> Option<PathBuf> {
    [BASIS, BASIS_NPY]
        .iter()
        .map(|name| run.join(name))
        .find(|p| p.is_file())
}

/// The name of the run folder's copy of `src`: a NumPy file keeps its
/// format's extension rather than pose as safetensors.
fn basis_copy_name(src: &Path) -> Result<&'static str, TrainError> {
    use std::io::Read;
    let mut magic = [0u8; 6];
    let n = std::fs::File::open(src)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(|e| TrainError::io(src, e))?;
    Ok(if magic[..n] == *b"\x93NUMPY" {
        BASIS_NPY
    } else {
        BASIS
    })
}
const CLASSES: &str = "classes.tsv";
const SUMMARY: &str = "summary.json";
const CURVES: &str = "curves.png";
/// The run folder's files written through `write_replace`, whose
/// temporaries a killed run leaves.
const RUN_FILES: [&str; 6] = [
    CONFIG,
    CLASSES,
    "metrics.jsonl",
    "model-best.safetensors",
    SUMMARY,
    CURVES,
];

fn model_spec(
    recipe: &Recipe,
    classes: usize,
    basis: Option<&Tensor>,
) -> Result<ModelSpec, TrainError> {
    let dim = match (recipe.model.head, basis) {
        (HeadKind::Ebv, Some(b)) => {
            let (n, d) = b.dims2()?;
            if n != classes {
                return Err(TrainError::Setup(format!(
                    "class count mismatch: the shards have {classes} classes but the EBV file has {n} rows"
                )));
            }
            if recipe.model.dim != 0 && recipe.model.dim != d {
                return Err(TrainError::Setup(format!(
                    "dimension mismatch: the recipe asks for model.dim = {} but the EBV file has d = {d}",
                    recipe.model.dim
                )));
            }
            Some(d)
        }
        _ => None,
    };
    Ok(ModelSpec {
        backbone: recipe.backbone(),
        head: recipe.model.head,
        classes,
        dim,
        tau: recipe.model.tau,
    })
}

fn build_optimizer(recipe: &Recipe, model: &Classifier) -> Optimizer {
    let o = &recipe.optim;
    let params: Vec<Param> = model
        .store
        .trainable()
        .map(|e| Param {
            name: e.name.clone(),
            var: e.var.clone(),
            weight_decay: e.kind == ParamKind::Weight || o.decay_bn_and_bias,
        })
        .collect();
    match o.name {
        OptimName::Sgd => Optimizer::sgd(
            params,
            SgdConfig {
                momentum: o.momentum,
                nesterov: o.nesterov,
                weight_decay: o.weight_decay,
                dampening: 0.0,
            },
        ),
        OptimName::Adamw => Optimizer::adamw(
            params,
            AdamWConfig {
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: o.weight_decay,
            },
        ),
    }
}

/// Cross-entropy of a (possibly mixed) batch: λ·CE(y_a) + (1−λ)·CE(y_b),
/// which equals the cross-entropy against the smoothed soft target
/// λ·onehot(a) + (1−λ)·onehot(b) without building the B×C target.
fn batch_loss(
    logits: &Tensor,
    labels: &Tensor,
    mix_labels: &Tensor,
    lambda: f64,
    smoothing: f64,
) -> candle_core::Result<Tensor> {
    let own = hard_cross_entropy(logits, labels, smoothing)?;
    if lambda >= 1.0 {
        return Ok(own);
    }
    let other = hard_cross_entropy(logits, mix_labels, smoothing)?;
    (own * lambda)? + (other * (1.0 - lambda))?
}

/// One optimiser step; returns (loss, top-1 correct against own labels).
#[allow(clippy::too_many_arguments)]
fn step(
    model: &Classifier,
    optim: &mut Optimizer,
    sync: &GradSync,
    x: &Tensor,
    labels: &Tensor,
    mix_labels: &Tensor,
    lambda: f64,
    smoothing: f64,
    clip: f64,
    lr: f64,
) -> Result<(f64, u64), TrainError> {
    let (loss, logits, chunked_correct) = if model.head().class_chunk().is_some() {
        let features = model.features_t(x, true)?;
        let (loss, correct) = model
            .head()
            .chunked_loss(&features, labels, mix_labels, lambda, smoothing)?;
        (loss, None, correct)
    } else {
        let logits = model.forward_t(x, true)?;
        let loss = batch_loss(&logits, labels, mix_labels, lambda, smoothing)?;
        (loss, Some(logits.detach()), 0)
    };
    // Reading a value back waits for the device: do it once the backward is queued behind the forward, so a GPU
    // never idles between the two. A non-finite loss still stops the step before the update.
    let mut grads = loss.backward()?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(TrainError::Other(format!(
            "the loss is {value}: training diverged (lower optim.lr or set optim.clip_grad_norm)"
        )));
    }
    let correct = match logits {
        Some(logits) => topk_correct(&logits, labels, &[1])?[0],
        None => chunked_correct,
    };
    sync.buckets
        .all_reduce_mean(sync.vars, &mut grads, sync.comm)?;
    if clip > 0.0 {
        let norm = clip_grad_norm(&mut grads, optim.params(), clip)?;
        if !norm.is_finite() {
            return Err(TrainError::Other(format!(
                "the gradient norm is {norm}: training diverged (lower optim.lr)"
            )));
        }
    }
    optim.step(&grads, lr)?;
    if sync.comm.size() == 1 {
        return Ok((value, correct));
    }
    // Logs show the whole group's batch: mean loss, summed hits.
    let both = Tensor::new(&[value as f32, correct as f32], x.device())?;
    let sum = sync.comm.all_reduce_sum(&both)?.to_vec1::<f32>()?;
    let size = sync.comm.size() as f64;
    Ok((f64::from(sum[0]) / size, sum[1].round() as u64))
}

/// What a step needs to average gradients over the group.
struct GradSync<'a> {
    comm: &'a dyn Collective,
    buckets: &'a GradBuckets,
    vars: &'a [Var],
}

/// A stop asked for on any rank (Ctrl-C reaches each process on its own)
/// stops every rank at the same step.
fn stop_requested(comm: &dyn Collective, device: &Device) -> Result<bool, TrainError> {
    Ok(comm.any(interrupted(), device)?)
}

fn write_log(log: &mut Option<MetricsLog>, value: &serde_json::Value) -> Result<(), TrainError> {
    match log {
        Some(l) => l.write(value),
        None => Ok(()),
    }
}

/// Checks and run-folder set-up shared by fresh and resumed runs.
struct Setup {
    set: Arc<ShardSet>,
    basis: Option<Tensor>,
    spec: ModelSpec,
}

/// `model.class_chunk`, an error naming the key for the FC head.
fn set_class_chunk(model: &mut Classifier, recipe: &Recipe) -> Result<(), TrainError> {
    model
        .set_class_chunk(recipe.model.class_chunk)
        .map_err(|e| TrainError::Recipe {
            origin: "model.class_chunk".into(),
            detail: e.to_string(),
        })
}

/// bf16 needs the GPU: say so before anything is built.
pub fn check_precision(recipe: &Recipe, device: &Device) -> Result<(), TrainError> {
    recipe
        .run
        .precision
        .check_device(device)
        .map_err(|detail| TrainError::Recipe {
            origin: "run.precision".into(),
            detail,
        })
}

/// `resumed`: the run folder and its latest checkpoint's state, whose
/// training data the shards must be.
fn setup(opts: &TrainOptions, resumed: Option<&TrainState>) -> Result<Setup, TrainError> {
    let r = &opts.recipe;
    r.validate()?;
    check_precision(r, &opts.device)?;
    let set = Arc::new(ShardSet::open(&opts.shards)?);
    if let Some(saved) = resumed {
        check_resume_data(&opts.out, saved, &set, &opts.shards)?;
    }
    let classes = set.classes().len();
    if set.num_rows(Split::Train) == 0 {
        return Err(TrainError::Setup(format!(
            "{}: no training rows (no train-*.parquet shards)",
            opts.shards.display()
        )));
    }
    let basis = match r.model.head {
        HeadKind::Ebv => {
            let path = opts.ebv.as_ref().ok_or_else(|| {
                TrainError::Setup(
                    "the ebv head needs the EBV basis file: pass --ebv FILE (make one with `ebv-basis generate`), or set model.head = \"fc\"".into(),
                )
            })?;
            if !path.is_file() {
                return Err(TrainError::Setup(format!(
                    "EBV basis file {} does not exist (make one with `ebv-basis generate --classes {classes} --dim D --out {}`)",
                    path.display(),
                    path.display()
                )));
            }
            Some(load_basis(path, &opts.device)?)
        }
        HeadKind::Fc => None,
    };
    let spec = model_spec(r, classes, basis.as_ref())?;
    Ok(Setup { set, basis, spec })
}

/// A resumed run must read the data it was trained on: other classes
/// would change what its labels mean, another split size what its
/// loader position means, and either would go on silently.
fn check_resume_data(
    run: &Path,
    saved: &TrainState,
    set: &ShardSet,
    shards: &Path,
) -> Result<(), TrainError> {
    let here = DataIdentity::of(set);
    match &saved.data {
        Some(was) if *was != here => Err(TrainError::Setup(format!(
            "--resume: {} was trained on {was}, but --shards {} holds {here}; resume with the run's own shards, or start a new --out",
            run.display(),
            shards.display()
        ))),
        Some(_) => Ok(()),
        None => {
            // A checkpoint from before the identity was recorded: the
            // run's class list is what is known of its data.
            let path = run.join(CLASSES);
            if !path.is_file() {
                return Ok(());
            }
            let names = crate::shard::read_classes_tsv(&path)
                .map_err(|e| TrainError::Other(e.to_string()))?;
            if names.as_slice() == set.classes() {
                return Ok(());
            }
            let first = names
                .iter()
                .zip(set.classes())
                .position(|(a, b)| a != b)
                .unwrap_or(names.len().min(set.classes().len()));
            Err(TrainError::Setup(format!(
                "--resume: {} was trained on the {} classes of {}, but --shards {} has {} classes (they first differ at label {first}); resume with the run's own shards, or start a new --out",
                run.display(),
                names.len(),
                path.display(),
                shards.display(),
                set.classes().len()
            )))
        }
    }
}

/// Checked before anything is saved from the model: a diverged run can
/// keep a finite loss (the EBV head's normalisation turns NaN features
/// into uniform logits), and its checkpoint must never become `latest` or
/// `model-best`.
fn check_weights(model: &Classifier, step: u64) -> Result<(), TrainError> {
    match model.store.first_non_finite()? {
        Some(name) => Err(TrainError::Other(format!(
            "training diverged: {name} holds NaN or infinite values after step {step}; nothing was saved from it (lower optim.lr or set optim.clip_grad_norm; the last good checkpoint, if any, is still latest)"
        ))),
        None => Ok(()),
    }
}

/// Train as `opts` says; see the module invariants.
pub fn train(opts: &TrainOptions) -> Result<TrainOutcome, TrainError> {
    train_with(opts, &Solo)
}

/// Recipe keys a resumed run may change: they set how fast the loader
/// works, not what it yields.
const RESUME_FREE_KEYS: [&str; 2] = ["data.workers", "data.prefetch"];

/// Train as one rank of the data-parallel group `comm`: this rank reads its
/// part of each epoch (`data.batch` is the global batch, split evenly),
/// gradients are averaged over the group in buckets after each backward,
/// and only rank 0 writes the run folder. With [`Solo`] this is [`train`].
pub fn train_with(opts: &TrainOptions, comm: &dyn Collective) -> Result<TrainOutcome, TrainError> {
    let world = comm.size();
    let primary = comm.rank() == 0;
    size_elementwise_pool(&opts.recipe, opts.recipe.data.batch / world.max(1));
    let run = opts.out.clone();
    // Held until this function returns: only rank 0 writes the folder.
    let _lock = if primary {
        Some(crate::lock::DirLock::acquire(&run, "ebv-train", true)?)
    } else {
        None
    };
    if primary {
        // Under the lock nothing else writes here: any temporary file or
        // hidden checkpoint folder is what a killed process left.
        checkpoint::tidy(&run)?;
        crate::shard::remove_replace_temps(&run, &RUN_FILES)
            .map_err(|e| TrainError::Other(e.to_string()))?;
    }
    let mut opts = opts.clone();
    let latest = if run.is_dir() {
        checkpoint::latest(&run)?
    } else {
        None
    };
    if opts.resume {
        let cfg = run.join(CONFIG);
        if latest.is_none() || !cfg.is_file() {
            return Err(TrainError::Setup(format!(
                "--resume: {} has no checkpoint to resume from",
                run.display()
            )));
        }
        let saved = Recipe::load(Some(&cfg), &[])?;
        // The loader's threads and queue depth change how fast batches come,
        // never which (a batch depends on seed, epoch, rank and position
        // only), so another machine's core count may resume the run.
        let differ: Vec<String> = saved
            .differences(&opts.recipe)
            .into_iter()
            .filter(|k| !RESUME_FREE_KEYS.contains(&k.as_str()))
            .collect();
        if !differ.is_empty() {
            return Err(TrainError::Setup(format!(
                "--resume continues with the run's own {} exactly; the recipe given differs in {} \
                 (drop the --config/--set/flags that change it, or start a new --out)",
                cfg.display(),
                differ.join(", ")
            )));
        }
        if opts.ebv.is_none() {
            opts.ebv = run_basis(&run);
        }
    } else if latest.is_some() {
        return Err(TrainError::Setup(format!(
            "{} already holds a run with checkpoints: pass --resume to continue it, or choose another --out",
            run.display()
        )));
    }
    let resumed = match &latest {
        Some(dir) if opts.resume => Some(checkpoint::read_state(dir)?),
        _ => None,
    };
    let opts = &opts;
    let Setup { set, basis, spec } = setup(opts, resumed.as_ref())?;
    let r = &opts.recipe;
    let imp = r.kernels()?;
    crate::kernels::set_conv_algo(r.conv_algo()?);
    let seed = r.run.seed;

    let loader = Loader::new(
        Arc::clone(&set),
        r.train_loader(comm.rank() as u32, world as u32)?,
        seed,
    )?;
    let per_epoch = loader.batches_per_epoch();
    if per_epoch == 0 {
        return Err(TrainError::Setup(format!(
            "the train split has {} rows, fewer than one batch of {}",
            set.num_rows(Split::Train),
            r.data.batch
        )));
    }
    let eval_loader = if set.num_rows(Split::Val) > 0 {
        Some(Loader::new(Arc::clone(&set), r.eval_loader(), seed)?)
    } else {
        None
    };
    let total = r.schedule.epochs * per_epoch;
    let schedule = Schedule {
        base_lr: r.scaled_lr(),
        warmup_steps: ((r.schedule.warmup_epochs * per_epoch as f64).round() as u64).min(total),
        warmup_start_factor: r.schedule.warmup_start,
        total_steps: total,
        min_lr: r.schedule.min_lr,
    };

    let mut model = Classifier::new(&spec, basis.as_ref(), &opts.device, seed, imp)?;
    model.set_precision(r.run.precision)?;
    set_class_chunk(&mut model, r)?;
    if let Some(init) = &opts.init {
        let kept = load_init(&model, init)?;
        if crate::progress::chatty(opts.quiet) && !kept.is_empty() {
            eprintln!(
                "ebv-train: --init {}: {} tensor(s) not in the file or of another shape keep their initialisation (first: {})",
                init.display(),
                kept.len(),
                kept[0]
            );
        }
    }
    let mut optim = build_optimizer(r, &model);
    let vars: Vec<Var> = optim.params().iter().map(|p| p.var.clone()).collect();
    let buckets = GradBuckets::for_vars(&vars, DEFAULT_BUCKET_BYTES);
    let sync = GradSync {
        comm,
        buckets: &buckets,
        vars: &vars,
    };

    if primary {
        std::fs::create_dir_all(&run).map_err(|e| TrainError::io(&run, e))?;
    }
    let basis_sha = match (&basis, &opts.ebv) {
        (Some(_), Some(p)) => Some(file_sha256(p)?),
        _ => None,
    };
    let fresh = || TrainState {
        step: 0,
        sampler: SamplerState::new(seed),
        seed,
        interval: Running::default(),
        epoch_acc: Running::default(),
        history: Vec::new(),
        basis_sha256: basis_sha.clone(),
        data: Some(DataIdentity::of(&set)),
    };
    let mut state = match &latest {
        Some(dir) if opts.resume => {
            let s = checkpoint::restore(dir, &model, &mut optim)?;
            if s.basis_sha256 != basis_sha {
                return Err(TrainError::Setup(format!(
                    "the EBV basis differs from the one {} was trained with",
                    dir.display()
                )));
            }
            s
        }
        _ if !primary => fresh(),
        _ => {
            let text = r.to_toml()?;
            crate::shard::write_replace(&run.join(CONFIG), text.as_bytes(), false)
                .map_err(|e| TrainError::Other(e.to_string()))?;
            crate::shard::write_classes_tsv(&run.join(CLASSES), set.classes())
                .map_err(|e| TrainError::Other(e.to_string()))?;
            if let Some(p) = &opts.ebv {
                let dst = run.join(basis_copy_name(p)?);
                if basis.is_some() && !crate::file_kind::same_file(p, &dst) {
                    std::fs::copy(p, &dst).map_err(|e| TrainError::io(&dst, e))?;
                }
            }
            fresh()
        }
    };
    // Rank 0's weights, buffers and (restored) state everywhere, as DDP does.
    let replicated: Vec<&Var> = model.store.entries().iter().map(|e| &e.var).collect();
    broadcast_from_rank0(&replicated, comm)?;
    // BatchNorm is per rank: its running statistics follow each rank's
    // batches, so they are re-synchronised from rank 0 (DDP's
    // `broadcast_buffers`) once per epoch; the trained tensors must agree.
    let (running, trained): (Vec<&Var>, Vec<&Var>) = {
        let entries = model.store.entries();
        let running = entries
            .iter()
            .filter(|e| e.kind == ParamKind::Buffer)
            .map(|e| &e.var)
            .collect();
        let trained = entries
            .iter()
            .filter(|e| e.kind != ParamKind::Buffer)
            .map(|e| &e.var)
            .collect();
        (running, trained)
    };
    let mut log = if primary {
        Some(MetricsLog::open(&run, opts.resume.then_some(state.step))?)
    } else {
        None
    };
    let chatty = primary && crate::progress::chatty(opts.quiet);
    if chatty {
        eprintln!(
            "ebv-train: {} ({} head{}), {} parameters, {} classes; {} steps/epoch × {} epochs, lr {:.4} (batch {})",
            spec.backbone.arch.name(),
            match spec.head {
                HeadKind::Ebv => "ebv",
                HeadKind::Fc => "fc",
            },
            spec.dim.map(|d| format!(", d = {d}")).unwrap_or_default(),
            model.store.num_parameters(),
            spec.classes,
            per_epoch,
            r.schedule.epochs,
            schedule.base_lr,
            r.data.batch
        );
    }

    let started = Instant::now();
    let mut images_done = 0u64;
    // A step cap already reached (a resume with a lower --max-steps) takes
    // no step at all rather than one more.
    let mut stop = opts.max_steps.is_some_and(|m| state.step >= m);
    while state.sampler.epoch < r.schedule.epochs && !stop {
        let epoch = state.sampler.epoch;
        let iter = loader.epoch(state.sampler)?;
        let bar = crate::progress::bar(iter.num_batches(), "batch", opts.quiet || !primary);
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, r.schedule.epochs));
        let mut interval_start = Instant::now();
        let mut interval_images = 0u64;
        // The next batch's tensors are made on a helper thread during this step.
        let mut batches = Prefetch::start(iter, &opts.device);
        for ready in &mut batches {
            let ready = ready?;
            // Every rank's batch is the same size: count the group's images.
            let n = ready.len as u64 * world as u64;
            let after = ready.after;
            let lr = schedule.lr(state.step);
            let (loss, correct) = step(
                &model,
                &mut optim,
                &sync,
                &ready.x,
                &ready.labels,
                &ready.mix_labels,
                ready.lambda,
                r.loss.label_smoothing,
                r.optim.clip_grad_norm,
                lr,
            )?;
            state.step += 1;
            state.sampler = after;
            state.interval.add(loss, correct, n);
            state.epoch_acc.add(loss, correct, n);
            interval_images += n;
            images_done += n;
            bar.inc(1);
            if state.step % r.run.log_every.max(1) == 0 {
                // Here too, not only before saving: stops a diverged run
                // within one log interval instead of at the epoch's end,
                // at a cost (one read-back per log line) that a per-step
                // check would pay every step.
                check_weights(&model, state.step)?;
                let secs = interval_start.elapsed().as_secs_f64();
                let ips = interval_images as f64 / secs.max(1e-9);
                bar.set_message(format!(
                    "loss {:.4} lr {:.4} {:.0} img/s",
                    state.interval.loss(),
                    lr,
                    ips
                ));
                write_log(
                    &mut log,
                    &json!({
                        "kind": "train", "step": state.step, "epoch": epoch,
                        "loss": state.interval.loss(), "lr": lr, "top1": state.interval.top1(),
                        "images_per_s": ips,
                    }),
                )?;
                state.interval = Running::default();
                interval_start = Instant::now();
                interval_images = 0;
            }
            if stop_requested(comm, &opts.device)?
                || opts.max_steps.is_some_and(|m| state.step >= m)
            {
                stop = true;
                // On the epoch's last batch, finish the epoch (evaluation,
                // epoch checkpoint) as an uninterrupted run would.
                if after.epoch == epoch {
                    break;
                }
            }
        }
        bar.finish_and_clear();
        if stop && state.sampler.epoch == epoch {
            // Mid-epoch stop: the sampler state points at the next batch.
            check_weights(&model, state.step)?;
            if primary {
                let name = format!("step-{:010}", state.step);
                checkpoint::save(&run, &name, &model, &optim, &state)?;
                // Repeated stops (a --max-steps per job) would otherwise
                // pile up step folders past run.keep_checkpoints.
                checkpoint::prune(&run, r.run.keep_checkpoints)?;
            }
            if chatty {
                eprintln!(
                    "ebv-train: stopped at step {}; resume with --resume --out {}",
                    state.step,
                    run.display()
                );
            }
            break;
        }
        broadcast_from_rank0(&running, comm)?;
        if let Some(i) = first_divergence(&trained, comm)? {
            let name = model
                .store
                .entries()
                .iter()
                .filter(|e| e.kind != ParamKind::Buffer)
                .nth(i)
                .map_or("?", |e| e.name.as_str());
            return Err(TrainError::Other(format!(
                "the ranks' weights diverged in epoch {} (first: {name}); is every rank running the same build and recipe?",
                epoch + 1
            )));
        }
        check_weights(&model, state.step)?;
        let iter = batches.finish()?;
        state.sampler = iter.state();
        let replaced = iter.summary().replaced;
        // Said where a person reads it, not only in metrics.jsonl: a
        // replaced sample is an image of the shards that cannot be read.
        let first_failure = iter.summary().errors.first().map(SampleError::brief);
        drop(iter);
        if state.interval.steps > 0 {
            write_log(
                &mut log,
                &json!({
                    "kind": "train", "step": state.step, "epoch": epoch,
                    "loss": state.interval.loss(), "lr": schedule.lr(state.step.saturating_sub(1)),
                    "top1": state.interval.top1(),
                    "images_per_s": interval_images as f64 / interval_start.elapsed().as_secs_f64().max(1e-9),
                }),
            )?;
            state.interval = Running::default();
        }
        let last = epoch + 1 == r.schedule.epochs;
        let val = match &eval_loader {
            Some(l)
                if primary
                    && (last || (r.run.eval_every > 0 && (epoch + 1) % r.run.eval_every == 0)) =>
            {
                let m = evaluate(&model, l, &opts.device, opts.quiet)?;
                if !m.loss.is_finite() {
                    return Err(TrainError::Other(format!(
                        "training diverged: the validation loss after epoch {} is {}; nothing was saved from it (lower optim.lr or set optim.clip_grad_norm)",
                        epoch + 1,
                        m.loss
                    )));
                }
                write_log(
                    &mut log,
                    &json!({
                        "kind": "eval", "step": state.step, "epoch": epoch,
                        "val_loss": m.loss, "val_top1": m.top1, "val_top5": m.top5,
                        "images": m.images,
                    }),
                )?;
                Some(m)
            }
            _ => None,
        };
        let em = EpochMetrics {
            epoch,
            step: state.step,
            train_loss: state.epoch_acc.loss(),
            train_top1: state.epoch_acc.top1(),
            val,
            replaced,
        };
        write_log(
            &mut log,
            &json!({"kind": "epoch", "step": state.step, "epoch": epoch, "metrics": em}),
        )?;
        if chatty {
            let v = em
                .val
                .as_ref()
                .map(|v| {
                    format!(
                        ", val loss {:.4} top-1 {:.4} top-5 {:.4}",
                        v.loss, v.top1, v.top5
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "epoch {}/{}: train loss {:.4} top-1 {:.4}{v}",
                epoch + 1,
                r.schedule.epochs,
                em.train_loss,
                em.train_top1
            );
            if em.replaced > 0 {
                eprintln!(
                    "warning: {} training samples could not be read and were replaced by \
                     others{} (ebv-stats --verify checks the shards)",
                    em.replaced,
                    first_failure
                        .as_deref()
                        .map(|f| format!("; first: {f}"))
                        .unwrap_or_default()
                );
            }
            if let Some(v) = em.val.as_ref().filter(|v| v.skipped > 0) {
                eprintln!(
                    "warning: {} of the {} validation images could not be read and were left out \
                     of the validation figures (first: {}; ebv-stats --verify checks the shards)",
                    v.skipped,
                    v.images + v.skipped,
                    v.first_skipped.as_deref().unwrap_or("?")
                );
            }
        }
        state.history.push(em);
        state.epoch_acc = Running::default();
        if primary {
            if let Some(best) = best_epoch(&state.history) {
                if best.epoch == epoch {
                    checkpoint::save_model(&run.join("model-best.safetensors"), &model)?;
                }
            }
            checkpoint::save(
                &run,
                &format!("epoch-{:04}", epoch + 1),
                &model,
                &optim,
                &state,
            )?;
            checkpoint::prune(&run, r.run.keep_checkpoints)?;
        }
        if stop_requested(comm, &opts.device)? || opts.max_steps.is_some_and(|m| state.step >= m) {
            stop = true;
        }
    }
    let previous = run.join(SUMMARY);
    if images_done == 0 && opts.resume {
        // Nothing was trained: the run's summary (its steps, time and
        // throughput) stays as the training that produced it wrote it —
        // if it describes this checkpoint. A kill between the last
        // checkpoint and the summary leaves none, or an earlier session's.
        if let Some(summary) = summary_of(&previous, &state, r.schedule.epochs) {
            if chatty {
                eprintln!(
                    "ebv-train: nothing to train: {} is at step {} (epoch {} of {}); summary.json left as it was",
                    run.display(),
                    state.step,
                    state.sampler.epoch.min(r.schedule.epochs),
                    r.schedule.epochs
                );
            }
            if primary {
                drop(log);
                draw_curves(&run);
            }
            return Ok(TrainOutcome { run, summary });
        }
        if chatty {
            eprintln!(
                "ebv-train: nothing to train: {} is at step {} (epoch {} of {}); summary.json \
                 rebuilt from that checkpoint (missing, or of another step: the session that \
                 got there was stopped before writing it; its time is unknown, written as 0)",
                run.display(),
                state.step,
                state.sampler.epoch.min(r.schedule.epochs),
                r.schedule.epochs
            );
        }
    }
    // Nothing trained in this session (a rebuilt summary): no time to report.
    let secs = if images_done == 0 {
        0.0
    } else {
        started.elapsed().as_secs_f64()
    };
    let summary = Summary {
        steps: state.step,
        epochs: state.history.len() as u64,
        last_epoch: state.history.last().cloned(),
        best_epoch: best_epoch(&state.history).cloned(),
        parameters: model.store.num_parameters(),
        train_seconds: secs,
        images_per_second: if images_done == 0 {
            0.0
        } else {
            images_done as f64 / secs.max(1e-9)
        },
        interrupted: state.sampler.epoch < r.schedule.epochs,
    };
    if primary {
        let text =
            serde_json::to_vec_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?;
        crate::shard::write_replace(&previous, &text, false)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        drop(log);
        draw_curves(&run);
    }
    Ok(TrainOutcome { run, summary })
}

/// The run's `summary.json` if it describes the checkpoint `state` (same
/// step, epochs and interrupted flag); None when it is missing, unreadable
/// or of another step.
fn summary_of(path: &Path, state: &TrainState, epochs: u64) -> Option<Summary> {
    let text = std::fs::read(path).ok()?;
    let summary: Summary = serde_json::from_slice(&text).ok()?;
    (summary.steps == state.step
        && summary.epochs == state.history.len() as u64
        && summary.interrupted == (state.sampler.epoch < epochs))
        .then_some(summary)
}

/// Draw `curves.png` from `metrics.jsonl`. A failure is a warning, not an
/// error: the run's checkpoint and summary are already written, the plot
/// is written atomically (a failed write leaves the previous one or none,
/// never a torn file), and `--resume` of the finished run draws it again.
fn draw_curves(run: &Path) {
    let path = run.join(CURVES);
    let drawn = read_log(&run.join("metrics.jsonl")).and_then(|lines| write_curves(&lines, &path));
    if let Err(e) = drawn {
        eprintln!(
            "ebv-train: warning: {} not drawn: {e} (`ebv-train --resume --out {}` draws it again)",
            path.display(),
            run.display()
        );
    }
}

/// Load weights by name, keeping tensors whose shape differs at their
/// initialisation (a pretrained `fc` for another class count). Returns the
/// names not loaded.
fn load_init(model: &Classifier, path: &Path) -> Result<Vec<String>, TrainError> {
    let (tensors, _) = crate::model::load_safetensors(path)?;
    let kept = model.store.load_matching(&tensors)?;
    // Counted over the trained tensors: BatchNorm's scalar step counters
    // match any ResNet, and a file of another width would otherwise "load"
    // through them alone and train from scratch.
    let kept_set: std::collections::HashSet<&str> = kept.iter().map(String::as_str).collect();
    if model
        .store
        .trainable()
        .all(|e| kept_set.contains(e.name.as_str()))
    {
        return Err(TrainError::Setup(format!(
            "--init {}: no trained tensor matches the model by name and shape (first not \
             loaded: {}); is it the same architecture and --width?",
            path.display(),
            kept.first().map_or("-", String::as_str)
        )));
    }
    if let Some(name) = model.store.first_non_finite()? {
        return Err(TrainError::Setup(format!(
            "--init {}: tensor {name} holds NaN or infinite values",
            path.display()
        )));
    }
    Ok(kept)
}

fn file_sha256(path: &Path) -> Result<String, TrainError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Timing of training steps on synthetic data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub arch: String,
    pub head: String,
    pub batch: usize,
    pub size: usize,
    pub classes: usize,
    pub dim: Option<usize>,
    pub kernels: String,
    pub threads: usize,
    pub steps: usize,
    /// Seconds of each timed step (the first, warm-up step excluded).
    pub step_seconds: Vec<f64>,
    pub mean_step_seconds: f64,
    pub images_per_second: f64,
    /// Peak resident memory of the process (getrusage), bytes.
    pub peak_rss_bytes: u64,
    /// One more step taken apart, each phase ended by a device synchronisation: `features` (the trunk's
    /// forward alone), `forward_loss` (the whole forward and the loss), `backward`, `optimizer`; then (unchunked
    /// heads) a forward + backward with each of this crate's ops synchronised and timed: `op:NAME` seconds and
    /// `calls:NAME`, with `profiled_forward_backward` the whole of that pass.
    #[serde(default)]
    pub phase_seconds: BTreeMap<String, f64>,
}

/// Time `steps` training steps (plus one warm-up) of the recipe's model on
/// random images and labels: forward, loss, backward, SGD update.
pub fn bench_steps(
    recipe: &Recipe,
    classes: usize,
    dim: usize,
    steps: usize,
    device: &Device,
) -> Result<BenchReport, TrainError> {
    if classes == 0 {
        return Err(TrainError::Setup(
            "--classes 0: the synthetic benchmark needs at least 1 class".into(),
        ));
    }
    if recipe.model.head == HeadKind::Ebv && dim == 0 {
        return Err(TrainError::Setup(
            "--dim 0: the EBV head needs a basis dimension of at least 1".into(),
        ));
    }
    size_elementwise_pool(recipe, recipe.data.batch);
    check_precision(recipe, device)?;
    let imp = recipe.kernels()?;
    crate::kernels::set_conv_algo(recipe.conv_algo()?);
    let seed = recipe.run.seed;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xBE7C);
    let basis = match recipe.model.head {
        HeadKind::Ebv => {
            // Random unit rows: the cost of the head does not depend on how
            // equiangular the matrix is.
            let mut v: Vec<f32> = (0..classes * dim)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            for row in v.chunks_mut(dim) {
                let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|x| *x /= n);
            }
            Some(Tensor::from_vec(v, (classes, dim), device)?)
        }
        HeadKind::Fc => None,
    };
    let spec = model_spec(recipe, classes, basis.as_ref())?;
    let mut model = Classifier::new(&spec, basis.as_ref(), device, seed, imp)?;
    model.set_precision(recipe.run.precision)?;
    set_class_chunk(&mut model, recipe)?;
    let mut optim = build_optimizer(recipe, &model);
    let b = recipe.data.batch;
    let s = recipe.data.size as usize;
    let x: Vec<f32> = (0..b * 3 * s * s)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let x = Tensor::from_vec(x, (b, 3, s, s), device)?;
    let labels: Vec<u32> = (0..b).map(|i| (i % classes) as u32).collect();
    let labels = Tensor::from_slice(&labels, b, device)?;
    let vars: Vec<Var> = optim.params().iter().map(|p| p.var.clone()).collect();
    let buckets = GradBuckets::for_vars(&vars, DEFAULT_BUCKET_BYTES);
    let sync = GradSync {
        comm: &Solo,
        buckets: &buckets,
        vars: &vars,
    };
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let t = Instant::now();
        step(
            &model,
            &mut optim,
            &sync,
            &x,
            &labels,
            &labels,
            1.0,
            recipe.loss.label_smoothing,
            0.0,
            1e-3,
        )?;
        // GPU work is asynchronous: the optimiser's kernels count in this step.
        device.synchronize()?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let phase_seconds = step_phases(&model, &mut optim, &x, &labels, recipe, device)?;
    Ok(BenchReport {
        arch: recipe.model.arch.name().into(),
        head: format!("{:?}", recipe.model.head).to_lowercase(),
        batch: b,
        size: s,
        classes,
        dim: spec.dim,
        kernels: match imp {
            KernelImpl::Ebv => "ebv".into(),
            KernelImpl::Candle => "candle".into(),
        },
        threads: rayon::current_num_threads(),
        steps,
        step_seconds: times,
        mean_step_seconds: mean,
        images_per_second: b as f64 / mean.max(1e-12),
        peak_rss_bytes: peak_rss(),
        phase_seconds,
    })
}

/// Seconds of each phase of one step (see [`BenchReport::phase_seconds`]).
fn step_phases(
    model: &Classifier,
    optim: &mut Optimizer,
    x: &Tensor,
    labels: &Tensor,
    recipe: &Recipe,
    device: &Device,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let mut out = BTreeMap::new();
    let mut lap = |name: &str, t: Instant| -> Result<Instant, TrainError> {
        device.synchronize()?;
        out.insert(name.to_string(), t.elapsed().as_secs_f64());
        Ok(Instant::now())
    };
    device.synchronize()?;
    let t = Instant::now();
    drop(model.features_t(x, true)?);
    let t = lap("features", t)?;
    let smoothing = recipe.loss.label_smoothing;
    let loss = if model.head().class_chunk().is_some() {
        let features = model.features_t(x, true)?;
        model
            .head()
            .chunked_loss(&features, labels, labels, 1.0, smoothing)?
            .0
    } else {
        batch_loss(&model.forward_t(x, true)?, labels, labels, 1.0, smoothing)?
    };
    let t = lap("forward_loss", t)?;
    let grads = loss.backward()?;
    let t = lap("backward", t)?;
    optim.step(&grads, 1e-3)?;
    lap("optimizer", t)?;
    // The same step once more, each of this crate's ops timed on its own (see `kernels::set_op_profile`).
    crate::kernels::set_op_profile(true);
    let profiled = (|| -> Result<f64, TrainError> {
        device.synchronize()?;
        let t = Instant::now();
        let loss = batch_loss(&model.forward_t(x, true)?, labels, labels, 1.0, smoothing)?;
        drop(loss.backward()?);
        device.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    })();
    crate::kernels::set_op_profile(false);
    out.insert("profiled_forward_backward".into(), profiled?);
    for (name, (secs, calls)) in crate::kernels::op_profile() {
        out.insert(format!("op:{name}"), secs);
        out.insert(format!("calls:{name}"), calls as f64);
    }
    Ok(out)
}

/// Peak resident set size of this process, bytes (0 where unknown).
pub(crate) fn peak_rss() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: initialised by the successful call above.
    let ru = unsafe { ru.assume_init() };
    // Linux reports kibibytes.
    (ru.ru_maxrss.max(0) as u64) * 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::soft_cross_entropy;

    /// The mixed-batch loss built from two hard-label terms equals the
    /// cross-entropy against the dense soft target λ·onehot(a) +
    /// (1−λ)·onehot(b), label smoothing included.
    #[test]
    fn mixed_loss_equals_the_dense_soft_target_loss() {
        let dev = Device::Cpu;
        let logits: Vec<f64> = (0..4 * 6)
            .map(|i| ((i * 7 % 13) as f64 - 6.0) / 2.0)
            .collect();
        let logits = Tensor::from_vec(logits, (4, 6), &dev).unwrap();
        let a = [0u32, 5, 2, 2];
        let b = [3u32, 0, 2, 1];
        let lam = 0.7;
        let got: f64 = batch_loss(
            &logits,
            &Tensor::new(&a, &dev).unwrap(),
            &Tensor::new(&b, &dev).unwrap(),
            lam,
            0.1,
        )
        .unwrap()
        .to_scalar()
        .unwrap();
        let mut t = vec![0f64; 24];
        for i in 0..4 {
            t[i * 6 + a[i] as usize] += lam;
            t[i * 6 + b[i] as usize] += 1.0 - lam;
        }
        let t = Tensor::from_vec(t, (4, 6), &dev).unwrap();
        let want: f64 = soft_cross_entropy(&logits, &t, 0.1)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
