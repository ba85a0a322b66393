//! Train-mode BatchNorm (+ optional ReLU) as one fused CPU op with a closed-form backward.
//!
//! Forward, per channel over M = N·H·W values: μ = mean, σ² = biased variance (two passes, sums in f64),
//! invstd = 1/√(σ²+eps), y = (x−μ)·(γ·invstd) + β, then max(y, 0) if `relu`.
//! Backward with x̂ = (x−μ)·invstd and g = dy (zeroed where y ≤ 0 when `relu`):
//! dβ = Σg, dγ = Σg·x̂, dx = γ·invstd·(g − dβ/M − x̂·dγ/M).
//!
//! The forward op keeps μ, invstd and the biased σ² in a shared slot: the caller reads the statistics from it (they
//! come back detached), and the backward reads μ and invstd from it instead of recomputing them. The backward op
//! likewise returns dγ and dβ through a slot, since a custom op has a single output.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::by_dtype;
use super::{cpu_slice, zeroed, Float};

pub(crate) fn check_args(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<()> {
    let &[n, c, h, w] = x.dims() else {
        bail!(
            "batch_norm_train: input must be [N,C,H,W], got {:?}",
            x.dims()
        );
    };
    if weight.dims() != [c] || bias.dims() != [c] {
        bail!(
            "batch_norm_train: weight {:?} and bias {:?} must be [{c}]",
            weight.dims(),
            bias.dims()
        );
    }
    if n * h * w < 2 {
        bail!(
            "batch_norm_train: need more than one value per channel, got {:?}",
            x.dims()
        );
    }
    Ok(())
}

/// The plain-op formula, differentiable on any device.
pub(crate) fn batch_norm_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let m = (n * h * w) as f64;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
    let invstd = (var.clone() + eps)?.sqrt()?.recip()?;
    let y = xc
        .broadcast_mul(&invstd)?
        .broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    let y = if relu { y.relu()? } else { y };
    let var_unbiased = (var.flatten_all()? * (m / (m - 1.0)))?;
    Ok((y, mean.flatten_all()?.detach(), var_unbiased.detach()))
}

pub(crate) fn batch_norm_ebv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.contiguous()?;
    let saved = Arc::new(Mutex::new(Stats::default()));
    let y = x.apply_op3(
        &weight,
        &bias,
        BatchNormFwd {
            eps,
            relu,
            saved: saved.clone(),
        },
    )?;
    let (mean, var) = {
        let Ok(s) = saved.lock() else {
            bail!("batch_norm_train: statistics lock poisoned");
        };
        (s.mean.clone(), s.var.clone())
    };
    let (n, _, h, w) = x.dims4()?;
    let m = (n * h * w) as f64;
    let var_unbiased = var.iter().map(|v| v * m / (m - 1.0)).collect::<Vec<_>>();
    let c = mean.len();
    let mean = Tensor::from_vec(mean, c, &Device::Cpu)?.to_dtype(x.dtype())?;
    let var_unbiased = Tensor::from_vec(var_unbiased, c, &Device::Cpu)?.to_dtype(x.dtype())?;
    Ok((y, mean, var_unbiased))
}

/// Per-channel statistics of one forward call, f64 whatever the tensor dtype.
#[derive(Default)]
struct Stats {
    mean: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Vec<f64>,
}

struct BatchNormFwd {
    eps: f64,
    relu: bool,
    saved: Arc<Mutex<Stats>>,
}

/// Per channel, the sums over its N planes of the two values `f(channel, plane)` returns for each plane (given
/// as the index range of its elements), in f64, parallel over channels.
fn channel_sums(
    n: usize,
    c: usize,
    plane: usize,
    f: impl Fn(usize, std::ops::Range<usize>) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |acc, i| {
                let base = (i * c + ch) * plane;
                let s = f(ch, base..base + plane);
                (acc.0 + s.0, acc.1 + s.1)
            })
        })
        .collect()
}

/// Eight independent accumulators in the element type (the vector width of f32 on AVX2), summed in f64 at the end
/// of each plane: the inner loops vectorise, a plane's partial sums stay short (PyTorch's CPU BatchNorm also
/// accumulates f32 in f32), and planes and images add up in f64.
const LANES: usize = 8;

fn finish<T: Float>(lanes: [T; LANES], tail: f64) -> f64 {
    lanes.iter().map(|v| v.to_f64()).sum::<f64>() + tail
}

/// Σ x over one plane.
fn plane_sum<T: Float>(x: &[T]) -> f64 {
    let mut acc = [T::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64()).sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    finish(acc, tail)
}

