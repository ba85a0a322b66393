//! A bias-free 2-D convolution (ResNet's convolutions have no bias: each is
//! followed by BatchNorm), computed by [`crate::kernels::conv2d`].
//!
//! Initialised as torchvision's ResNet does: Kaiming normal, fan-out mode,
//! ReLU gain (std = √(2 / (C_out·k²))).

use candle_core::{Tensor, Var};

use super::params::{ParamKind, ParamStore};
use super::precision::cast;
use super::ModelError;
use crate::kernels::{conv2d, conv2d_nhwc, KernelImpl};

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Var,
    stride: usize,
    padding: usize,
    imp: KernelImpl,
}

impl Conv2d {
    /// `{name}.weight` of shape [c_out, c_in, k, k].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        imp: KernelImpl,
    ) -> Result<Conv2d, ModelError> {
        let std = (2.0 / (c_out * k * k) as f64).sqrt();
        let weight = store.normal(
            &format!("{name}.weight"),
            &[c_out, c_in, k, k],
            std,
            ParamKind::Weight,
        )?;
        Ok(Conv2d {
            weight,
            stride,
            padding,
            imp,
        })
    }

    /// The weight is cast to `x`'s dtype (mixed precision; see `precision`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_layout(x, false)
    }

    /// As [`Conv2d::forward`]; with `nhwc`, x is `[N,H,W,C]` and so is the result (the weight, stored
    /// `[O,C,K,K]`, is transposed to `[O,K,K,C]` for the call; its gradient flows back through the transpose).
    pub fn forward_layout(&self, x: &Tensor, nhwc: bool) -> candle_core::Result<Tensor> {
        let w = cast(self.weight.as_tensor(), x.dtype())?;
        if nhwc {
            conv2d_nhwc(x, &w.permute((0, 2, 3, 1))?, self.stride, self.padding)
        } else {
            conv2d(x, &w, self.stride, self.padding, self.imp)
        }
    }
}
