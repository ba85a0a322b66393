//! Training recipes: TOML files in `pipelines/`, overridden by CLI flags,
//! resolved into one [`Recipe`] that is written into the run folder.
//!
//! Invariants:
//! - every section rejects unknown keys (`deny_unknown_fields`): a typo in a
//!   recipe or a `--set` is an error naming the key, never a silently
//!   ignored setting;
//! - a value missing from a recipe takes the paper's ImageNet default
//!   (`Recipe::default()`), so a recipe lists only what it changes;
//! - overrides are applied to the TOML document before it is typed, so a
//!   `--set section.key=value` is checked exactly like the file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{Augment, LoaderConfig, Shuffle, IMAGENET_MEAN, IMAGENET_STD};
use crate::kernels::{ConvAlgo, KernelImpl};
use crate::model::{Arch, HeadKind, Precision, ResNetConfig};
use crate::shard::Split;

use super::TrainError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// resnet18, resnet34 or resnet50.
    pub arch: Arch,
    /// Width of the first stage (torchvision: 64).
    pub width: usize,
    /// 3×3/s1 stem without max-pool, for small images.
    pub small_stem: bool,
    /// `ebv` (fixed basis, learned projection) or `fc` (learned classifier).
    pub head: HeadKind,
    /// EBV dimension d; must equal the basis file's columns (0: take it
    /// from the file).
    pub dim: usize,
    /// EBV temperature τ.
    pub tau: f64,
    /// Score the EBV head this many classes at a time (0: all at once), so
    /// that a step never holds an N × C logit matrix: for C near 10⁶ on a
    /// GPU with little memory. Same loss, gradients and metrics. Either way
    /// the loss's gradient with respect to the features is taken in closed
    /// form, so the fixed basis never gets one.
    pub class_chunk: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            arch: Arch::Resnet50,
            width: 64,
            small_stem: false,
            head: HeadKind::Ebv,
            dim: 0,
            tau: 0.07,
            class_chunk: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Training and evaluation side (images are size × size).
    pub size: u32,
    /// Global batch size (all ranks together).
    pub batch: usize,
    /// Evaluation batch size.
    pub eval_batch: usize,
    /// Loader worker threads (0: all cores but one).
    pub workers: usize,
    /// Finished batches allowed to wait for the trainer.
    pub prefetch: usize,
    /// `global`, `none` or `buffer:N`.
    pub shuffle: String,
    /// RandomResizedCrop; off: resize + centre crop as in evaluation.
    pub random_resized_crop: bool,
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
    /// Horizontal flip probability.
    pub flip: f64,
    /// RandomErasing probability.
    pub erasing: f64,
    /// Mixup Beta(α, α); 0 = off.
    pub mixup: f64,
    /// CutMix Beta(α, α); 0 = off. With both on, one per batch.
    pub cutmix: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Evaluation: shorter side resized to this before the centre crop
    /// (0: `size`).
    pub eval_resize: u32,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            size: 224,
            batch: 1024,
            eval_batch: 256,
            workers: 0,
            prefetch: 4,
            shuffle: "global".into(),
            random_resized_crop: true,
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip: 0.5,
            erasing: 0.1,
            mixup: 0.2,
            cutmix: 1.0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            eval_resize: 0,
        }
    }
}

/// Optimiser name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimName {
    Sgd,
    Adamw,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    pub name: OptimName,
    /// Learning rate at batch `lr_batch`; the run uses
    /// lr · batch / lr_batch (linear scaling rule).
    pub lr: f64,
    pub lr_batch: usize,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Apply weight decay to BatchNorm parameters and biases too.
    pub decay_bn_and_bias: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub clip_grad_norm: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        OptimSection {
            name: OptimName::Sgd,
            lr: 0.5,
            lr_batch: 1024,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 2e-5,
            decay_bn_and_bias: true,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_grad_norm: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub epochs: u64,
    /// Linear warm-up length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Warm-up starts at this fraction of the learning rate.
    pub warmup_start: f64,
    /// Cosine floor.
    pub min_lr: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            epochs: 100,
            warmup_epochs: 5.0,
            warmup_start: 0.01,
            min_lr: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossSection {
    pub label_smoothing: f64,
}

impl Default for LossSection {
    fn default() -> Self {
        LossSection {
            label_smoothing: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub seed: u64,
    /// Evaluate on the val split every this many epochs (0 = never; the
    /// last epoch is always evaluated when a val split exists).
    pub eval_every: u64,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Checkpoints kept: the newest this many by step (at least 1).
    pub keep_checkpoints: usize,
    /// `ebv` (this crate's CPU kernels) or `candle` (candle's own ops).
    pub kernels: String,
    /// How `ebv` kernels convolve on the CPU: `auto` (Winograd for 3×3
    /// stride-1 layers, im2col + GEMM elsewhere) or `im2col` (everywhere).
    pub conv_algo: String,
    /// `f32`, or `bf16` mixed precision (bf16 activations, convolutions
    /// and matmuls; f32 weights, optimiser state, BatchNorm statistics and
    /// loss). Meant for GPUs: on CPUs candle's bf16 ops are slow.
    pub precision: Precision,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            seed: 0,
            eval_every: 1,
            log_every: 50,
            keep_checkpoints: 2,
            kernels: "ebv".into(),
            conv_algo: "auto".into(),
            precision: Precision::F32,
        }
    }
}

/// A whole recipe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    pub model: ModelSection,
    pub data: DataSection,
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    pub loss: LossSection,
    pub run: RunSection,
}

