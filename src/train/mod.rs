//! Training, evaluation and prediction: the loop that streams shards
//! through the loader into a [`crate::model::Classifier`], with recipes,
//! optimisers, schedules, checkpoints and metrics.
//!
//! Dependencies: `train` → `data` / `model` → `shard` / `image` /
//! `kernels`. Nothing below this module knows about training.

mod checkpoint;
mod config;
pub mod dist;
mod eval;
mod loss;
mod metrics;
mod optim;
mod plot;
mod predict;
mod prefetch;
mod schedule;
mod trainer;

use std::path::{Path, PathBuf};

pub use checkpoint::{latest, restore, save, save_model, DataIdentity, TrainState, SPEC_KEY};
pub use config::{
    DataSection, LossSection, ModelSection, OptimName, OptimSection, Recipe, RunSection,
    ScheduleSection,
};
pub use eval::{evaluate, open_model, LoadedModel, ModelFlags, ModelOverrides};
pub use loss::{hard_cross_entropy, soft_cross_entropy, topk_correct};
pub use metrics::{best_epoch, read_log, EpochMetrics, EvalMetrics, MetricsLog, Running, Summary};
pub use optim::{clip_grad_norm, AdamWConfig, Optimizer, Param, SgdConfig};
pub use plot::write_curves;
pub use predict::{predict, Prediction};
pub use schedule::Schedule;
pub use trainer::{
    bench_steps, check_precision, configure_runtime, install_interrupt_handler, interrupted, train,
    train_with, BenchReport, TrainOptions, TrainOutcome,
};

/// Why training, evaluation or prediction cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("recipe ({origin}): {detail}")]
    Recipe { origin: String, detail: String },
    #[error("{0}")]
    Setup(String),
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Read(#[from] crate::shard::ReadError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Dist(#[from] dist::DistError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
}
