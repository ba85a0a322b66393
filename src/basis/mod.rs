//! Equiangular Basis Vectors: generate, check, import and store the fixed
//! class matrix B (N × d, row k = class k, unit rows) that EBV classifies
//! against.
//!
//! Layout, one concept per file:
//! - [`welch`]: closed-form bounds (Welch bound, expected max |cos| of random
//!   unit vectors) used to refuse impossible targets and to predict trivial ones.
//! - [`gram`]: the blockwise Gram kernel (GEMM through the `gemm` crate) and the
//!   hinge-loss gradient G = 2·M·B built from it; never holds an N × N matrix.
//! - [`device`]: the same kernel as candle tensors on a device (`--device
//!   cuda:K`: cuBLAS GEMMs over full-row slices), tested on candle's CPU device.
//! - [`generate`](mod@generate): the optimiser loop (the paper's plain SGD, an adaptive
//!   variant and a p-norm method), with divergence recovery, `--alpha auto`,
//!   checkpoints and continuation from a given matrix.
//! - [`kerdock`]: a structured start (real mutually unbiased bases from a
//!   Kerdock set) at 1/√D coherence for up to D·(D/2 + 1) classes, D = 4^k.
//! - [`steiner`]: a structured start on the Welch bound (Steiner equiangular
//!   tight frames from the lines of finite geometries, triple systems and
//!   difference families) at a few shapes, and at 1/r from nets of AG(2, q)
//!   wherever N/d is large.
//! - [`orthogonal`]: orthonormal rows, the exact answer when N ≤ d.
//! - [`check`](mod@check): blockwise coherence statistics of a stored matrix.
//! - [`io`]: safetensors and `.npy` reading (memory-mapped, blockwise) and
//!   atomic writing.
//! - [`pickle`]: a restricted pickle VM that builds a value tree and executes
//!   nothing; [`import`] reads the paper's `.pkl` files through it.
//! - [`resume`]: the whole state of an unfinished `generate` run, kept beside
//!   its output so that the same command continues it exactly.
//! - [`cli`]: the `ebv-basis` command line (clap) and its `run` entry point.
//!
//! Invariants: matrices are row-major f32, rows unit length (to f32 rounding)
//! whenever they leave this module; all Gram work goes through row slices
//! whose size is bounded by a memory budget.

pub mod check;
pub mod cli;
pub mod device;
pub mod error;
pub mod generate;
pub mod gram;
pub mod import;
pub mod io;
pub mod kerdock;
pub mod matrix;
pub mod orthogonal;
pub mod pickle;
pub mod resume;
pub mod steiner;
pub mod welch;

pub use check::{check, CheckOptions, CheckReport, HistBin};
pub use device::{device_slice_rows, Backend};
pub use error::BasisError;
pub use generate::{
    construction, generate, generate_resumable, generate_with_checkpoints, nearby_starts,
    AlphaSpec, CheckpointFn, Construction, GenerateConfig, Generated, Init, Method, NearbyStart,
    Resumption, StateFn, StepInfo, Summary,
};
pub use gram::{hinge_loss_and_grad, GradPath};
pub use import::{import_pickle, Imported, PickleForm};
pub use io::{read_matrix, write_npy, write_safetensors, MatrixFile};
pub use kerdock::{kerdock_basis, kerdock_fit, kerdock_plan, KerdockPlan};
pub use matrix::Basis;
pub use orthogonal::orthonormal_basis;
pub use resume::{read_state, state_path, write_state, RunState, Scalars, StateView};
pub use steiner::{
    frame_designs, net_designs, steiner_basis, steiner_designs, steiner_fit, steiner_partial_plan,
    steiner_plan, Design, MIN_FILL, TOP_UP_MARGIN,
};
pub use welch::{random_max_cos, welch_bound, RandomMaxCos};
