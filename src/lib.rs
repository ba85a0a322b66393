//! ebv: train image classifiers over a very large number of classes with
//! Equiangular Basis Vectors (Shen, Sun, Wei, CVPR 2023).
//!
//! Layers, and the one direction their dependencies point:
//! binaries (`src/bin/`) → `train` → `data` / `model` → `shard` / `image` / `kernels`;
//! `pack` / `basis` / `stats` → `shard` / `image` → std + format crates.
//! The shard format knows nothing of training; `image` knows nothing of shards.

pub mod basis;
pub mod data;
pub mod file_kind;
pub mod image;
pub mod kernels;
pub mod lock;
pub mod memory;
pub mod model;
pub mod pack;
pub mod progress;
pub mod shard;
pub mod stats;
pub mod train;
