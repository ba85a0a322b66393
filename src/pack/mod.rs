//! `ebv-pack`: a zip or folder of labelled images in, shard format v1 out.
//!
//! Invariants: the output is a pure function of (source, options, seed) —
//! byte-identical whatever the thread count; memory stays bounded (entries
//! are streamed in chunks); every source entry becomes a row or a rejected
//! entry in the manifest; an interrupted run resumes from its last complete
//! shard.

mod encode;
mod idx;
mod layout;
mod packer;
mod source;

use std::path::{Path, PathBuf};

pub use encode::{EncodeConfig, Progressive, Verify};
pub use layout::{LayoutKind, ListColumns};
pub use packer::{pack, PackOptions, PackSummary, SplitSummary};

/// Errors that stop a pack run (bad input entries never do: they are
/// rejected and recorded instead).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The cause is part of the message and deliberately not exposed as the
    /// error's `source()`: callers print the chain (`{:#}`), which would
    /// repeat it.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: unreadable archive: {detail}")]
    Archive { path: PathBuf, detail: String },
    #[error("{0}")]
    Layout(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NoSpace(String),
    #[error(transparent)]
    Shard(#[from] crate::shard::ShardError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

impl PackError {
    fn io(path: &Path, cause: std::io::Error) -> PackError {
        PackError::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}
