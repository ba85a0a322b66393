//! 2-D max-pool with −inf padding and PyTorch's gradient: all of an output's gradient goes to the first maximum of its
//! window (row-major scan; a NaN counts as a maximum, as in PyTorch).
//!
//! The same op runs on CUDA through this crate's kernels (`gpu.rs`, `cuda/max_pool.cu`), with the same semantics.
//!
//! The CPU op stores nothing besides its output: the backward op recomputes each window's argmax from the input,
//! which costs about one forward pass and saves a u32 per output element held between forward and backward.
//! Windows are clipped to the image instead of materialising the padding; `check_args` guarantees (padding ≤ k/2)
//! that no window lies wholly in the padding.
//!
//! The candle-op path (`max_pool2d_candle`) pads with −inf, takes the k² strided shifted views with `index_select` and
//! folds them with `Tensor::maximum`, so it differentiates correctly on any device.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::by_dtype;
use super::{cpu_slice, zeroed, Float};

pub(crate) fn check_args(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<()> {
    let &[_, _, h, w] = x.dims() else {
        bail!("max_pool2d: input must be [N,C,H,W], got {:?}", x.dims());
    };
    if kernel == 0 || stride == 0 {
        bail!("max_pool2d: kernel and stride must be at least 1");
    }
    if 2 * padding > kernel {
        bail!("max_pool2d: padding {padding} must be at most half the kernel {kernel}");
    }
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        bail!(
            "max_pool2d: kernel {kernel} with padding {padding} is larger than the input {:?}",
            x.dims()
        );
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct PoolGeom {
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl PoolGeom {
    fn new(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Self {
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        Self {
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Result<super::gpu::PoolGeom32> {
        super::gpu::PoolGeom32::new(
            self.h,
            self.w,
            self.k,
            self.stride,
            self.pad,
            self.ho,
            self.wo,
        )
    }

    /// The window of output `o` along an axis of `size`, clipped to the image.
    fn window(&self, o: usize, size: usize) -> (usize, usize) {
        let start = o * self.stride;
        (
            start.saturating_sub(self.pad),
            (start + self.k).saturating_sub(self.pad).min(size),
        )
    }

    /// Index in the plane of the first maximum of output (oy, ox)'s window, and its value.
    #[inline]
    fn argmax<T: Float>(&self, plane: &[T], oy: usize, ox: usize) -> (usize, T) {
        let (y0, y1) = self.window(oy, self.h);
        let (x0, x1) = self.window(ox, self.w);
        let mut best = (y0 * self.w + x0, T::NEG_INF);
        for iy in y0..y1 {
            for (ix, &v) in plane[iy * self.w + x0..iy * self.w + x1].iter().enumerate() {
                #[allow(clippy::eq_op)]
                let is_nan = v != v;
                if v > best.1 || is_nan {
                    best = (iy * self.w + x0 + ix, v);
                }
            }
        }
        best
    }
}

pub(crate) fn max_pool2d_ebv(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op1(MaxPool2d {
        kernel,
        stride,
        padding,
    })
}

pub(crate) fn max_pool2d_candle(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let g = PoolGeom::new(h, w, kernel, stride, padding);
    let padded = if padding > 0 {
        let dev = x.device();
        let side = Tensor::full(f32::NEG_INFINITY, (n, c, h, padding), dev)?.to_dtype(x.dtype())?;
        let x = Tensor::cat(&[&side, x, &side], 3)?;
        let top = Tensor::full(f32::NEG_INFINITY, (n, c, padding, w + 2 * padding), dev)?
            .to_dtype(x.dtype())?;
        Tensor::cat(&[&top, &x, &top], 2)?
    } else {
        x.clone()
    };
    let indices = |tap: usize, out: usize| {
        let idx = (0..out)
            .map(|o| (o * stride + tap) as u32)
            .collect::<Vec<_>>();
        Tensor::from_vec(idx, out, x.device())
    };
    let mut acc: Option<Tensor> = None;
    for ky in 0..kernel {
        let rows = padded.index_select(&indices(ky, g.ho)?, 2)?;
        for kx in 0..kernel {
            let view = rows.index_select(&indices(kx, g.wo)?, 3)?;
            acc = Some(match acc {
                None => view,
                Some(a) => a.maximum(&view)?,
            });
        }
    }
    match acc {
        Some(a) => Ok(a),
        None => bail!("max_pool2d: empty kernel"),
    }
}

struct MaxPool2d {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool2d {
    fn geom(&self, dims: &[usize]) -> Result<(usize, PoolGeom)> {
        let &[n, c, h, w] = dims else {
            bail!("max_pool2d: input must be [N,C,H,W], got {dims:?}");
        };
        if 2 * self.padding > self.kernel
            || h + 2 * self.padding < self.kernel
            || w + 2 * self.padding < self.kernel
        {
            bail!("max_pool2d: bad kernel/padding for {dims:?}");
        }
        Ok((
            n * c,
            PoolGeom::new(h, w, self.kernel, self.stride, self.padding),
        ))
    }
}

fn pool_fwd<T: Float>(g: &PoolGeom, x: &[T]) -> Vec<T> {
    let mut y = zeroed::<T>(x.len() / (g.h * g.w) * g.ho * g.wo);
    y.par_chunks_mut(g.ho * g.wo)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(y, plane)| {
            for (oy, row) in y.chunks_exact_mut(g.wo).enumerate() {
                for (ox, out) in row.iter_mut().enumerate() {
                    *out = g.argmax(plane, oy, ox).1;
                }
            }
        });
    y
}

fn pool_bwd<T: Float>(g: &PoolGeom, x: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = zeroed::<T>(x.len());
    dx.par_chunks_mut(g.h * g.w)
        .zip(x.par_chunks(g.h * g.w))
        .zip(dy.par_chunks(g.ho * g.wo))
        .for_each(|((dx, plane), dy)| {
            for (oy, row) in dy.chunks_exact(g.wo).enumerate() {
                for (ox, &d) in row.iter().enumerate() {
                    dx[g.argmax(plane, oy, ox).0] += d;
                }
            }
        });
    dx
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "ebv-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, g) = self.geom(l.dims())?;
        fn run<T: Float>(g: &PoolGeom, s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
            Ok(T::to_cpu_storage_owned(pool_fwd::<T>(g, cpu_slice(s, l)?)))
        }
        let out = by_dtype!(s, self.name(), run, &g, s, l)?;
        let d = l.dims();
        Ok((out, Shape::from(vec![d[0], d[1], g.ho, g.wo])))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (planes, g) = self.geom(l.dims())?;
        let out = super::gpu::pool_fwd(s, l, planes, g.cuda()?)?;
        let d = l.dims();
        Ok((out, Shape::from(vec![d[0], d[1], g.ho, g.wo])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let bwd = MaxPool2dGrad {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad, &bwd)?))
    }
}

/// (X, dY) ↦ dX.
struct MaxPool2dGrad {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl CustomOp2 for MaxPool2dGrad {
    fn name(&self) -> &'static str {
        "ebv-max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let fwd = MaxPool2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let (_, g) = fwd.geom(l1.dims())?;
        let d = l1.dims();
        if l2.dims() != [d[0], d[1], g.ho, g.wo] {
            bail!("{}: dY {:?} does not match X {d:?}", self.name(), l2.dims());
        }
        fn run<T: Float>(
            g: &PoolGeom,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<CpuStorage> {
            Ok(T::to_cpu_storage_owned(pool_bwd::<T>(
                g,
                cpu_slice(s1, l1)?,
                cpu_slice(s2, l2)?,
            )))
        }
        let out = by_dtype!(s1, self.name(), run, &g, s1, l1, s2, l2)?;
        Ok((out, Shape::from(d.to_vec())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let fwd = MaxPool2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let (planes, g) = fwd.geom(l1.dims())?;
        let d = l1.dims();
        if l2.dims() != [d[0], d[1], g.ho, g.wo] {
            bail!("{}: dY {:?} does not match X {d:?}", self.name(), l2.dims());
        }
        let out = super::gpu::pool_bwd(s1, l1, s2, l2, planes, g.cuda()?)?;
        Ok((out, Shape::from(d.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::super::test_util::{distinct_tensor, fd_check, max_rel_diff, rand_tensor, to_vec};
    use super::super::{max_pool2d, KernelImpl};

    /// Output and dX of sum(max_pool2d(x) · r).
    fn run(
        x: &Tensor,
        r: Option<&Tensor>,
        k: usize,
        s: usize,
        p: usize,
        imp: KernelImpl,
    ) -> (Tensor, Tensor) {
        let xv = Var::from_tensor(x).expect("var");
        let y = max_pool2d(xv.as_tensor(), k, s, p, imp).expect("pool");
        let l = match r {
            Some(r) => (&y * r).expect("mul"),
            None => y.clone(),
        };
        let grads = l.sum_all().expect("sum").backward().expect("backward");
        let g = grads.get(xv.as_tensor()).expect("dx").clone();
        (y, g)
    }

    // The expected values below were printed by (torch 2.15.0, /tmp/torchenv/bin/python):
    //
    // import torch
    // x = torch.tensor([float((i * 7) % 25 - 12) for i in range(25)], dtype=torch.float64).reshape(1, 1, 5, 5)
    // x.requires_grad_(True)
    // y = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    // r = torch.arange(1, 10, dtype=torch.float64).reshape(1, 1, 3, 3)
    // (y * r).sum().backward()
    // print(y.flatten().tolist()); print(x.grad.flatten().tolist())
    //
    // t = torch.tensor([float((i * 5) % 16 // 3) for i in range(16)], dtype=torch.float64).reshape(1, 1, 4, 4)
    // t.requires_grad_(True)
    // u = torch.nn.functional.max_pool2d(t, 2, 2, 0)
    // u.sum().backward()
    // print(u.flatten().tolist()); print(t.grad.flatten().tolist())
    //
    // v = torch.tensor([float((i * 5) % 16 // 3) for i in range(16)], dtype=torch.float64).reshape(1, 1, 4, 4)
    // v.requires_grad_(True)
    // w = torch.nn.functional.max_pool2d(v, 3, 1, 1)
    // (w * torch.arange(1, 17, dtype=torch.float64).reshape(1, 1, 4, 4)).sum().backward()
    // print(w.flatten().tolist()); print(v.grad.flatten().tolist())
    const TORCH_Y_3S2P1: [f64; 9] = [5.0, 12.0, 9.0, 8.0, 12.0, 11.0, 10.0, 10.0, 6.0];
    const TORCH_DX_3S2P1: [f64; 25] = [
        0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 1.0, 7.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 15.0, 0.0, 0.0, 9.0,
    ];
    const TORCH_Y_2S2: [f64; 4] = [3.0, 5.0, 4.0, 3.0];
    const TORCH_DX_2S2: [f64; 16] = [
        0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
    ];
    const TORCH_Y_3S1P1_TIES: [f64; 16] = [
        3.0, 4.0, 5.0, 5.0, 4.0, 4.0, 5.0, 5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.0,
    ];
    const TORCH_DX_3S1P1_TIES: [f64; 16] = [
        0.0, 0.0, 0.0, 22.0, 0.0, 1.0, 41.0, 0.0, 0.0, 56.0, 0.0, 0.0, 0.0, 0.0, 0.0, 16.0,
    ];

    fn tensor(v: impl Iterator<Item = f64>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(v.collect::<Vec<_>>(), dims, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn matches_pytorch_values() {
        let x = tensor((0..25).map(|i| ((i * 7) % 25) as f64 - 12.0), &[1, 1, 5, 5]);
        let r = tensor((1..10).map(f64::from), &[1, 1, 3, 3]);
        for dtype in [DType::F64, DType::F32] {
            let (y, dx) = run(
                &x.to_dtype(dtype).expect("dt"),
                Some(&r.to_dtype(dtype).expect("dt")),
                3,
                2,
                1,
                KernelImpl::Ebv,
            );
            assert_eq!(to_vec(&y), TORCH_Y_3S2P1, "3x3/s2/p1 output, {dtype:?}");
            assert_eq!(to_vec(&dx), TORCH_DX_3S2P1, "3x3/s2/p1 gradient, {dtype:?}");
        }
        // kernel == stride: candle's own max_pool2d scales this gradient by 1/4.
        let t = tensor((0..16).map(|i| ((i * 5) % 16 / 3) as f64), &[1, 1, 4, 4]);
        let (y, dx) = run(&t, None, 2, 2, 0, KernelImpl::Ebv);
        assert_eq!(to_vec(&y), TORCH_Y_2S2);
        assert_eq!(to_vec(&dx), TORCH_DX_2S2);
        // Ties (values 0..5 repeat): the whole gradient goes to the first maximum in the window.
        let r = tensor((1..17).map(f64::from), &[1, 1, 4, 4]);
        let (y, dx) = run(&t, Some(&r), 3, 1, 1, KernelImpl::Ebv);
        assert_eq!(to_vec(&y), TORCH_Y_3S1P1_TIES);
        assert_eq!(to_vec(&dx), TORCH_DX_3S1P1_TIES);
    }

    #[test]
    fn candle_path_matches_pytorch_without_ties() {
        let x = tensor((0..25).map(|i| ((i * 7) % 25) as f64 - 12.0), &[1, 1, 5, 5]);
        let r = tensor((1..10).map(f64::from), &[1, 1, 3, 3]);
        let (y, dx) = run(&x, Some(&r), 3, 2, 1, KernelImpl::Candle);
        assert_eq!(to_vec(&y), TORCH_Y_3S2P1);
        assert_eq!(to_vec(&dx), TORCH_DX_3S2P1);
    }

    #[test]
    fn gradient_matches_finite_differences_f64() {
        for &(dims, k, s, p) in &[
            ([2, 3, 7, 8], 3, 2, 1),
            ([1, 2, 6, 6], 2, 2, 0),
            ([1, 2, 9, 7], 3, 1, 1),
            ([2, 1, 11, 10], 5, 3, 2),
        ] {
            let x = distinct_tensor(&dims, 5, DType::F64);
            let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
            let r = rand_tensor(
                &[n, c, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1],
                6,
                DType::F64,
            );
            let loss =
                |t: &[Tensor]| (max_pool2d(&t[0], k, s, p, KernelImpl::Ebv)? * &r)?.sum_all();
            let worst = fd_check(loss, &[x], 40).expect("fd");
            assert!(
                worst < 1e-8,
                "k{k} s{s} p{p}: finite differences disagree by {worst:e}"
            );
        }
    }

    #[test]
    fn fallback_equals_custom_op() {
        for &(dims, k, s, p) in &[
            ([2, 3, 9, 10], 3, 2, 1),
            ([1, 4, 8, 8], 2, 2, 0),
            ([2, 2, 7, 5], 3, 1, 1),
        ] {
            for dtype in [DType::F32, DType::F64] {
                let x = distinct_tensor(&dims, 9, dtype);
                let (n, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
                let r = rand_tensor(
                    &[n, c, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1],
                    10,
                    dtype,
                );
                let (ya, ga) = run(&x, Some(&r), k, s, p, KernelImpl::Ebv);
                let (yb, gb) = run(&x, Some(&r), k, s, p, KernelImpl::Candle);
                assert_eq!(
                    max_rel_diff(&ya, &yb),
                    0.0,
                    "output k{k} s{s} p{p} {dtype:?}"
                );
                // Overlapping windows add their gradients in a different order in the two paths.
                let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
                let d = max_rel_diff(&ga, &gb);
                assert!(
                    d < tol,
                    "gradient k{k} s{s} p{p} {dtype:?} differs by {d:e}"
                );
            }
        }
    }

    #[test]
    fn rejects_padding_over_half_the_kernel() {
        let x = rand_tensor(&[1, 1, 5, 5], 1, DType::F32);
        assert!(max_pool2d(&x, 3, 2, 2, KernelImpl::Ebv).is_err());
        assert!(max_pool2d(&x, 3, 2, 2, KernelImpl::Candle).is_err());
    }
}