/// Σ (x − μ)² over one plane.
fn plane_sq_dev<T: Float>(x: &[T], mu: T) -> f64 {
    let mut acc = [T::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (v - mu).to_f64().powi(2))
        .sum();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - mu;
            acc[l] += d * d;
        }
    }
    finish(acc, tail)
}

/// The gradient reaching the BatchNorm output: dy, zeroed where the fused ReLU cut the output.
#[inline(always)]
fn masked<T: Float>(relu: bool, y: T, dy: T) -> T {
    if relu && y <= T::ZERO {
        T::ZERO
    } else {
        dy
    }
}

/// (Σ g, Σ g·(x − μ)) over one plane, g the masked output gradient.
fn plane_grad_sums<T: Float>(x: &[T], y: &[T], dy: &[T], mu: T, relu: bool) -> (f64, f64) {
    let (mut a, mut b) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    let (xc, yc, dc) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        dy.chunks_exact(LANES),
    );
    let (mut ta, mut tb) = (0.0, 0.0);
    for ((&x, &y), &dy) in xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .zip(dc.remainder())
    {
        let g = masked(relu, y, dy).to_f64();
        ta += g;
        tb += g * (x - mu).to_f64();
    }
    for ((x, y), dy) in xc.zip(yc).zip(dc) {
        for l in 0..LANES {
            let g = masked(relu, y[l], dy[l]);
            a[l] += g;
            b[l] += g * (x[l] - mu);
        }
    }
    (finish(a, ta), finish(b, tb))
}

fn bn_forward<T: Float>(
    x: &[T],
    dims: [usize; 4],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    relu: bool,
) -> (Vec<T>, Stats) {
    let [n, c, h, w] = dims;
    let plane = h * w;
    let m = (n * plane) as f64;
    let mean = channel_sums(n, c, plane, |_, r| (plane_sum(&x[r]), 0.0))
        .into_iter()
        .map(|s| s.0 / m)
        .collect::<Vec<_>>();
    let var = channel_sums(n, c, plane, |ch, r| {
        (plane_sq_dev(&x[r], T::from_f64(mean[ch])), 0.0)
    })
    .into_iter()
    .map(|s| s.0 / m)
    .collect::<Vec<_>>();
    let invstd = var
        .iter()
        .map(|v| 1.0 / (v + eps).sqrt())
        .collect::<Vec<_>>();
    let gamma = gamma.iter().map(|g| g.to_f64()).collect::<Vec<_>>();
    let mut y = zeroed::<T>(x.len());
    let zero = T::ZERO;
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (y, x))| {
            let ch = i % c;
            let scale = T::from_f64(gamma[ch] * invstd[ch]);
            let mu = T::from_f64(mean[ch]);
            let shift = beta[ch];
            for (y, &x) in y.iter_mut().zip(x) {
                let v = (x - mu) * scale + shift;
                *y = if relu && v < zero { zero } else { v };
            }
        });
    (
        y,
        Stats {
            mean,
            var,
            invstd,
            gamma,
        },
    )
}

impl CustomOp3 for BatchNormFwd {
    fn name(&self) -> &'static str {
        "ebv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l1.dims() else {
            bail!(
                "{}: input must be [N,C,H,W], got {:?}",
                self.name(),
                l1.dims()
            );
        };
        if l2.dims() != [c] || l3.dims() != [c] {
            bail!("{}: weight/bias must be [{c}]", self.name());
        }
        #[allow(clippy::too_many_arguments)]
        fn run<T: Float>(
            op: &BatchNormFwd,
            dims: [usize; 4],
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<CpuStorage> {
            let x = cpu_slice::<T>(s1, l1)?;
            let (y, stats) = bn_forward(
                x,
                dims,
                cpu_slice(s2, l2)?,
                cpu_slice(s3, l3)?,
                op.eps,
                op.relu,
            );
            let Ok(mut saved) = op.saved.lock() else {
                bail!("{}: statistics lock poisoned", op.name());
            };
            *saved = stats;
            Ok(T::to_cpu_storage_owned(y))
        }
        let out = by_dtype!(
            s1,
            self.name(),
            run,
            self,
            [n, c, h, w],
            s1,
            l1,
            s2,
            l2,
            s3,
            l3
        )?;
        Ok((out, Shape::from(vec![n, c, h, w])))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (mean, invstd, gamma) = {
            let Ok(s) = self.saved.lock() else {
                bail!("{}: statistics lock poisoned", self.name());
            };
            (s.mean.clone(), s.invstd.clone(), s.gamma.clone())
        };
        let out = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let op = BatchNormBwd {
            relu: self.relu,
            mean,
            invstd,
            gamma,
            out: out.clone(),
        };
        let dx = x.apply_op3_no_bwd(res, &grad, &op)?;
        let (dgamma, dbeta) = match out.lock() {
            Ok(mut o) => std::mem::take(&mut *o),
            Err(_) => bail!("{}: gradient lock poisoned", self.name()),
        };
        let c = dgamma.len();
        let dgamma = Tensor::from_vec(dgamma, c, &Device::Cpu)?.to_dtype(weight.dtype())?;
        let dbeta = Tensor::from_vec(dbeta, c, &Device::Cpu)?.to_dtype(bias.dtype())?;
        Ok((
            x.track_op().then_some(dx),
            weight.track_op().then_some(dgamma),
            bias.track_op().then_some(dbeta),
        ))
    }
}

