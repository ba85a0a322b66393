//! Mixed precision: the arithmetic dtype of a forward/backward pass, kept
//! apart from the parameters' dtype.
//!
//! With `bf16`, parameters stay f32 (the optimiser updates f32 master
//! weights and keeps f32 state); each layer casts its weights to the
//! activations' dtype on the way in, so convolutions and matmuls run in
//! bf16 and, because a cast's gradient is cast back, every parameter's
//! gradient arrives in f32. BatchNorm statistics, the global average pool,
//! the feature normalisation of the EBV head and the loss are computed in
//! f32. bf16 has f32's exponent range, so no loss scaling is needed (that
//! is an f16 concern).

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Arithmetic precision of training and inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 activations, convolutions and matmuls; f32 weights, statistics
    /// and loss.
    Bf16,
}

impl Precision {
    /// Whether this precision can run on `device`; the error says why not.
    /// bf16 needs CUDA: candle's CPU matmul has no bf16.
    pub fn check_device(self, device: &candle_core::Device) -> std::result::Result<(), String> {
        if self == Precision::Bf16 && device.is_cpu() {
            return Err("bf16 mixed precision needs a CUDA device (--device cuda:K; candle's CPU matmul has no bf16): use f32 on the CPU".into());
        }
        Ok(())
    }

    /// The dtype activations are computed in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision {other:?} (expected f32 or bf16)"
            )),
        }
    }
}

/// `t` in `dtype` (a no-op when it already is).
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

/// Whether `dtype` is a 16-bit float, whose sums and statistics should be
/// accumulated in f32.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}
