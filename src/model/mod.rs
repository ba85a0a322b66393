//! The network: a train-aware ResNet with torchvision's names, and the EBV
//! or FC head on top.
//!
//! Dependencies point down only: this module uses `kernels` for its
//! convolutions, pooling and BatchNorm, and knows nothing of training
//! loops, data or shards.

mod batchnorm;
mod chunked;
mod classifier;
mod conv;
mod head;
mod linear;
mod params;
mod precision;
mod resnet;

use std::path::PathBuf;

pub use batchnorm::{BatchNorm2d, BN_EPS, BN_MOMENTUM};
pub(crate) use chunked::check_labels;
pub use classifier::{Classifier, ModelSpec};
pub use conv::Conv2d;
pub use head::{load_basis, Head, HeadKind};
pub use linear::Linear;
pub use params::{load_safetensors, save_safetensors, Entry, ParamKind, ParamStore};
pub use precision::Precision;
pub use resnet::{Arch, ResNet, ResNetConfig};

/// Why a model cannot be built, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model: {0}")]
    Build(String),
    #[error("{}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
    #[error("EBV basis {}: {detail}", path.display())]
    Basis { path: PathBuf, detail: String },
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
