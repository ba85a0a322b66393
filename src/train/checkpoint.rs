//! Checkpoints: one folder per save under `RUN/checkpoints/`, written
//! under a temporary name and renamed into place, then published by
//! atomically replacing `RUN/checkpoints/latest`.
//!
//! A checkpoint folder holds:
//! - `model.safetensors`: every model tensor under torchvision's names and
//!   nothing else, so `resnet50().load_state_dict(load_file(...))` takes it
//!   as it is (FC head; the EBV head's `fc` is Linear(2048 → d)); the
//!   metadata carries the model spec as JSON under `ebv.spec`;
//! - `optimizer.safetensors`: the optimiser's state tensors;
//! - `state.json`: step, epoch, the loader's sampler state, the seed, the
//!   metric accumulators and the best epoch so far — everything a resumed
//!   run needs to produce exactly the metrics an uninterrupted one would.
//!
//! Invariant: `latest` names a complete folder or does not exist; a crash
//! at any point leaves the previous checkpoint usable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::SamplerState;
use crate::model::{load_safetensors, save_safetensors, Classifier, ModelSpec};

use super::metrics::{EpochMetrics, Running};
use super::optim::Optimizer;
use super::TrainError;

/// Metadata key holding the model spec in `model.safetensors`.
pub const SPEC_KEY: &str = "ebv.spec";
pub const LATEST: &str = "latest";

/// Everything besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// Where the loader resumes.
    pub sampler: SamplerState,
    pub seed: u64,
    /// Accumulators of the current log interval and epoch.
    pub interval: Running,
    pub epoch_acc: Running,
    /// Per-epoch results so far.
    pub history: Vec<EpochMetrics>,
    /// SHA-256 of the EBV basis trained against (None for FC).
    pub basis_sha256: Option<String>,
    /// The shards trained on, so that a resume on other data is refused
    /// (None in checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
}

/// What identifies a run's training data: its classes in label order and
/// the size of each split. Not the folder (shards may move) nor the
/// packing options (a repack of the same images in another encoding is the
/// same data), but anything that changes what a label or a loader position
/// means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    pub classes: usize,
    /// SHA-256 of the class names, one per line, in label order.
    pub classes_sha256: String,
    pub train_rows: u64,
    pub val_rows: u64,
}

impl DataIdentity {
    pub fn of(set: &crate::shard::ShardSet) -> DataIdentity {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for name in set.classes() {
            h.update(name.as_bytes());
            h.update(b"\n");
        }
        DataIdentity {
            classes: set.classes().len(),
            classes_sha256: hex::encode(h.finalize()),
            train_rows: set.num_rows(crate::shard::Split::Train),
            val_rows: set.num_rows(crate::shard::Split::Val),
        }
    }
}

impl std::fmt::Display for DataIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} classes (names sha256 {}…), {} train and {} val rows",
            self.classes,
            &self.classes_sha256[..self.classes_sha256.len().min(12)],
            self.train_rows,
            self.val_rows
        )
    }
}

/// Read a checkpoint's `state.json` alone (no tensors).
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    serde_json::from_slice(&text).map_err(|e| TrainError::Checkpoint {
        path: state_path,
        detail: e.to_string(),
    })
}

/// Save the model, optimiser and state as checkpoint `name` and make it
/// the latest.
pub fn save(
    run: &Path,
    name: &str,
    model: &Classifier,
    optim: &Optimizer,
    state: &TrainState,
) -> Result<PathBuf, TrainError> {
    let root = run.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    save_model(&tmp.join("model.safetensors"), model)?;
    let opt = optim.state_tensors()?;
    save_safetensors(&tmp.join("optimizer.safetensors"), &opt, &BTreeMap::new())?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Other(e.to_string()))?;
    crate::shard::write_replace(&tmp.join("state.json"), &json, true)
        .map_err(|e| TrainError::Other(e.to_string()))?;
    let dst = root.join(name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| TrainError::io(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| TrainError::io(&dst, e))?;
    crate::shard::write_replace(&root.join(LATEST), name.as_bytes(), true)
        .map_err(|e| TrainError::Other(e.to_string()))?;
    Ok(dst)
}

/// Write the model alone (torchvision names + spec metadata).
pub fn save_model(path: &Path, model: &Classifier) -> Result<(), TrainError> {
    let mut meta = BTreeMap::new();
    meta.insert(
        SPEC_KEY.to_string(),
        serde_json::to_string(model.spec()).map_err(|e| TrainError::Other(e.to_string()))?,
    );
    meta.insert("format".into(), "pt".into());
    model.store.save(path, &meta)?;
    Ok(())
}

/// The folder `latest` points to, if any.
pub fn latest(run: &Path) -> Result<Option<PathBuf>, TrainError> {
    let root = run.join("checkpoints");
    let p = root.join(LATEST);
    match std::fs::read_to_string(&p) {
        Ok(name) => {
            let dir = root.join(name.trim());
            if dir.join("state.json").is_file() {
                Ok(Some(dir))
            } else {
                Err(TrainError::Checkpoint {
                    path: dir,
                    detail: "named by checkpoints/latest but incomplete".into(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(&p, e)),
    }
}

/// Load a checkpoint folder into `model` and `optim`; returns its state.
pub fn restore(
    dir: &Path,
    model: &Classifier,
    optim: &mut Optimizer,
) -> Result<TrainState, TrainError> {
    let model_path = dir.join("model.safetensors");
    let (tensors, meta) = load_safetensors(&model_path)?;
    if let Some(spec) = meta.get(SPEC_KEY) {
        let spec: ModelSpec = serde_json::from_str(spec).map_err(|e| TrainError::Checkpoint {
            path: model_path.clone(),
            detail: format!("bad {SPEC_KEY}: {e}"),
        })?;
        if &spec != model.spec() {
            return Err(TrainError::Checkpoint {
                path: model_path,
                detail: format!(
                    "saved for model {spec:?}, the run builds {:?}",
                    model.spec()
                ),
            });
        }
    }
    model.store.load(&tensors, &model_path, false)?;
    let opt_path = dir.join("optimizer.safetensors");
    let (opt, _) = load_safetensors(&opt_path)?;
    optim.load_state(&opt).map_err(|e| TrainError::Checkpoint {
        path: opt_path,
        detail: e.to_string(),
    })?;
    read_state(dir)
}

/// Remove checkpoints beyond the newest `keep` by step (never `latest`).
pub fn prune(run: &Path, keep: usize) -> Result<(), TrainError> {
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join(LATEST)).unwrap_or_default();
    let mut found: Vec<(u64, String)> = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| TrainError::io(&root, e))? {
        let entry = entry.map_err(|e| TrainError::io(&root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        // The step lives in state.json; a folder without one is not ours.
        let Ok(text) = std::fs::read(entry.path().join("state.json")) else {
            continue;
        };
        if let Ok(state) = serde_json::from_slice::<TrainState>(&text) {
            found.push((state.step, name));
        }
    }
    found.sort();
    let excess = found.len().saturating_sub(keep.max(1));
    for (_, name) in found.into_iter().take(excess) {
        if name == latest.trim() {
            continue;
        }
        let p = root.join(&name);
        std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
    }
    Ok(())
}
