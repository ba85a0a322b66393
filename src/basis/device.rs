//! The Gram kernel of `generate` on a candle device: `--device cuda:K`.
//!
//! Why: one step at N = 10,000, d = 512 is ~10¹¹ flops; the CPU kernel in
//! [`super::gram`] takes 0.7–1.5 s for it on this project's 2 cores, so the
//! thousands of steps a p-norm run needs near 1.3 × Welch take hours there
//! and should take minutes on a GPU (an estimate: not measured yet; cuBLAS f32, full precision: candle leaves TF32 off
//! for f32 GEMMs unless asked, and a 10-bit mantissa could not resolve the
//! 1e-4 stop tolerance).
//!
//! Same contract as the CPU kernel: statistics over the unordered pairs,
//! the loss over ordered pairs, and G = 2·M·B with M_ij = ∂loss/∂C_ij.
//! What differs is the shape of the work, chosen for a device: each slice
//! of S rows computes the full rows C[s:e, 0:N] (not the upper triangle),
//! so that `G[s:e] = W·B` is one GEMM per slice with no scatter; that doubles
//! the flops, which a GPU can afford and which keeps every step a handful of
//! large kernels. The weights are dense (no sparse pair list): on a GPU the
//! elementwise pass over S × N costs far less than the GEMMs around it.
//!
//! Invariants: the device holds B (N × d) and the temporaries of one slice
//! (about [`BLOCK_COPIES`] × S × N × 4 bytes) at a time; B comes from the
//! host each step and G goes back to it, so the optimiser in `generate` is
//! the same code for every device. The same code runs on candle's CPU
//! device, which is how it is tested on a machine without a GPU.

use candle_core::{DType, Device, Tensor};

use super::error::BasisError;
use super::gram::{Engine, Eval, Loss};

/// Where the Gram work of `generate` runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// ebv's own blockwise CPU kernel: upper triangle, sparse gradient
    /// when violations are rare.
    Native,
    /// Full-row slices as candle tensors on this device (cuBLAS on a GPU).
    Candle(Device),
}

impl Backend {
    /// `cpu` or `cuda:K`, as printed and recorded in the summary.
    pub fn name(&self) -> String {
        match self {
            Backend::Native => "cpu".to_string(),
            Backend::Candle(Device::Cpu) => "cpu (candle)".to_string(),
            Backend::Candle(Device::Cuda(_)) => match self.ordinal() {
                Some(k) => format!("cuda:{k}"),
                None => "cuda".to_string(),
            },
            Backend::Candle(other) => format!("{other:?}"),
        }
    }

    fn ordinal(&self) -> Option<usize> {
        match self {
            Backend::Candle(dev @ Device::Cuda(_)) => match dev.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
                _ => None,
            },
            _ => None,
        }
    }
}

/// S × N temporaries alive at once in a slice: C, its diagonal-free copy,
/// |C|, the mask (u8 and f32), the sign, a loss term, the weights; plus one
/// for the allocator's slack.
pub const BLOCK_COPIES: u64 = 9;

/// Rows per slice for an N-row matrix within `mem_bytes` of device memory
/// (beyond B, G and their transfers).
pub fn device_slice_rows(n: usize, mem_bytes: u64) -> usize {
    let per_row = BLOCK_COPIES * 4 * n.max(1) as u64;
    ((mem_bytes / per_row) as usize).clamp(1, n.max(1))
}

/// Reusable state for evaluating loss, statistics and gradient of one N × d
/// matrix on a candle device.
pub(crate) struct DeviceEngine {
    n: usize,
    d: usize,
    slice: usize,
    device: Device,
    /// Column indices 0..N as a [1, N] u32 row, to find each slice's diagonal.
    cols: Tensor,
    /// Zeros of one full slice, narrowed for the last one.
    zeros: Tensor,
    /// Gradient of the last evaluation with `want_grad` (N × d, host).
    pub grad: Vec<f32>,
}

impl DeviceEngine {
    pub(crate) fn new(
        n: usize,
        d: usize,
        slice: usize,
        device: Device,
    ) -> Result<Self, BasisError> {
        let slice = slice.clamp(1, n.max(1));
        let err = |e: candle_core::Error| device_error(&device, e);
        let cols = Tensor::arange(0u32, n as u32, &device)
            .and_then(|t| t.reshape((1, n)))
            .map_err(err)?;
        let zeros = Tensor::zeros((slice, n), DType::F32, &device).map_err(err)?;
        Ok(DeviceEngine {
            n,
            d,
            slice,
            device: device.clone(),
            cols,
            zeros,
            grad: vec![0.0; n * d],
        })
    }

