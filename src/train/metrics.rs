//! Training metrics: running accumulators, the `metrics.jsonl` log and the
//! end-of-run `summary.json`.
//!
//! Invariants:
//! - every line of `metrics.jsonl` carries the optimiser step it was
//!   written at; on resume the log is cut back to the checkpoint's step, so
//!   a resumed run's log equals an uninterrupted run's (wall-clock fields
//!   such as images/s aside);
//! - accumulators are part of the checkpoint state, so averages that span
//!   an interruption are still exact (read back bit for bit: serde_json's
//!   `float_roundtrip`);
//! - the log holds whole lines: an append that fails is cut back off.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;

/// Sums over a log interval or an epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub loss_sum: f64,
    pub correct: u64,
    pub samples: u64,
    pub steps: u64,
}

impl Running {
    pub fn add(&mut self, loss: f64, correct: u64, samples: u64) {
        self.loss_sum += loss;
        self.correct += correct;
        self.samples += samples;
        self.steps += 1;
    }

    /// Mean per-step loss.
    pub fn loss(&self) -> f64 {
        if self.steps == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.steps as f64
        }
    }

    pub fn top1(&self) -> f64 {
        if self.samples == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.samples as f64
        }
    }
}

/// Result of one evaluation pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean cross-entropy without label smoothing.
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub images: u64,
    /// Samples the loader replaced because they failed to load (0 in
    /// evaluation, which leaves them out: `skipped`).
    pub replaced: u64,
    /// Images that could not be read and were left out of the metrics.
    #[serde(default)]
    pub skipped: u64,
    /// The first image left out, as "shard row N (key): why".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_skipped: Option<String>,
}

/// What one epoch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u64,
    pub step: u64,
    pub train_loss: f64,
    /// Top-1 of the training batches against each sample's own label
    /// (with mixup/cutmix on, the larger part of the target is usually
    /// that label).
    pub train_top1: f64,
    pub val: Option<EvalMetrics>,
    /// Training samples replaced because they failed to load.
    pub replaced: u64,
}

/// Appends JSON lines to `RUN/metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    /// Bytes of whole lines in the file.
    len: u64,
}

impl MetricsLog {
    /// Open for appending, first dropping every line written after
    /// `keep_up_to_step` (from a run that went on past its last
    /// checkpoint). None starts a fresh log.
    pub fn open(run: &Path, keep_up_to_step: Option<u64>) -> Result<MetricsLog, TrainError> {
        let path = run.join("metrics.jsonl");
        let kept = match keep_up_to_step {
            None => String::new(),
            Some(step) => match std::fs::read_to_string(&path) {
                Ok(text) => text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                            .is_some_and(|s| s <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(TrainError::io(&path, e)),
            },
        };
        crate::shard::write_replace(&path, kept.as_bytes(), false)
            .map_err(|e| TrainError::Other(e.to_string()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(MetricsLog {
            path,
            file,
            len: kept.len() as u64,
        })
    }

    pub fn write(&mut self, value: &serde_json::Value) -> Result<(), TrainError> {
        let mut line = value.to_string();
        line.push('\n');
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            // A line cut short (a full disk) is taken off again, so that
            // a reader following the log never meets half a line.
            let _ = self.file.set_len(self.len);
            return Err(TrainError::io(&self.path, e));
        }
        self.len += line.len() as u64;
        Ok(())
    }
}

/// Read every line of a metrics log.
pub fn read_log(path: &Path) -> Result<Vec<serde_json::Value>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Checkpoint {
                path: path.to_path_buf(),
                detail: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// The run's outcome, written as `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    pub epochs: u64,
    /// The final epoch's metrics.
    pub last_epoch: Option<EpochMetrics>,
    /// The epoch with the highest val top-1 (None without a val split).
    pub best_epoch: Option<EpochMetrics>,
    pub parameters: usize,
    pub train_seconds: f64,
    pub images_per_second: f64,
    /// Whether the run stopped before its last epoch (interrupt, step cap).
    pub interrupted: bool,
}

/// The epoch with the best val top-1 (the earliest on ties).
pub fn best_epoch(history: &[EpochMetrics]) -> Option<&EpochMetrics> {
    let mut best: Option<&EpochMetrics> = None;
    for e in history {
        let Some(v) = &e.val else { continue };
        if best.is_none_or(|b| b.val.as_ref().is_none_or(|bv| v.top1 > bv.top1)) {
            best = Some(e);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_cuts_the_log_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=5u64 {
            log.write(&serde_json::json!({"step": s, "loss": s as f64}))
                .unwrap();
        }
        drop(log);
        let mut log = MetricsLog::open(dir.path(), Some(3)).unwrap();
        log.write(&serde_json::json!({"step": 4, "loss": 40.0}))
            .unwrap();
        let lines = read_log(&dir.path().join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = lines.iter().map(|v| v["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert_eq!(lines[3]["loss"], 40.0);
    }

    #[test]
    fn best_epoch_is_the_highest_val_top1_earliest_on_ties() {
        let mk = |epoch, top1| EpochMetrics {
            epoch,
            val: Some(EvalMetrics {
                top1,
                ..EvalMetrics::default()
            }),
            ..EpochMetrics::default()
        };
        let h = vec![mk(0, 0.5), mk(1, 0.7), mk(2, 0.7), mk(3, 0.6)];
        assert_eq!(best_epoch(&h).unwrap().epoch, 1);
        assert!(best_epoch(&[EpochMetrics::default()]).is_none());
    }

    #[test]
    fn running_means() {
        let mut r = Running::default();
        r.add(2.0, 3, 4);
        r.add(4.0, 1, 4);
        assert_eq!(r.loss(), 3.0);
        assert_eq!(r.top1(), 0.5);
    }
}
