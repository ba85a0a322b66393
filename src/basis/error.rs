//! The one error type of the `basis` module. Every variant names the file or
//! the flag it is about, so the binary can print it as is.

use std::path::PathBuf;

/// Errors from generating, checking, reading, writing or importing a basis.
#[derive(Debug, thiserror::Error)]
pub enum BasisError {
    /// The asked α is impossible: no N unit vectors in R^d have a smaller
    /// maximum |cos| than the Welch bound.
    #[error(
        "--alpha {alpha} is below the Welch bound {welch:.6} for N={n}, d={d}: no {n} unit \
         vectors in R^{d} have a max |cos| that small, so the paper's loop would run to its \
         step limit (or collapse); use --alpha >= {up:.6} (the paper's own matrices sit at \
         1.1-1.4x Welch), or --alpha auto",
        up = round_up_6(.welch)
    )]
    BelowWelch {
        alpha: f64,
        welch: f64,
        n: usize,
        d: usize,
    },

    /// A flag has a value that cannot be used.
    #[error("{flag}: {reason}")]
    InvalidArg { flag: &'static str, reason: String },

    /// CUDA was asked for in a build without it.
    #[error(
        "--device {device}: this ebv-basis was built without the cuda feature; rebuild with \
         `cargo build --release --features cuda` (see the README) or use --device cpu"
    )]
    NoCuda { device: String },

    /// The device kernel failed (no such GPU, out of device memory, a driver error).
    #[error("--device {device}: {reason}")]
    Device { device: String, reason: String },

    /// An I/O error on a named file.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A file that is not a readable basis matrix.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A malformed or unsupported pickle.
    #[error("{path}: pickle: {reason}")]
    Pickle { path: PathBuf, reason: String },

    /// A pickle that names a global outside the allow-list. It is never
    /// called; the import stops here.
    #[error(
        "{path}: pickle refers to global `{module}.{name}`, which is not one of the few globals \
         this importer allows (torch tensor/storage rebuilders, numpy ndarray reconstruction); \
         it was not executed"
    )]
    ForbiddenGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },
}

/// The smallest 6-decimal number at or above `x`, so that the value the
/// message suggests is itself accepted.
fn round_up_6(x: &f64) -> f64 {
    let up = (x * 1e6).ceil() / 1e6;
    // The division can land a hair below x; step once more in that case.
    if up < *x {
        up + 1e-6
    } else {
        up
    }
}

impl BasisError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BasisError::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        BasisError::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn arg(flag: &'static str, reason: impl Into<String>) -> Self {
        BasisError::InvalidArg {
            flag,
            reason: reason.into(),
        }
    }
}