    /// Loss and statistics at threshold `tau` for the rows `b` (assumed
    /// unit); with `want_grad`, also `self.grad` = ∂loss/∂B.
    pub(crate) fn evaluate(
        &mut self,
        b: &[f32],
        tau: f32,
        loss: Loss,
        want_grad: bool,
    ) -> Result<Eval, BasisError> {
        assert_eq!(
            b.len(),
            self.n * self.d,
            "matrix size does not match the engine"
        );
        self.run(b, tau, loss, want_grad)
            .map_err(|e| device_error(&self.device, e))
    }

    fn run(
        &mut self,
        b: &[f32],
        tau: f32,
        loss: Loss,
        want_grad: bool,
    ) -> candle_core::Result<Eval> {
        let (n, d) = (self.n, self.d);
        let dev = &self.device;
        let bt = Tensor::from_slice(b, (n, d), dev)?;
        let btt = bt.t()?;
        let tau64 = tau as f64;
        let (mut max_abs, mut violations, mut loss_sum, mut sum_abs) = (0f32, 0f64, 0f64, 0f64);
        let mut s = 0;
        while s < n {
            let rows = self.slice.min(n - s);
            let c = bt.narrow(0, s, rows)?.matmul(&btt)?;
            let diag = Tensor::arange(s as u32, (s + rows) as u32, dev)?
                .reshape((rows, 1))?
                .broadcast_eq(&self.cols)?;
            let c = diag.where_cond(&self.zeros.narrow(0, 0, rows)?, &c)?;
            let a = c.abs()?;
            let mask = a.gt(tau64)?.to_dtype(DType::F32)?;
            max_abs = max_abs.max(a.max_all()?.to_scalar::<f32>()?);
            sum_abs += row_sum(&a)?;
            violations += row_sum(&mask)?;
            // The loss term per entry, and ∂loss/∂C_ij (times the 2 of G = 2·M·B) over sign(c).
            let (term, slope) = match loss {
                Loss::Hinge => {
                    let over = (a.affine(1.0, -tau64)? * &mask)?;
                    let slope = mask.affine(2.0, 0.0)?;
                    (over, slope)
                }
                Loss::SquaredHinge => {
                    let over = (a.affine(1.0, -tau64)? * &mask)?;
                    (over.sqr()?, over.affine(4.0, 0.0)?)
                }
                Loss::Power { p, inv_m } => {
                    let (p, inv_m) = (p as f64, inv_m as f64);
                    let t = a.affine(inv_m, 0.0)?;
                    let t_pm1 = (t.powf(p - 1.0)? * &mask)?;
                    let term = (&t_pm1 * &t)?;
                    (term, t_pm1.affine(2.0 * p * inv_m, 0.0)?)
                }
            };
            loss_sum += row_sum(&term)?;
            if want_grad {
                let w = (slope * c.sign()?)?;
                let g = w.matmul(&bt)?.flatten_all()?.to_vec1::<f32>()?;
                self.grad[s * d..(s + rows) * d].copy_from_slice(&g);
            }
            s += rows;
        }
        // Full rows saw every unordered pair twice (the diagonal is zeroed).
        Ok(Eval {
            max_abs,
            violations: (violations / 2.0).round() as u64,
            loss: loss_sum,
            sum_abs: sum_abs / 2.0,
        })
    }
}

/// The kernel `generate` drives: ebv's CPU engine or the device one.
pub(crate) enum Kernel {
    Native(Engine),
    Device(DeviceEngine),
}

impl Kernel {
    pub(crate) fn evaluate(
        &mut self,
        b: &[f32],
        tau: f32,
        loss: Loss,
        want_grad: bool,
    ) -> Result<Eval, BasisError> {
        match self {
            Kernel::Native(e) => Ok(e.evaluate(b, tau, loss, want_grad)),
            Kernel::Device(e) => e.evaluate(b, tau, loss, want_grad),
        }
    }

    /// The CPU engine's dense-path prediction for its next evaluation
    /// (part of a run's state: it picks how the gradient is summed).
    pub(crate) fn dense_hint(&self) -> bool {
        match self {
            Kernel::Native(e) => e.dense_hint(),
            Kernel::Device(_) => false,
        }
    }

    /// Restores [`Self::dense_hint`] (a resumed run).
    pub(crate) fn set_dense_hint(&mut self, hint: bool) {
        if let Kernel::Native(e) = self {
            e.set_dense_hint(hint);
        }
    }