impl Recipe {
    /// Read a recipe file and apply `key=value` overrides (`section.key`,
    /// value in TOML syntax; a bare word is taken as a string).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Recipe, TrainError> {
        let mut doc: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| TrainError::Io {
                    path: p.to_path_buf(),
                    cause: e,
                })?;
                toml::from_str(&text).map_err(|e| TrainError::Recipe {
                    origin: p.display().to_string(),
                    detail: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            apply_override(&mut doc, o)?;
        }
        let origin = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let recipe: Recipe = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::Recipe {
                origin: format!("{origin} with overrides {overrides:?}"),
                detail: e.to_string(),
            })?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Reject values that would fail later, before any work starts.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |key: &str, why: String| {
            Err(TrainError::Recipe {
                origin: key.to_string(),
                detail: why,
            })
        };
        if self.model.width == 0 {
            return bad("model.width", "must be at least 1".into());
        }
        if !(self.model.tau.is_finite() && self.model.tau > 0.0) {
            return bad(
                "model.tau",
                format!("must be positive and finite, got {}", self.model.tau),
            );
        }
        if self.data.batch == 0 || self.data.eval_batch == 0 {
            return bad("data.batch", "batch sizes must be at least 1".into());
        }
        if let Err((field, why)) = self.augment().check() {
            return bad(&format!("data.{field}"), why);
        }
        if let Err(e) = self.data.shuffle.parse::<Shuffle>() {
            return bad("data.shuffle", e);
        }
        if !(self.optim.lr.is_finite() && self.optim.lr > 0.0) || self.optim.lr_batch == 0 {
            return bad(
                "optim.lr",
                format!(
                    "lr and lr_batch must be positive (and lr finite), got lr {} at lr_batch {}",
                    self.optim.lr, self.optim.lr_batch
                ),
            );
        }
        if self.schedule.epochs == 0 {
            return bad("schedule.epochs", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.loss.label_smoothing) {
            return bad(
                "loss.label_smoothing",
                format!("must be in [0, 1), got {}", self.loss.label_smoothing),
            );
        }
        self.kernels()?;
        self.conv_algo()?;
        Ok(())
    }

    pub fn conv_algo(&self) -> Result<ConvAlgo, TrainError> {
        self.run
            .conv_algo
            .parse()
            .map_err(|detail| TrainError::Recipe {
                origin: "run.conv_algo".into(),
                detail,
            })
    }

    pub fn kernels(&self) -> Result<KernelImpl, TrainError> {
        match self.run.kernels.as_str() {
            "ebv" => Ok(KernelImpl::Ebv),
            "candle" => Ok(KernelImpl::Candle),
            k => Err(TrainError::Recipe {
                origin: "run.kernels".into(),
                detail: format!("unknown kernels {k:?} (expected ebv or candle)"),
            }),
        }
    }

    pub fn backbone(&self) -> ResNetConfig {
        ResNetConfig {
            arch: self.model.arch,
            width: self.model.width,
            small_stem: self.model.small_stem,
        }
    }

    /// The learning rate after linear scaling to this batch size.
    pub fn scaled_lr(&self) -> f64 {
        self.optim.lr * self.data.batch as f64 / self.optim.lr_batch as f64
    }

    /// The training transforms. Only an α of exactly 0 turns mixup/cutmix
    /// off, so that a negative or NaN α reaches [`Augment::check`] instead
    /// of silently meaning "off".
    fn augment(&self) -> Augment {
        let d = &self.data;
        Augment {
            size: d.size,
            random_resized_crop: d.random_resized_crop,
            scale: (d.scale[0], d.scale[1]),
            ratio: (d.ratio[0], d.ratio[1]),
            flip_p: d.flip,
            eval_resize: d.eval_resize,
            mean: d.mean,
            std: d.std,
            erasing_p: d.erasing,
            mixup_alpha: (d.mixup != 0.0).then_some(d.mixup),
            cutmix_alpha: (d.cutmix != 0.0).then_some(d.cutmix),
        }
    }

    /// The training loader configuration for rank `rank` of `world`.
    pub fn train_loader(&self, rank: u32, world: u32) -> Result<LoaderConfig, TrainError> {
        let d = &self.data;
        let per_rank = d.batch / world.max(1) as usize;
        if per_rank == 0 || !d.batch.is_multiple_of(world.max(1) as usize) {
            return Err(TrainError::Recipe {
                origin: "data.batch".into(),
                detail: format!("batch {} is not a multiple of the {world} ranks", d.batch),
            });
        }
        let mut cfg = LoaderConfig::train(d.size, per_rank);
        cfg.augment = self.augment();
        cfg.shuffle = d.shuffle.parse().map_err(|e: String| TrainError::Recipe {
            origin: "data.shuffle".into(),
            detail: e,
        })?;
        if d.workers > 0 {
            cfg.workers = d.workers;
        }
        cfg.prefetch = d.prefetch;
        cfg.rank = rank;
        cfg.world = world;
        cfg.split = Split::Train;
        Ok(cfg)
    }

    /// The evaluation loader configuration (the whole val split, rank 0).
    pub fn eval_loader(&self) -> LoaderConfig {
        let d = &self.data;
        let mut cfg = LoaderConfig::eval(d.size, d.eval_resize, d.eval_batch);
        cfg.augment.mean = d.mean;
        cfg.augment.std = d.std;
        if d.workers > 0 {
            cfg.workers = d.workers;
        }
        cfg.prefetch = d.prefetch;
        cfg
    }

    /// The dotted keys (`data.workers`) whose values differ between `self`
    /// and `other`, sorted.
    pub fn differences(&self, other: &Recipe) -> Vec<String> {
        fn walk(a: &toml::Value, b: &toml::Value, path: &str, out: &mut Vec<String>) {
            match (a, b) {
                (toml::Value::Table(x), toml::Value::Table(y)) => {
                    let keys: std::collections::BTreeSet<&String> =
                        x.keys().chain(y.keys()).collect();
                    for k in keys {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        match (x.get(k), y.get(k)) {
                            (Some(u), Some(v)) => walk(u, v, &p, out),
                            _ => out.push(p),
                        }
                    }
                }
                _ if a != b => out.push(path.to_string()),
                _ => {}
            }
        }
        let as_value = |r: &Recipe| toml::Value::try_from(r).ok();
        let mut out = Vec::new();
        match (as_value(self), as_value(other)) {
            (Some(a), Some(b)) => walk(&a, &b, "", &mut out),
            _ if self != other => out.push("(the recipe)".into()),
            _ => {}
        }
        out
    }

    /// The recipe as TOML text (what goes into the run folder).
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Recipe {
            origin: "resolved recipe".into(),
            detail: e.to_string(),
        })
    }
}

