//! Evaluation over a split, and opening a trained model for `ebv-eval` and
//! `ebv-predict`.
//!
//! A model is found from a run folder (its latest checkpoint), a checkpoint
//! folder (refused unless complete), or a bare `model.safetensors`; a file from torchvision
//! (`safetensors.torch.save_file(resnet50().state_dict(), …)`) has no spec
//! metadata, so its architecture and head come from flags. The EBV basis
//! and class names come from the run folder unless given.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::data::{Loader, SampleError, SamplerState};
use crate::kernels::KernelImpl;
use crate::model::{
    load_basis, load_safetensors, Arch, Classifier, HeadKind, ModelSpec, ResNetConfig,
};

use super::checkpoint::{self, SPEC_KEY};
use super::config::Recipe;
use super::loss::{hard_cross_entropy, topk_correct};
use super::metrics::EvalMetrics;
use super::prefetch::Prefetch;
use super::TrainError;

/// Mean loss (no label smoothing), top-1 and top-5 of `model` in eval mode
/// over every batch `loader` yields for epoch 0. With the evaluation
/// loader (`OnError::Skip`) unreadable images are left out and counted in
/// `skipped`; a split none of whose images can be read is an error.
pub fn evaluate(
    model: &Classifier,
    loader: &Loader,
    device: &Device,
    quiet: bool,
) -> Result<EvalMetrics, TrainError> {
    let seed = loader.sampler().seed();
    let iter = loader.epoch(SamplerState::new(seed))?;
    let bar = crate::progress::bar(iter.num_batches(), "batch", quiet);
    bar.set_prefix("eval");
    let k5 = 5.min(model.spec().classes);
    let (mut loss_sum, mut top1, mut top5, mut n) = (0.0f64, 0u64, 0u64, 0u64);
    // The next batch is copied to the device while this one is scored.
    let mut batches = Prefetch::start(iter, device);
    for ready in &mut batches {
        let ready = ready?;
        let b = ready.len as u64;
        let (x, labels) = (ready.x, ready.labels);
        let (loss, c) = if model.head().class_chunk().is_some() {
            let features = model.features_t(&x, false)?;
            model.head().chunked_eval(&features, &labels, &[1, k5])?
        } else {
            let (scores, logits) = model.scores_and_logits(&x)?;
            let loss = hard_cross_entropy(&logits, &labels, 0.0)?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            (loss, topk_correct(&scores, &labels, &[1, k5])?)
        };
        loss_sum += loss * b as f64;
        top1 += c[0];
        top5 += c[1];
        n += b;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let iter = batches.finish()?;
    let summary = iter.summary();
    let first_skipped = summary.errors.first().map(SampleError::brief);
    if n == 0 && summary.skipped > 0 {
        return Err(TrainError::Other(format!(
            "{} split: none of its {} images could be read (first: {})",
            loader.config().split,
            summary.skipped,
            first_skipped.as_deref().unwrap_or("?")
        )));
    }
    let n_f = n.max(1) as f64;
    Ok(EvalMetrics {
        loss: loss_sum / n_f,
        top1: top1 as f64 / n_f,
        top5: top5 as f64 / n_f,
        images: n,
        replaced: summary.replaced,
        skipped: summary.skipped,
        first_skipped,
    })
}

/// The command-line flags of `ebv-eval` and `ebv-predict` that locate and
/// shape a model (flattened into each binary's arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModelFlags {
    /// EBV basis (default: the run folder's ebv.safetensors).
    #[arg(long)]
    pub ebv: Option<PathBuf>,
    /// For weights without ebv metadata (e.g. torchvision's): resnet18/34/50.
    #[arg(long)]
    pub arch: Option<Arch>,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub small_stem: bool,
    /// ebv or fc.
    #[arg(long)]
    pub head: Option<HeadKind>,
    #[arg(long)]
    pub tau: Option<f64>,
    /// Eval side and resize (default: the run's recipe, else 224 / 256).
    #[arg(long)]
    pub size: Option<u32>,
    #[arg(long)]
    pub eval_resize: Option<u32>,
}

impl ModelFlags {
    /// `--size` and `--eval-resize` within what the loader renders
    /// (`size`/`resize` are the values in effect, flag or recipe).
    pub fn check_sizes(&self, size: u32, resize: u32) -> Result<(), TrainError> {
        match crate::data::Augment::eval(size, resize).check() {
            Ok(()) => Ok(()),
            Err((field, why)) => {
                let flag = if field == "eval_resize" {
                    "--eval-resize"
                } else {
                    "--size"
                };
                Err(TrainError::Setup(format!("{flag}: {why}")))
            }
        }
    }

    pub fn overrides(&self) -> ModelOverrides {
        ModelOverrides {
            arch: self.arch,
            width: self.width,
            small_stem: self.small_stem.then_some(true),
            head: self.head,
            tau: self.tau,
            ebv: self.ebv.clone(),
        }
    }
}

