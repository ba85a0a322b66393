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
//! Invariants:
//! - `latest` names a complete folder or does not exist; a crash at any
//!   point leaves the previous checkpoint usable;
//! - a folder under a checkpoint's name (`epoch-NNNN`, `step-NNNNNNNNNN`)
//!   is complete or is garbage: a folder is removed by first renaming it
//!   to a hidden `.NAME.del` (atomic) and only then deleting its files, so
//!   a kill mid-delete leaves a hidden folder, which the next [`tidy`]
//!   removes, never a half-emptied checkpoint that a reader could take;
//!   folders of checkpoint names left incomplete by older versions are
//!   removed too, and readers refuse them ([`check_complete`]).

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
/// The files of a complete checkpoint folder.
pub const FILES: [&str; 3] = ["model.safetensors", "optimizer.safetensors", "state.json"];
/// Suffix of a checkpoint folder being written (`.NAME.tmp`) and of one
/// being deleted (`.NAME.del`).
const WRITING: &str = ".tmp";
const DELETING: &str = ".del";

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
    let tmp = root.join(format!(".{name}{WRITING}"));
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
        remove(&root, name)?;
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
            check_complete(&dir)?;
            Ok(Some(dir))
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

/// A checkpoint folder holds all of [`FILES`]; the error names the first
/// one missing.
pub fn check_complete(dir: &Path) -> Result<(), TrainError> {
    match FILES.iter().map(|f| dir.join(f)).find(|p| !p.is_file()) {
        None => Ok(()),
        Some(path) => Err(TrainError::Checkpoint {
            path,
            detail: "missing: the checkpoint folder is incomplete (what a save or a prune cut \
                     short by a crash leaves behind); use another checkpoint"
                .into(),
        }),
    }
}

/// Whether `name` is one of the names [`save`] gives (`epoch-N`, `step-N`).
fn is_checkpoint_name(name: &str) -> bool {
    ["epoch-", "step-"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Delete checkpoint folder `root/name`: renamed out of sight first, so
/// that a kill mid-delete never leaves a partial folder under its name.
fn remove(root: &Path, name: &str) -> Result<(), TrainError> {
    let trash = root.join(format!(".{name}{DELETING}"));
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))?;
    }
    let dir = root.join(name);
    std::fs::rename(&dir, &trash).map_err(|e| TrainError::io(&dir, e))?;
    std::fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))
}

/// Remove what crashed saves and prunes left in `RUN/checkpoints/`: hidden
/// folders being written (`.NAME.tmp`) or deleted (`.NAME.del`), temporary
/// files of `latest`, and folders of checkpoint names missing a file
/// (`latest` itself excepted: that is an error for the caller to report).
/// Only for the holder of the run's lock: a folder being written by
/// another process would look just like a crashed one.
pub fn tidy(run: &Path) -> Result<(), TrainError> {
    let root = run.join("checkpoints");
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::io(&root, e)),
    };
    let latest = std::fs::read_to_string(root.join(LATEST)).unwrap_or_default();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(&root, e))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let hidden = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(WRITING).or_else(|| n.strip_suffix(DELETING)))
            .is_some_and(is_checkpoint_name);
        let path = entry.path();
        if hidden {
            std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
        } else if is_checkpoint_name(&name)
            && name != latest.trim()
            && check_complete(&path).is_err()
        {
            remove(&root, &name)?;
        }
    }
    crate::shard::remove_replace_temps(&root, &[LATEST])
        .map_err(|e| TrainError::Other(e.to_string()))
}

/// Remove checkpoints beyond the newest `keep` by step (never `latest`),
/// after what crashes left behind ([`tidy`]).
pub fn prune(run: &Path, keep: usize) -> Result<(), TrainError> {
    tidy(run)?;
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join(LATEST)).unwrap_or_default();
    let mut found: Vec<(u64, String)> = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| TrainError::io(&root, e))? {
        let entry = entry.map_err(|e| TrainError::io(&root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        // The step lives in state.json; a folder without one is not ours
        // (incomplete ones of our names went in `tidy`).
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
        remove(&root, &name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            step,
            sampler: SamplerState::new(1),
            seed: 1,
            interval: Running::default(),
            epoch_acc: Running::default(),
            history: Vec::new(),
            basis_sha256: None,
            data: None,
        }
    }

    /// A fake checkpoint folder: `files` of [`FILES`], state.json at `step`.
    fn folder(root: &Path, name: &str, step: u64, files: &[&str]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            let bytes = if *f == "state.json" {
                serde_json::to_vec(&state(step)).unwrap()
            } else {
                b"tensors".to_vec()
            };
            std::fs::write(dir.join(f), bytes).unwrap();
        }
    }

    fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The f64 accumulators and history come back from state.json bit for
    /// bit (serde_json's default parser reads these two values one ULP
    /// off), so a resumed run's metrics equal an uninterrupted run's.
    #[test]
    fn state_json_round_trips_floats_exactly() {
        let mut s = state(7);
        s.epoch_acc.loss_sum = 10.016967058181763;
        s.interval.loss_sum = 3.6625969409942627;
        s.history.push(EpochMetrics {
            train_loss: 3.1534459590911865,
            train_top1: 0.1 + 0.2,
            ..EpochMetrics::default()
        });
        let back: TrainState =
            serde_json::from_slice(&serde_json::to_vec_pretty(&s).unwrap()).unwrap();
        let bits = |t: &TrainState| {
            [
                t.epoch_acc.loss_sum,
                t.interval.loss_sum,
                t.history[0].train_loss,
                t.history[0].train_top1,
            ]
            .map(f64::to_bits)
        };
        assert_eq!(bits(&back), bits(&s));
    }

    /// A prune killed mid-delete (old versions: a checkpoint folder with
    /// some files gone; now: a hidden `.NAME.del`) is finished by the next
    /// tidy or prune, and `keep` holds again; folders not of our names and
    /// `latest` are left alone.
    #[test]
    fn prune_finishes_what_a_killed_prune_left() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let root = run.join("checkpoints");
        folder(&root, "epoch-0001", 4, &FILES[..2]);
        folder(&root, "epoch-0002", 8, &FILES[..1]);
        folder(&root, "epoch-0003", 12, &FILES);
        folder(&root, "epoch-0004", 16, &FILES);
        folder(&root, ".epoch-0000.del", 0, &FILES[..1]);
        folder(&root, ".step-0000000005.tmp", 5, &FILES);
        folder(&root, "mine", 0, &FILES[..1]);
        std::fs::write(root.join(".latest.77.tmp"), b"epoch-0003").unwrap();
        std::fs::write(root.join(LATEST), b"epoch-0004").unwrap();
        let e = check_complete(&root.join("epoch-0001"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("epoch-0001/state.json") && e.contains("incomplete"),
            "{e}"
        );
        prune(run, 2).unwrap();
        assert_eq!(names(&root), ["epoch-0003", "epoch-0004", "latest", "mine"]);
        // The next save's prune removes the oldest by renaming it first.
        folder(&root, "epoch-0005", 20, &FILES);
        std::fs::write(root.join(LATEST), b"epoch-0005").unwrap();
        prune(run, 2).unwrap();
        assert_eq!(names(&root), ["epoch-0004", "epoch-0005", "latest", "mine"]);
        // An incomplete `latest` is an error to report, not garbage.
        std::fs::remove_file(root.join("epoch-0005/optimizer.safetensors")).unwrap();
        tidy(run).unwrap();
        assert!(root.join("epoch-0005").is_dir());
        let e = latest(run).unwrap_err().to_string();
        assert!(e.contains("optimizer.safetensors"), "{e}");
    }
}