/// `section.key=value` into the document; the value is parsed as TOML,
/// falling back to a string so `--set model.arch=resnet18` works unquoted.
fn apply_override(doc: &mut toml::Table, o: &str) -> Result<(), TrainError> {
    let bad = |detail: String| TrainError::Recipe {
        origin: format!("--set {o}"),
        detail,
    };
    let (key, raw) = o
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value".into()))?;
    let (section, field) = key
        .trim()
        .split_once('.')
        .ok_or_else(|| bad("the key must be section.key, e.g. optim.lr".into()))?;
    let raw = raw.trim();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").ok_or_else(|| bad("empty value".into()))?,
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let entry = doc
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let table = entry
        .as_table_mut()
        .ok_or_else(|| bad(format!("{section} is not a section")))?;
    // An integer where the field is a float (`--set optim.lr=1`) is the
    // user's intent, not an error: widen it when the default is a float.
    let value = match (&value, float_field(section, field)) {
        (toml::Value::Integer(i), true) => toml::Value::Float(*i as f64),
        _ => value,
    };
    table.insert(field.to_string(), value);
    Ok(())
}

/// Whether `section.field` holds an f64 in [`Recipe`].
fn float_field(section: &str, field: &str) -> bool {
    let Ok(toml::Value::Table(doc)) = toml::Value::try_from(Recipe::default()) else {
        return false;
    };
    matches!(
        doc.get(section).and_then(|s| s.get(field)),
        Some(toml::Value::Float(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_imagenet_recipe() {
        let r = Recipe::default();
        assert_eq!(r.model.arch, Arch::Resnet50);
        assert_eq!(r.optim.lr, 0.5);
        assert_eq!(r.optim.lr_batch, 1024);
        assert_eq!(r.optim.weight_decay, 2e-5);
        assert_eq!(r.schedule.warmup_epochs, 5.0);
        assert_eq!(r.schedule.warmup_start, 0.01);
        assert_eq!(r.loss.label_smoothing, 0.1);
        assert_eq!(r.data.mixup, 0.2);
        assert_eq!(r.data.cutmix, 1.0);
        assert_eq!(r.data.erasing, 0.1);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[optim]\nlearning_rate = 0.1\n").unwrap();
        let e = Recipe::load(Some(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
        let e = Recipe::load(None, &["optim.lrr=0.1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = Recipe::load(None, &["nosection.x=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nosection"), "{e}");
    }

    #[test]
    fn overrides_win_and_integers_widen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[optim]\nlr = 0.1\n[model]\narch = \"resnet18\"\n").unwrap();
        let r = Recipe::load(
            Some(&p),
            &[
                "optim.lr=1".into(),
                "model.head=fc".into(),
                "data.batch=64".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.optim.lr, 1.0);
        assert_eq!(r.model.head, HeadKind::Fc);
        assert_eq!(r.model.arch, Arch::Resnet18);
        assert_eq!(r.data.batch, 64);
        // The linear scaling rule.
        assert!((r.scaled_lr() - 1.0 * 64.0 / 1024.0).abs() < 1e-15);
        // The resolved recipe reads back to itself.
        let back: Recipe = toml::from_str(&r.to_toml().unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn bad_values_are_rejected_before_training() {
        assert!(Recipe::load(None, &["model.tau=0".into()]).is_err());
        assert!(Recipe::load(None, &["data.shuffle=sideways".into()]).is_err());
        assert!(Recipe::load(None, &["run.kernels=mkl".into()]).is_err());
        let e = Recipe::load(None, &["run.conv_algo=fft".into()]).unwrap_err();
        assert!(e.to_string().contains("run.conv_algo"), "{e}");
        let r = Recipe::load(None, &["run.conv_algo=im2col".into()]).expect("im2col");
        assert_eq!(r.conv_algo().expect("algo"), ConvAlgo::Im2col);
        assert!(Recipe::load(None, &["model.arch=resnet101".into()]).is_err());
    }

    /// Each value that used to be accepted and then divided by zero,
    /// aborted on a huge allocation or was silently read as "off" is an
    /// error naming its key.
    #[test]
    fn out_of_range_data_values_name_their_key() {
        for (set, key) in [
            ("data.std=[0.0, 0.0, 0.0]", "data.std"),
            ("data.std=[0.2, -0.1, 0.2]", "data.std"),
            ("data.mean=[0.5, nan, 0.5]", "data.mean"),
            ("data.size=100000", "data.size"),
            ("data.size=0", "data.size"),
            ("data.eval_resize=9000", "data.eval_resize"),
            ("data.mixup=-1", "data.mixup"),
            ("data.cutmix=nan", "data.cutmix"),
            ("data.erasing=5", "data.erasing"),
            ("data.flip=2", "data.flip"),
            ("data.flip=-0.5", "data.flip"),
            ("data.scale=[0.5, 0.1]", "data.scale"),
            ("model.tau=inf", "finite"),
            ("optim.lr=inf", "optim.lr"),
        ] {
            let e = Recipe::load(None, &[set.into()])
                .map(|_| ())
                .expect_err(set)
                .to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        // The limits themselves are fine.
        Recipe::load(
            None,
            &[
                "data.size=8192".into(),
                "data.flip=1".into(),
                "data.erasing=0".into(),
                "data.mixup=0".into(),
            ],
        )
        .expect("values at the limits");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// Every recipe in `pipelines/` parses, and the paper's two say what
    /// the paper says.
    #[test]
    fn shipped_recipes_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Recipe::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 3);
        let r = Recipe::load(Some(&dir.join("10w-classes.toml")), &[]).unwrap();
        assert_eq!((r.model.dim, r.model.tau), (5000, 0.05));
        assert_eq!(r.model.arch, Arch::Resnet50);
        let r = Recipe::load(Some(&dir.join("imagenet-1k.toml")), &[]).unwrap();
        assert_eq!(
            (r.model.dim, r.optim.lr, r.optim.lr_batch),
            (1000, 0.5, 1024)
        );
        assert_eq!((r.schedule.epochs, r.schedule.warmup_epochs), (100, 5.0));
    }
}