/// Model settings for files without spec metadata (torchvision weights),
/// or to override the run's.
#[derive(Debug, Clone, Default)]
pub struct ModelOverrides {
    pub arch: Option<Arch>,
    pub width: Option<usize>,
    pub small_stem: Option<bool>,
    pub head: Option<HeadKind>,
    pub tau: Option<f64>,
    pub ebv: Option<PathBuf>,
}

/// A model ready for inference, with what was found around it.
pub struct LoadedModel {
    pub model: Classifier,
    /// The run's resolved recipe, when the model came from a run.
    pub recipe: Option<Recipe>,
    /// Class names (the run's `classes.tsv`), when found.
    pub classes: Option<Vec<String>>,
    /// The weights file read.
    pub weights: PathBuf,
    /// Flags that overrode what the model's own metadata says (the flags
    /// are meant for weights without it), for the command to warn about.
    pub overridden: Vec<String>,
}

/// Find the weights file and the run folder for `path`.
fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>), TrainError> {
    if path.is_dir() {
        if path.join("checkpoints").is_dir() {
            let dir = checkpoint::latest(path)?.ok_or_else(|| TrainError::Checkpoint {
                path: path.to_path_buf(),
                detail: "run folder without a checkpoint".into(),
            })?;
            return Ok((dir.join("model.safetensors"), Some(path.to_path_buf())));
        }
        let weights = path.join("model.safetensors");
        // A checkpoint folder (RUN/checkpoints/NAME/, or any folder with
        // a checkpoint's other files) must be whole: what a crashed save
        // or prune left may still hold a model, but not the one named.
        let in_run = path
            .parent()
            .is_some_and(|p| p.file_name() == Some("checkpoints".as_ref()));
        if in_run
            || checkpoint::FILES
                .iter()
                .any(|f| *f != "model.safetensors" && path.join(f).is_file())
        {
            checkpoint::check_complete(path)?;
        }
        if weights.is_file() {
            // RUN/checkpoints/NAME/
            let run = path.parent().and_then(Path::parent).map(Path::to_path_buf);
            return Ok((weights, run.filter(|r| r.join("config.toml").is_file())));
        }
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            detail: "neither a run folder nor a checkpoint folder (no model.safetensors)".into(),
        });
    }
    if !path.is_file() {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            detail: "no such file or folder".into(),
        });
    }
    let run = path
        .ancestors()
        .skip(1)
        .take(3)
        .find(|d| d.join("config.toml").is_file())
        .map(Path::to_path_buf);
    Ok((path.to_path_buf(), run))
}

/// Lookups of a run folder's latest checkpoint that may meet a prune.
const PRUNE_RETRIES: u32 = 3;