    /// The gradient of the last evaluation with `want_grad`.
    pub(crate) fn grad_mut(&mut self) -> &mut [f32] {
        match self {
            Kernel::Native(e) => &mut e.grad,
            Kernel::Device(e) => &mut e.grad,
        }
    }
}

/// Σ over a slice, summed per row on the device and across rows in f64.
fn row_sum(t: &Tensor) -> candle_core::Result<f64> {
    Ok(t.sum_keepdim(1)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|&x| x as f64)
        .sum())
}

fn device_error(device: &Device, e: candle_core::Error) -> BasisError {
    BasisError::Device {
        device: Backend::Candle(device.clone()).name(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::gram::GradPath;
    use super::super::matrix::Basis;
    use super::*;

    /// The device kernel on candle's CPU device against ebv's CPU kernel:
    /// same statistics, loss and gradient for every loss, with slices that
    /// do not divide N.
    #[test]
    fn matches_the_native_kernel() {
        let (n, d) = (150, 24);
        let b = Basis::random(n, d, 7);
        let losses = [
            (Loss::Hinge, 0.3f32),
            (Loss::SquaredHinge, 0.25),
            (
                Loss::Power {
                    p: 9.5,
                    inv_m: 1.0 / 0.6,
                },
                0.2,
            ),
        ];
        for (loss, tau) in losses {
            let mut native = Engine::new(n, d, 40, 1 << 26, GradPath::Dense);
            let want = native.evaluate(&b.data, tau, loss, true);
            let mut dev = DeviceEngine::new(n, d, 64, Device::Cpu).unwrap();
            let got = dev.evaluate(&b.data, tau, loss, true).unwrap();
            let what = format!("{loss:?}");
            assert!(want.violations > 100, "{what}: too few violations to test");
            assert_eq!(got.violations, want.violations, "{what}");
            assert!((got.max_abs - want.max_abs).abs() < 1e-6, "{what}");
            let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-12);
            assert!(
                rel(got.loss, want.loss) < 1e-4,
                "{what}: {} vs {}",
                got.loss,
                want.loss
            );
            assert!(rel(got.sum_abs, want.sum_abs) < 1e-5, "{what}");
            let scale = native.grad.iter().fold(0f32, |m, g| m.max(g.abs()));
            let worst = dev
                .grad
                .iter()
                .zip(&native.grad)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{what}: gradient off by {worst} (scale {scale})"
            );
        }
    }

    /// The gradient against central finite differences of the loss itself,
    /// independent of the native kernel.
    #[test]
    fn gradient_matches_finite_differences() {
        let (n, d) = (12, 5);
        let b = Basis::random(n, d, 3);
        let data64: Vec<f64> = b.data.iter().map(|&x| x as f64).collect();
        let tau = 0.2f32;
        let loss = Loss::Power {
            p: 6.0,
            inv_m: 1.0 / 0.8,
        };
        let mut dev = DeviceEngine::new(n, d, 5, Device::Cpu).unwrap();
        dev.evaluate(&b.data, tau, loss, true).unwrap();
        // The same loss in f64 over ordered pairs, from its definition.
        let f = |x: &[f64]| -> f64 {
            let mut s = 0.0;
            for i in 0..n {
                for j in 0..n {
                    if i == j {
                        continue;
                    }
                    let c: f64 = (0..d).map(|k| x[i * d + k] * x[j * d + k]).sum();
                    if c.abs() > tau as f64 {
                        s += (c.abs() / 0.8).powf(6.0);
                    }
                }
            }
            s
        };
        let h = 1e-5;
        for idx in [0, 7, 23, 41, n * d - 1] {
            let mut x = data64.clone();
            x[idx] += h;
            let up = f(&x);
            x[idx] -= 2.0 * h;
            let down = f(&x);
            let fd = (up - down) / (2.0 * h);
            let g = dev.grad[idx] as f64;
            assert!(
                (g - fd).abs() <= 1e-3 * fd.abs().max(1.0),
                "entry {idx}: kernel {g}, finite difference {fd}"
            );
        }
    }

    #[test]
    fn slice_rows_fit_the_budget() {
        assert_eq!(device_slice_rows(100_000, 2 << 30), 596);
        assert_eq!(device_slice_rows(100, 1 << 30), 100);
        assert_eq!(device_slice_rows(1_000_000, 1), 1);
        assert_eq!(Backend::Native.name(), "cpu");
        assert_eq!(Backend::Candle(Device::Cpu).name(), "cpu (candle)");
    }
}
