//! A fully connected layer `y = x·Wᵀ + b` with PyTorch's default
//! initialisation (weight and bias uniform in ±1/√fan_in), so a freshly
//! built head has the scale torchvision users expect.

use candle_core::{Tensor, Var};

use super::params::{ParamKind, ParamStore};
use super::precision::cast;
use super::ModelError;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Var,
    bias: Var,
}

impl Linear {
    /// `{name}.weight` `[out, in]` and `{name}.bias` `[out]`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Linear, ModelError> {
        let bound = 1.0 / (inputs.max(1) as f64).sqrt();
        let weight = store.uniform(
            &format!("{name}.weight"),
            &[outputs, inputs],
            bound,
            ParamKind::Weight,
        )?;
        let bias = store.uniform(
            &format!("{name}.bias"),
            &[outputs],
            bound,
            ParamKind::NoDecay,
        )?;
        Ok(Linear { weight, bias })
    }

    pub fn outputs(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Weight and bias are cast to `x`'s dtype (mixed precision).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dt = x.dtype();
        x.matmul(&cast(self.weight.as_tensor(), dt)?.t()?)?
            .broadcast_add(&cast(self.bias.as_tensor(), dt)?)
    }
}
