//! Data-parallel training: one process per GPU, gradients summed over
//! NCCL (cudarc's bindings, through candle) and averaged, in buckets.
//!
//! Invariants: every rank holds the same weights at every step (same seed
//! and init, and the same averaged gradient); each rank reads a disjoint
//! part of each epoch (the sampler's rank/world partition); only rank 0
//! writes the run folder. Nothing here moves bytes between machines except
//! through NCCL: the rendezvous only hands NCCL its 128-byte id through a
//! file.
//!
//! The host-side parts (world from the environment, bucketing, launcher
//! arguments, rendezvous) are plain Rust and tested on CPU; the in-process
//! [`ThreadGroup`] stands in for NCCL in those tests.

mod bucket;
mod collective;
mod launch;
#[cfg(feature = "cuda")]
mod nccl;
mod rendezvous;
mod replicas;
mod world;

pub use bucket::{GradBuckets, DEFAULT_BUCKET_BYTES};
pub use collective::{Collective, Solo, ThreadGroup};
pub use launch::{launch_local, rank_args, rank_env};
#[cfg(feature = "cuda")]
pub use nccl::NcclGroup;
pub use rendezvous::{publish, wait_for, RENDEZVOUS_ENV, RENDEZVOUS_TIMEOUT_ENV};
pub use replicas::{broadcast_from_rank0, first_divergence};
pub use world::World;

/// Why a distributed run cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("environment variable {var}: {detail}")]
    Env { var: &'static str, detail: String },
    #[error("rendezvous file {}: {detail}", path.display())]
    Rendezvous {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("launcher: {0}")]
    Launch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