/// [`locate`] the weights of `path` and `load` them. A run still training
/// publishes its next checkpoint and then prunes old ones, so the folder
/// `latest` named may be gone (or going: renamed away) by the time it is
/// read; the lookup is then made again, and names its successor.
fn read_weights<T>(
    path: &Path,
    mut load: impl FnMut(&Path) -> Result<T, crate::model::ModelError>,
) -> Result<(PathBuf, Option<PathBuf>, T), TrainError> {
    let live = path.join("checkpoints").is_dir();
    let mut attempt = 0;
    loop {
        let found = locate(path).and_then(|(weights, run)| {
            let t = load(&weights)?;
            Ok((weights, run, t))
        });
        match found {
            Err(_) if live && attempt < PRUNE_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// Open the model at `path` (see the module header) on `device`.
pub fn open_model(
    path: &Path,
    over: &ModelOverrides,
    device: &Device,
    imp: KernelImpl,
) -> Result<LoadedModel, TrainError> {
    let (weights, run, (tensors, meta)) = read_weights(path, load_safetensors)?;
    let recipe = match &run {
        Some(r) => Some(Recipe::load(Some(&r.join("config.toml")), &[])?),
        None => None,
    };
    let classes = run
        .as_ref()
        .map(|r| r.join("classes.tsv"))
        .filter(|p| p.is_file())
        .map(|p| crate::shard::read_classes_tsv(&p).map_err(|e| TrainError::Other(e.to_string())))
        .transpose()?;
    let saved: Option<ModelSpec> = match meta.get(SPEC_KEY) {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| TrainError::Checkpoint {
            path: weights.clone(),
            detail: format!("bad {SPEC_KEY}: {e}"),
        })?),
        None => None,
    };
    // Without metadata (torchvision's files) the shapes of fc tell the
    // class count (FC) or d (EBV).
    let fc_rows = tensors.get("fc.weight").map(|t| t.dims()[0]);
    let head = over
        .head
        .or(saved.as_ref().map(|s| s.head))
        .unwrap_or(HeadKind::Fc);
    let backbone = ResNetConfig {
        arch: over
            .arch
            .or(saved.as_ref().map(|s| s.backbone.arch))
            .unwrap_or(Arch::Resnet50),
        width: over
            .width
            .or(saved.as_ref().map(|s| s.backbone.width))
            .unwrap_or(64),
        small_stem: over
            .small_stem
            .or(saved.as_ref().map(|s| s.backbone.small_stem))
            .unwrap_or(false),
    };
    let tau = over.tau.or(saved.as_ref().map(|s| s.tau)).unwrap_or(0.07);
    let basis = match head {
        HeadKind::Ebv => {
            let p = over
                .ebv
                .clone()
                .or_else(|| run.as_deref().and_then(super::trainer::run_basis))
                .filter(|p| p.is_file())
                .ok_or_else(|| {
                    TrainError::Setup(
                        "the ebv head needs its basis file: pass --ebv FILE (a run folder keeps it as ebv.safetensors, or ebv.npy)".into(),
                    )
                })?;
            let b = load_basis(&p, device)?;
            // The basis fixes the class count and d; one that is not the
            // model's would score classes it never trained on, or fail
            // later on a tensor shape that does not name the file.
            if let Some(s) = &saved {
                let (rows, dim) = (b.dims()[0], b.dims()[1]);
                if rows != s.classes || s.dim.is_some_and(|d| d != dim) {
                    return Err(TrainError::Setup(format!(
                        "basis {} is {rows} × {dim}, but the model was trained with {} classes{} \
                         (pass the basis the model was trained with)",
                        p.display(),
                        s.classes,
                        s.dim
                            .map(|d| format!(" in {d} dimensions"))
                            .unwrap_or_default()
                    )));
                }
            }
            Some(b)
        }
        HeadKind::Fc => None,
    };
    let classes_n = match (&basis, head) {
        (Some(b), _) => b.dims()[0],
        (None, _) => saved
            .as_ref()
            .map(|s| s.classes)
            .or(fc_rows)
            .ok_or_else(|| TrainError::Checkpoint {
                path: weights.clone(),
                detail: "no fc.weight: cannot tell the class count".into(),
            })?,
    };
    let spec = ModelSpec {
        backbone,
        head,
        classes: classes_n,
        dim: basis.as_ref().map(|b| b.dims()[1]),
        tau,
    };
    let mut model = Classifier::new(&spec, basis.as_ref(), device, 0, imp)?;
    model.store.load(&tensors, &weights, false)?;
    // A run trained class-chunked is evaluated the same way.
    if let Some(r) = &recipe {
        if spec.head == HeadKind::Ebv {
            model.set_class_chunk(r.model.class_chunk)?;
        }
    }
    if let Some(names) = &classes {
        if names.len() != classes_n {
            return Err(TrainError::Setup(format!(
                "the run's classes.tsv lists {} classes but the model has {classes_n}",
                names.len()
            )));
        }
    }
    let mut overridden = Vec::new();
    if let Some(sv) = &saved {
        let mut differs = |flag: &str, given: Option<String>, own: String| {
            if let Some(g) = given.filter(|g| *g != own) {
                overridden.push(format!("{flag} {g} (the model's metadata says {own})"));
            }
        };
        differs(
            "--arch",
            over.arch.map(|a| a.name().to_string()),
            sv.backbone.arch.name().to_string(),
        );
        differs(
            "--width",
            over.width.map(|w| w.to_string()),
            sv.backbone.width.to_string(),
        );
        differs(
            "--small-stem",
            over.small_stem.map(|b| b.to_string()),
            sv.backbone.small_stem.to_string(),
        );
        differs(
            "--head",
            over.head.map(|h| format!("{h:?}").to_lowercase()),
            format!("{:?}", sv.head).to_lowercase(),
        );
        differs("--tau", over.tau.map(|t| t.to_string()), sv.tau.to_string());
    }
    Ok(LoadedModel {
        model,
        recipe,
        classes,
        weights,
        overridden,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint pruned between the lookup of `latest` and the read (the
    /// trainer published a newer one meanwhile) is looked up again; a run
    /// folder whose weights stay unreadable is still an error.
    #[test]
    fn a_checkpoint_pruned_under_the_reader_is_looked_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        let make = |name: &str| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            for f in checkpoint::FILES {
                std::fs::write(d.join(f), name).unwrap();
            }
        };
        make("epoch-0001");
        std::fs::write(root.join(checkpoint::LATEST), "epoch-0001").unwrap();
        let mut calls = 0;
        let (weights, run, text) = read_weights(dir.path(), |p| {
            calls += 1;
            if calls == 1 {
                // The trainer, between the lookup and the read.
                make("epoch-0002");
                std::fs::write(root.join(checkpoint::LATEST), "epoch-0002").unwrap();
                std::fs::remove_dir_all(root.join("epoch-0001")).unwrap();
            }
            std::fs::read_to_string(p).map_err(|e| crate::model::ModelError::Io {
                path: p.to_path_buf(),
                cause: e,
            })
        })
        .unwrap();
        assert_eq!(calls, 2);
        assert_eq!(text, "epoch-0002");
        assert!(weights.ends_with("epoch-0002/model.safetensors"));
        assert_eq!(run.as_deref(), Some(dir.path()));
        let mut calls = 0;
        let e = read_weights(dir.path(), |p| -> Result<(), _> {
            calls += 1;
            Err(crate::model::ModelError::Io {
                path: p.to_path_buf(),
                cause: std::io::Error::other("unreadable"),
            })
        });
        assert!(e.is_err());
        assert_eq!(calls, 1 + PRUNE_RETRIES);
    }
}
