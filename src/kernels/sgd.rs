//! The SGD-with-momentum update of one parameter as two parallel CPU passes.
//!
//! Built from candle's ops, `torch.optim.SGD`'s update is six or seven passes over the parameter, three of them
//! `affine` (a serial kernel in candle): at ResNet-50's 25.5M parameters, ~0.1 s of serial memory traffic per
//! step. Here one pass makes the new momentum buffer and a second the new parameter, with exactly the candle-op
//! path's arithmetic (same operations, same order, `affine`'s `+ 0` included), so the result is bitwise the same.
//!
//! Invariants: p, g and the buffer share shape and dtype (checked); only CPU f32/f64 tensors come here
//! ([`sgd_momentum_update`] returns `None` otherwise and the caller keeps candle's ops).

use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::by_dtype;
use super::{cpu_slice, Float};

/// One SGD step's hyper-parameters, `torch.optim.SGD` semantics (momentum ≠ 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    /// Weight decay for this parameter (0 when it is excluded).
    pub weight_decay: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

/// At least this many elements per parallel task.
const MIN_TASK: usize = 1 << 14;

/// (new momentum buffer, new parameter) from the parameter `p`, its gradient `g` and the previous buffer `buf`,
/// or `None` when these are not contiguous-able CPU f32/f64 tensors of one dtype.
pub fn sgd_momentum_update(
    p: &Tensor,
    g: &Tensor,
    buf: &Tensor,
    step: SgdStep,
) -> Result<Option<(Tensor, Tensor)>> {
    let cpu = [p, g, buf]
        .iter()
        .all(|t| matches!(t.device(), Device::Cpu));
    let dtype = p.dtype();
    if !cpu
        || !matches!(dtype, DType::F32 | DType::F64)
        || g.dtype() != dtype
        || buf.dtype() != dtype
    {
        return Ok(None);
    }
    if g.dims() != p.dims() || buf.dims() != p.dims() {
        bail!(
            "sgd: parameter {:?}, gradient {:?} and momentum buffer {:?} differ in shape",
            p.dims(),
            g.dims(),
            buf.dims()
        );
    }
    let (p, g, buf) = (p.contiguous()?, g.contiguous()?, buf.contiguous()?);
    let new_buf = p.apply_op3_no_bwd(
        &g,
        &buf,
        &Pass {
            step,
            kind: PassKind::Buffer,
        },
    )?;
    let new_p = p.apply_op3_no_bwd(
        &g,
        &new_buf,
        &Pass {
            step,
            kind: PassKind::Param,
        },
    )?;
    Ok(Some((new_buf, new_p)))
}

#[derive(Clone, Copy, PartialEq)]
enum PassKind {
    /// (p, g, buf) ↦ buf·μ + (g + p·wd)·(1 − dampening)
    Buffer,
    /// (p, g, new_buf) ↦ p − (nesterov ? (g + p·wd) + new_buf·μ : new_buf)·lr
    Param,
}

struct Pass {
    step: SgdStep,
    kind: PassKind,
}

impl Pass {
    fn run<T: Float>(&self, p: &[T], g: &[T], b: &[T]) -> Vec<T> {
        let s = &self.step;
        let c = |v: f64| T::from_f64(v);
        let (wd, mu, damp, lr) = (
            c(s.weight_decay),
            c(s.momentum),
            c(1.0 - s.dampening),
            c(s.lr),
        );
        // `affine(x, m, 0)` is x·m + 0 in candle; the + 0 is kept so that −0 results match bit for bit.
        let affine = |x: T, m: T| x * m + T::ZERO;
        let decayed = |p: T, g: T| {
            if s.weight_decay != 0.0 {
                g + affine(p, wd)
            } else {
                g
            }
        };
        let (kind, nesterov, damped) = (self.kind, s.nesterov, s.dampening != 0.0);
        let mut out = Vec::with_capacity(p.len());
        out.par_extend(
            p.par_iter()
                .zip(g.par_iter())
                .zip(b.par_iter())
                .with_min_len(MIN_TASK)
                .map(|((&p, &g), &b)| {
                    let d = decayed(p, g);
                    match kind {
                        PassKind::Buffer => {
                            affine(b, mu) + if damped { affine(d, damp) } else { d }
                        }
                        PassKind::Param => {
                            let u = if nesterov { d + affine(b, mu) } else { b };
                            p - affine(u, lr)
                        }
                    }
                }),
        );
        out
    }
}