/// (X, Y, dY) ↦ dX, with (dγ, dβ) left in `out`. Y is only read for the ReLU mask.
struct BatchNormBwd {
    relu: bool,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    gamma: Vec<f64>,
    out: Arc<Mutex<(Vec<f64>, Vec<f64>)>>,
}

impl BatchNormBwd {
    fn run<T: Float>(
        &self,
        dims: [usize; 4],
        x: &[T],
        y: &[T],
        dy: &[T],
    ) -> (Vec<T>, Vec<f64>, Vec<f64>) {
        let [n, c, h, w] = dims;
        let plane = h * w;
        let m = (n * plane) as f64;
        let zero = T::ZERO;
        // Σg and Σg·(x−μ); dγ = invstd·Σg·(x−μ).
        let sums = channel_sums(n, c, plane, |ch, r| {
            let mu = T::from_f64(self.mean[ch]);
            plane_grad_sums(&x[r.clone()], &y[r.clone()], &dy[r], mu, self.relu)
        });
        let dbeta = sums.iter().map(|s| s.0).collect::<Vec<_>>();
        let dgamma = sums
            .iter()
            .zip(&self.invstd)
            .map(|(s, is)| s.1 * is)
            .collect::<Vec<_>>();
        let mut dx = vec![zero; x.len()];
        dx.par_chunks_mut(plane).enumerate().for_each(|(i, dx)| {
            let ch = i % c;
            let base = i * plane;
            // dx = a·g + b·(x−μ) + c0 with a = γ·invstd, b = −a·invstd·dγ/M, c0 = −a·dβ/M.
            let a = self.gamma[ch] * self.invstd[ch];
            let b = T::from_f64(-a * self.invstd[ch] * dgamma[ch] / m);
            let c0 = T::from_f64(-a * dbeta[ch] / m);
            let (a, mu) = (T::from_f64(a), T::from_f64(self.mean[ch]));
            let r = base..base + plane;
            for (((d, &x), &y), &g) in dx
                .iter_mut()
                .zip(&x[r.clone()])
                .zip(&y[r.clone()])
                .zip(&dy[r])
            {
                *d = a * masked(self.relu, y, g) + b * (x - mu) + c0;
            }
        });
        (dx, dgamma, dbeta)
    }
}

