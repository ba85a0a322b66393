//! The streaming loader: shards to training batches.
//!
//! [`Loader`] maps a [`crate::shard::ShardSet`], draws each epoch's order
//! with a [`Sampler`] (global permutation or buffer shuffle; rank/world
//! partition padded by wrapping), and a pool of worker threads renders
//! batches ahead of the consumer through bounded queues: JPEG decoded from
//! the mapped slice, raw pixels read from it, crop/resize/flip/normalise
//! written once into a preallocated f32 NCHW buffer that becomes a candle
//! tensor without a copy.
//!
//! Invariants:
//! - every random choice comes from a [`SampleRng`] keyed by (seed, epoch,
//!   index): the batches depend only on (seed, epoch, rank, world) and the
//!   configuration, never on the worker count or timing;
//! - [`SamplerState`] (seed, epoch, position) resumes exactly;
//! - a sample that fails to load is replaced by a deterministic other row,
//!   reported as a [`SampleError`] (shard, row, key) and counted in the
//!   [`EpochSummary`]; workers never panic on data and dropping the
//!   iterator early stops and joins them.

mod augment;
mod batch;
mod chw;
mod loader;
mod rng;
mod sampler;

pub use augment::{
    apply_mix, batch_mix, centre_fallback, erase, eval_crop, random_erasing_box,
    random_resized_crop_box, Augment, BatchMix, Crop, CropBox, Renderer, SamplePlan, IMAGENET_MEAN,
    IMAGENET_STD, MAX_SIDE,
};
pub use batch::Batch;
pub use chw::write_chw;
pub use loader::{
    default_workers, EpochIter, EpochSummary, Loader, LoaderConfig, OnError, SampleError,
};
pub use rng::{mix64, SampleRng, Stream};
pub use sampler::{Layout, Sampler, SamplerState, Shuffle};

use crate::shard::ReadError;

/// Why the loader cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("loader configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A sample and every replacement tried for it failed.
    #[error("epoch {epoch}, position {position}: sample and {attempts} replacements failed to load; last error: {last}")]
    Unrecoverable {
        epoch: u64,
        position: u64,
        attempts: u32,
        last: Box<SampleError>,
    },
    /// A row's label is not below the shards' class count.
    #[error("{shard}: row {row}: label {label} is out of range: the shards have {classes} classes (manifest.json num_classes, classes.tsv)")]
    LabelOutOfRange {
        shard: String,
        row: u64,
        label: u32,
        classes: u64,
    },
    /// A worker thread ended without delivering its batch (a bug: workers
    /// do not panic on data).
    #[error("epoch {epoch}: worker for batch {batch} ended unexpectedly")]
    WorkerLost { epoch: u64, batch: u64 },
}
