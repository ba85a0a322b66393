//! Train-aware 2-D BatchNorm with PyTorch's semantics, optionally fused
//! with the ReLU that follows it.
//!
//! Invariants (PyTorch's `BatchNorm2d`, momentum 0.1, eps 1e-5):
//! - train mode normalises with the batch mean and the biased batch
//!   variance, then sets `running_mean ← 0.9·running_mean + 0.1·mean` and
//!   `running_var ← 0.9·running_var + 0.1·unbiased_var` and counts the
//!   batch in `num_batches_tracked`;
//! - eval mode uses the running statistics and changes nothing;
//! - the statistics keep the parameters' dtype whatever the activation dtype;
//!   16-bit activations are normalised in f32 (candle's own BatchNorm fails
//!   in train mode on bf16): channels-last on CUDA by this crate's kernels,
//!   which read the 16-bit tensor as it is; otherwise by casting it to f32
//!   and back.

use candle_core::{Tensor, Var};

use super::params::{ParamKind, ParamStore};
use super::precision::is_half;
use super::ModelError;
use crate::kernels::{batch_norm_train, batch_norm_train_nhwc, KernelImpl};

pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    channels: usize,
    imp: KernelImpl,
}

impl BatchNorm2d {
    /// `{name}.weight` (ones), `.bias` (zeros), `.running_mean` (zeros),
    /// `.running_var` (ones), `.num_batches_tracked`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        channels: usize,
        imp: KernelImpl,
    ) -> Result<BatchNorm2d, ModelError> {
        let c = [channels];
        Ok(BatchNorm2d {
            weight: store.constant(&format!("{name}.weight"), &c, 1.0, ParamKind::NoDecay)?,
            bias: store.constant(&format!("{name}.bias"), &c, 0.0, ParamKind::NoDecay)?,
            running_mean: store.constant(
                &format!("{name}.running_mean"),
                &c,
                0.0,
                ParamKind::Buffer,
            )?,
            running_var: store.constant(
                &format!("{name}.running_var"),
                &c,
                1.0,
                ParamKind::Buffer,
            )?,
            num_batches_tracked: store.counter(&format!("{name}.num_batches_tracked"))?,
            channels,
            imp,
        })
    }

    /// Normalise `x` [N, C, H, W]; `relu` applies max(·, 0) afterwards.
    pub fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> candle_core::Result<Tensor> {
        self.forward_layout(x, train, relu, false)
    }

    /// As [`BatchNorm2d::forward_t`]; with `nhwc`, x is channels-last `[N,H,W,C]` (CUDA only, see
    /// [`crate::kernels::channels_last`]).
    pub fn forward_layout(
        &self,
        x: &Tensor,
        train: bool,
        relu: bool,
        nhwc: bool,
    ) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = if nhwc {
            let (n, h, w, c) = x.dims4()?;
            (n, c, h, w)
        } else {
            x.dims4()?
        };
        if c != self.channels {
            candle_core::bail!("batch norm over {} channels got {c}", self.channels);
        }
        if train && !nhwc && is_half(x.dtype()) {
            let y = self.forward_t(&x.to_dtype(self.weight.dtype())?, true, relu)?;
            return y.to_dtype(x.dtype());
        }
        if train {
            if n * h * w < 2 {
                candle_core::bail!(
                    "batch norm in train mode needs more than one value per channel (input {:?})",
                    x.dims()
                );
            }
            let (y, mean, var) = if nhwc {
                batch_norm_train_nhwc(
                    x,
                    self.weight.as_tensor(),
                    self.bias.as_tensor(),
                    BN_EPS,
                    relu,
                )?
            } else {
                batch_norm_train(
                    x,
                    self.weight.as_tensor(),
                    self.bias.as_tensor(),
                    BN_EPS,
                    relu,
                    self.imp,
                )?
            };
            let keep = 1.0 - BN_MOMENTUM;
            let rm = ((self.running_mean.as_tensor().detach() * keep)?
                + (mean.to_dtype(self.running_mean.dtype())? * BN_MOMENTUM)?)?;
            let rv = ((self.running_var.as_tensor().detach() * keep)?
                + (var.to_dtype(self.running_var.dtype())? * BN_MOMENTUM)?)?;
            self.running_mean.set(&rm)?;
            self.running_var.set(&rv)?;
            let count = (self.num_batches_tracked.as_tensor().detach() + 1.0)?;
            self.num_batches_tracked.set(&count)?;
            Ok(y)
        } else {
            // y = x·scale + shift with per-channel scale = γ/√(σ²+ε) and
            // shift = β − μ·scale: two broadcast ops instead of four.
            let scale = (self.weight.as_tensor().detach()
                / (self.running_var.as_tensor().detach() + BN_EPS)?.sqrt()?)?;
            let shift = (self.bias.as_tensor().detach()
                - (self.running_mean.as_tensor().detach() * &scale)?)?;
            let dt = x.dtype();
            let per_channel = if nhwc { (1, 1, 1, c) } else { (1, c, 1, 1) };
            let y = x
                .broadcast_mul(&scale.to_dtype(dt)?.reshape(per_channel)?)?
                .broadcast_add(&shift.to_dtype(dt)?.reshape(per_channel)?)?;
            if relu {
                y.relu()
            } else {
                Ok(y)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;

    /// Running statistics after two train-mode forwards equal PyTorch's
    /// closed form; an eval forward uses and keeps them.
    #[test]
    fn running_stats_follow_the_closed_form() {
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            let mut store = ParamStore::new(&Device::Cpu, DType::F64, 0);
            let bn = BatchNorm2d::new(&mut store, "bn", 2, imp).unwrap();
            let xs: Vec<Vec<f64>> = (0..2)
                .map(|k| {
                    (0..3 * 2 * 2 * 2)
                        .map(|i| ((i * 7 + k * 3) % 11) as f64 * 0.5 - k as f64)
                        .collect()
                })
                .collect();
            let (mut rm, mut rv) = ([0.0f64; 2], [1.0f64; 2]);
            for x in &xs {
                let t = Tensor::from_vec(x.clone(), (3, 2, 2, 2), &Device::Cpu).unwrap();
                bn.forward_t(&t, true, false).unwrap();
                for c in 0..2 {
                    let v: Vec<f64> = (0..3)
                        .flat_map(|n| (0..4).map(move |p| (n, p)))
                        .map(|(n, p)| x[n * 8 + c * 4 + p])
                        .collect();
                    let m = v.iter().sum::<f64>() / 12.0;
                    let var = v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / 11.0;
                    rm[c] = 0.9 * rm[c] + 0.1 * m;
                    rv[c] = 0.9 * rv[c] + 0.1 * var;
                }
            }
            let got_m: Vec<f64> = bn.running_mean.as_tensor().to_vec1().unwrap();
            let got_v: Vec<f64> = bn.running_var.as_tensor().to_vec1().unwrap();
            for c in 0..2 {
                assert!((got_m[c] - rm[c]).abs() < 1e-12, "{imp:?} mean {c}");
                assert!((got_v[c] - rv[c]).abs() < 1e-12, "{imp:?} var {c}");
            }
            let count: i64 = bn.num_batches_tracked.as_tensor().to_scalar().unwrap();
            assert_eq!(count, 2);
            // Eval: (x − running_mean)/√(running_var + ε), weight 1, bias 0.
            let x = Tensor::from_vec(xs[0].clone(), (3, 2, 2, 2), &Device::Cpu).unwrap();
            let y: Vec<f64> = bn
                .forward_t(&x, false, true)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, (&yi, &xi)) in y.iter().zip(&xs[0]).enumerate() {
                let c = (i / 4) % 2;
                let want = ((xi - rm[c]) / (rv[c] + BN_EPS).sqrt()).max(0.0);
                assert!((yi - want).abs() < 1e-12, "{imp:?} eval {i}");
            }
            let after: Vec<f64> = bn.running_mean.as_tensor().to_vec1().unwrap();
            assert_eq!(after, got_m, "eval leaves the statistics alone");
        }
    }
}