impl CustomOp3 for BatchNormBwd {
    fn name(&self) -> &'static str {
        "ebv-batch-norm-train-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l1.dims() else {
            bail!(
                "{}: input must be [N,C,H,W], got {:?}",
                self.name(),
                l1.dims()
            );
        };
        if l2.dims() != l1.dims() || l3.dims() != l1.dims() || self.mean.len() != c {
            bail!(
                "{}: X {:?}, Y {:?}, dY {:?} do not match",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        #[allow(clippy::too_many_arguments)]
        fn run<T: Float>(
            op: &BatchNormBwd,
            dims: [usize; 4],
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<CpuStorage> {
            let (dx, dgamma, dbeta) = op.run::<T>(
                dims,
                cpu_slice(s1, l1)?,
                cpu_slice(s2, l2)?,
                cpu_slice(s3, l3)?,
            );
            let Ok(mut out) = op.out.lock() else {
                bail!("{}: gradient lock poisoned", op.name());
            };
            *out = (dgamma, dbeta);
            Ok(T::to_cpu_storage_owned(dx))
        }
        let out = by_dtype!(
            s1,
            self.name(),
            run,
            self,
            [n, c, h, w],
            s1,
            l1,
            s2,
            l2,
            s3,
            l3
        )?;
        Ok((out, Shape::from(vec![n, c, h, w])))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::super::test_util::{fd_check, max_rel_diff, rand_tensor, to_vec};
    use super::super::{batch_norm_train, KernelImpl};

    const EPS: f64 = 1e-5;

    /// (y, mean, var, dx, dγ, dβ) of sum(bn(x) · r).
    fn run(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        r: &Tensor,
        relu: bool,
        imp: KernelImpl,
    ) -> [Tensor; 6] {
        let vars = [x, gamma, beta].map(|t| Var::from_tensor(t).expect("var"));
        let (y, mean, var) = batch_norm_train(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            EPS,
            relu,
            imp,
        )
        .expect("bn");
        let grads = (&y * r)
            .expect("mul")
            .sum_all()
            .expect("sum")
            .backward()
            .expect("bwd");
        let g = |i: usize| grads.get(vars[i].as_tensor()).expect("grad").clone();
        assert!(
            grads.get(&mean).is_none() && !mean.track_op() && !var.track_op(),
            "statistics must be detached"
        );
        [y, mean, var, g(0), g(1), g(2)]
    }

    fn inputs(dims: &[usize], dtype: DType, seed: u64) -> [Tensor; 4] {
        let c = dims[1];
        // An offset mean and spread so that the statistics are not trivially 0 and 1.
        let x = ((rand_tensor(dims, seed, dtype) * 3.0).expect("s") + 0.7).expect("o");
        let gamma = (rand_tensor(&[c], seed + 1, dtype) + 1.5).expect("g");
        let beta = rand_tensor(&[c], seed + 2, dtype);
        let r = rand_tensor(dims, seed + 3, dtype);
        [x, gamma, beta, r]
    }

    #[test]
    fn matches_plain_op_formula() {
        for (dims, dtype) in [
            ([4, 3, 5, 6], DType::F32),
            // Long planes: many passes of the f32 lane accumulators.
            ([3, 2, 33, 31], DType::F32),
            ([2, 5, 3, 3], DType::F64),
            ([3, 2, 1, 1], DType::F32),
        ] {
            for relu in [false, true] {
                let [x, gamma, beta, r] = inputs(&dims, dtype, 7);
                let ours = run(&x, &gamma, &beta, &r, relu, KernelImpl::Ebv);
                let theirs = run(&x, &gamma, &beta, &r, relu, KernelImpl::Candle);
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                for (i, what) in ["y", "mean", "var", "dx", "dgamma", "dbeta"]
                    .iter()
                    .enumerate()
                {
                    assert_eq!(ours[i].dims(), theirs[i].dims(), "{what}");
                    let d = max_rel_diff(&ours[i], &theirs[i]);
                    assert!(
                        d < tol,
                        "{what} differs by {d:e} ({dims:?}, relu {relu}, {dtype:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn statistics_are_batch_mean_and_unbiased_variance() {
        let (n, c, h, w) = (3, 2, 4, 5);
        let [x, gamma, beta, _] = inputs(&[n, c, h, w], DType::F64, 3);
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            let (_, mean, var) = batch_norm_train(&x, &gamma, &beta, EPS, false, imp).expect("bn");
            let (mean, var) = (to_vec(&mean), to_vec(&var));
            let xs = to_vec(&x);
            for ch in 0..c {
                let vals = (0..n)
                    .flat_map(|i| xs[(i * c + ch) * h * w..(i * c + ch + 1) * h * w].to_vec())
                    .collect::<Vec<_>>();
                let m = vals.len() as f64;
                let mu = vals.iter().sum::<f64>() / m;
                let v = vals.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (m - 1.0);
                assert!(
                    (mean[ch] - mu).abs() < 1e-12,
                    "{imp:?} mean {} vs {mu}",
                    mean[ch]
                );
                assert!(
                    (var[ch] - v).abs() < 1e-12,
                    "{imp:?} var {} vs {v}",
                    var[ch]
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_f64() {
        for relu in [false, true] {
            let [x, gamma, beta, r] = inputs(&[3, 2, 3, 4], DType::F64, 17);
            let loss = |t: &[Tensor]| {
                let (y, _, _) = batch_norm_train(&t[0], &t[1], &t[2], EPS, relu, KernelImpl::Ebv)?;
                (y * &r)?.sum_all()
            };
            let worst = fd_check(loss, &[x, gamma, beta], 12).expect("fd");
            assert!(
                worst < 1e-7,
                "relu {relu}: finite differences disagree by {worst:e}"
            );
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let [x, gamma, beta, _] = inputs(&[2, 3, 2, 2], DType::F32, 1);
        let short = rand_tensor(&[2], 1, DType::F32);
        assert!(batch_norm_train(&x, &short, &beta, EPS, false, KernelImpl::Ebv).is_err());
        let single = rand_tensor(&[1, 3, 1, 1], 1, DType::F32);
        assert!(batch_norm_train(&single, &gamma, &beta, EPS, false, KernelImpl::Ebv).is_err());
    }
}