impl CustomOp3 for Pass {
    fn name(&self) -> &'static str {
        match self.kind {
            PassKind::Buffer => "ebv-sgd-buffer",
            PassKind::Param => "ebv-sgd-param",
        }
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
        fn run<T: Float>(
            op: &Pass,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<CpuStorage> {
            let (p, g, b) = (
                cpu_slice::<T>(s1, l1)?,
                cpu_slice::<T>(s2, l2)?,
                cpu_slice::<T>(s3, l3)?,
            );
            if g.len() != p.len() || b.len() != p.len() {
                bail!(
                    "{}: operands of {}, {} and {} elements",
                    op.name(),
                    p.len(),
                    g.len(),
                    b.len()
                );
            }
            Ok(T::to_cpu_storage_owned(op.run(p, g, b)))
        }
        let out = by_dtype!(s1, self.name(), run, self, s1, l1, s2, l2, s3, l3)?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor};

    use super::super::test_util::{rand_tensor, to_vec};
    use super::*;

    /// The candle-op statement of the same update (what `train::optim` runs elsewhere).
    fn with_candle_ops(p: &Tensor, g: &Tensor, b: &Tensor, s: SgdStep) -> Result<(Tensor, Tensor)> {
        let d = if s.weight_decay != 0.0 {
            (g + p.affine(s.weight_decay, 0.0)?)?
        } else {
            g.clone()
        };
        let damped = if s.dampening != 0.0 {
            d.affine(1.0 - s.dampening, 0.0)?
        } else {
            d.clone()
        };
        let nb = (b.affine(s.momentum, 0.0)? + damped)?;
        let u = if s.nesterov {
            (d + nb.affine(s.momentum, 0.0)?)?
        } else {
            nb.clone()
        };
        let np = (p - u.affine(s.lr, 0.0)?)?;
        Ok((nb, np))
    }

    /// Bit for bit the candle-op update, in f32 and f64, for plain, Nesterov, dampened and undecayed steps,
    /// over more elements than one parallel task.
    #[test]
    fn matches_the_candle_op_update_bitwise() {
        let steps = [
            (0.1, 1e-4, 0.9, 0.0, false),
            (0.05, 5e-4, 0.9, 0.0, true),
            (0.2, 1e-4, 0.8, 0.25, false),
            (0.1, 0.0, 0.9, 0.0, false),
        ];
        for dtype in [DType::F32, DType::F64] {
            for (i, &(lr, weight_decay, momentum, dampening, nesterov)) in steps.iter().enumerate()
            {
                let s = SgdStep {
                    lr,
                    weight_decay,
                    momentum,
                    dampening,
                    nesterov,
                };
                let dims = [3, 50_001];
                let seed = 10 * i as u64;
                let (p, g, b) = (
                    rand_tensor(&dims, seed, dtype),
                    rand_tensor(&dims, seed + 1, dtype),
                    rand_tensor(&dims, seed + 2, dtype),
                );
                let (nb, np) = sgd_momentum_update(&p, &g, &b, s)
                    .expect("update")
                    .expect("cpu path");
                let (wb, wp) = with_candle_ops(&p, &g, &b, s).expect("candle ops");
                let bits = |t: &Tensor| to_vec(t).into_iter().map(f64::to_bits).collect::<Vec<_>>();
                assert!(bits(&nb) == bits(&wb), "buffer differs for {s:?} {dtype:?}");
                assert!(
                    bits(&np) == bits(&wp),
                    "parameter differs for {s:?} {dtype:?}"
                );
            }
        }
    }

    #[test]
    fn declines_other_dtypes_and_rejects_shape_mismatch() {
        let p = rand_tensor(&[4, 5], 1, DType::F32);
        let s = SgdStep {
            lr: 0.1,
            weight_decay: 0.0,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        };
        let half = p.to_dtype(DType::BF16).expect("bf16");
        assert!(sgd_momentum_update(&half, &half, &half, s)
            .expect("ok")
            .is_none());
        let other = rand_tensor(&[5, 4], 2, DType::F32);
        assert!(sgd_momentum_update(&p, &other, &p, s).is_err());
    }
}
