//! The end of a residual block, relu(a + b), as one CPU op with its backward.
//!
//! Built from candle's ops it is an add, a ReLU and, backward, a comparison, a cast and a multiply: passes over an
//! activation-sized tensor of which the ReLU and the comparison run on the calling thread alone (candle's unary and
//! comparison kernels are serial), serial time in every block of a multi-threaded step. Here the forward is one
//! parallel pass and the backward another: both inputs get the same gradient, g·[y > 0] (PyTorch's ReLU gradient;
//! candle's passes the gradient at exactly 0 too, a difference of measure zero).
//!
//! The same op runs on CUDA through this crate's kernel (`gpu.rs`, `cuda/residual.cu`): one pass each way there too.
//!
//! Invariants: the inputs have one shape and dtype (checked); the backward reads only the stored output (y > 0
//! exactly where a + b > 0), so nothing else is kept between forward and backward.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::by_dtype;
use super::{cpu_slice, Float};

/// At least this many elements per parallel task.
const MIN_TASK: usize = 1 << 14;

/// The op checks the shapes (one check, where the slices are read).
pub(crate) fn add_relu_ebv(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2(&b.contiguous()?, AddRelu(Pass::Forward))
}

pub(crate) fn add_relu_candle(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a + b)?.relu()
}

/// `f` applied element-wise to two equal-length slices by the whole Rayon pool, into a new vector.
fn zip_map<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len());
    out.par_extend(
        a.par_iter()
            .zip(b.par_iter())
            .with_min_len(MIN_TASK)
            .map(|(&x, &y)| f(x, y)),
    );
    out
}

/// Which pass of relu(a + b).
#[derive(Clone, Copy)]
enum Pass {
    /// (a, b) ↦ relu(a + b); NaN becomes 0, as in candle's ReLU.
    Forward,
    /// (y, g) ↦ g·[y > 0], the gradient of both inputs.
    Backward,
}

struct AddRelu(Pass);

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        match self.0 {
            Pass::Forward => "ebv-add-relu",
            Pass::Backward => "ebv-add-relu-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Float>(
            op: &AddRelu,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<CpuStorage> {
            if l1.dims() != l2.dims() {
                bail!(
                    "{}: shapes differ: {:?} and {:?}",
                    op.name(),
                    l1.dims(),
                    l2.dims()
                );
            }
            let (x, z) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
            let out = match op.0 {
                Pass::Forward => zip_map(x, z, |a, b| {
                    let s = a + b;
                    if s > T::ZERO {
                        s
                    } else {
                        T::ZERO
                    }
                }),
                Pass::Backward => zip_map(x, z, |y, g| if y > T::ZERO { g } else { T::ZERO }),
            };
            Ok(T::to_cpu_storage_owned(out))
        }
        let out = by_dtype!(s1, self.name(), run, self, s1, l1, s2, l2)?;
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let forward = matches!(self.0, Pass::Forward);
        let out = super::gpu::add_relu(forward, s1, l1, s2, l2)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = res.apply_op2_no_bwd(&grad.contiguous()?, &AddRelu(Pass::Backward))?;
        Ok((Some(d.clone()), Some(d)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor, Var};

    use super::super::test_util::{fd_check, max_rel_diff, rand_tensor};
    use super::super::{add_relu, KernelImpl};

    /// Output and both gradients against candle's add + relu (f32, odd sizes, 1 and 3 threads), and the
    /// gradients against finite differences (f64).
    #[test]
    fn matches_candle_and_finite_differences() {
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                for dims in [&[2usize, 3, 5, 7][..], &[1, 70_001]] {
                    let run = |imp: KernelImpl| {
                        let a = Var::from_tensor(&rand_tensor(dims, 1, DType::F32)).expect("a");
                        let b = Var::from_tensor(&rand_tensor(dims, 2, DType::F32)).expect("b");
                        let r = rand_tensor(dims, 3, DType::F32);
                        let y = add_relu(a.as_tensor(), b.as_tensor(), imp).expect("add_relu");
                        let gs = (&y * &r)
                            .and_then(|t| t.sum_all())
                            .and_then(|t| t.backward())
                            .expect("backward");
                        let da = gs.get(a.as_tensor()).expect("da").clone();
                        let db = gs.get(b.as_tensor()).expect("db").clone();
                        [y, da, db]
                    };
                    for (x, y) in run(KernelImpl::Ebv)
                        .iter()
                        .zip(run(KernelImpl::Candle).iter())
                    {
                        assert_eq!(x.dims(), y.dims());
                        assert!(
                            max_rel_diff(x, y) == 0.0,
                            "differs from candle for {dims:?}"
                        );
                    }
                }
            });
        }
        let a = rand_tensor(&[2, 3, 4, 5], 4, DType::F64);
        let b = rand_tensor(&[2, 3, 4, 5], 5, DType::F64);
        let r = rand_tensor(&[2, 3, 4, 5], 6, DType::F64);
        let loss = |t: &[Tensor]| (add_relu(&t[0], &t[1], KernelImpl::Ebv)? * &r)?.sum_all();
        let worst = fd_check(loss, &[a, b], 20).expect("fd");
        assert!(worst < 1e-7, "finite differences disagree by {worst:e}");
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let a = rand_tensor(&[2, 3], 1, DType::F32);
        let b = rand_tensor(&[3, 2], 2, DType::F32);
        assert!(add_relu(&a, &b, KernelImpl::Ebv).is_err());
    }
}
