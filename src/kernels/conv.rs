//! conv2d (NCHW, square kernel, no bias, groups 1, dilation 1) as three CPU custom ops: forward, input gradient and
//! weight gradient, each one GEMM per image on im2col columns.
//!
//! Layout of the columns of one image: a row-major [C·K·K, Ho·Wo] matrix whose row (c, ky, kx) holds
//! x[c, oy·s+ky−p, ox·s+kx−p] (zero in the padding). With W seen as [O, C·K·K]:
//! - forward:      Y_n  = W · col(x_n)
//! - input grad:   dx_n = col2im(Wᵀ · dY_n)              (scatter-add of the column matrix back onto the image)
//! - weight grad:  dW   = Σ_n dY_n · col(x_n)ᵀ          (exactly K×K, whatever the stride)
//!
//! Columns exist for a small group of images at a time per thread (thread-local scratch), never for the whole batch:
//! one image when it has at least `MIN_GEMM_COLUMNS` output pixels, else a few side by side (one [C·K·K, g·Ho·Wo]
//! matrix, with dY gathered and Y scattered to match) so the GEMMs are not thin. A 1×1 stride-1 unpadded conv of a
//! single image needs no columns at all: the image itself is the [C, H·W] matrix.
//!
//! The ops hand 3×3 stride-1 convolutions with enough channels to `winograd.rs` (fewer multiplications, same
//! function) unless [`super::ConvAlgo::Im2col`] is set; these im2col kernels are its reference in the tests.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_slice, gemm_parallelism, matmul, winograd, zeroed, Float, MatRef};

pub(crate) fn conv2d_ebv(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    ConvGeom::new(x.dims(), w.dims(), stride, padding)?;
    x.apply_op2(&w, Conv2dFwd { stride, padding })
}

/// The shapes of one convolution, checked once. Shared with the cuDNN ops.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvGeom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl ConvGeom {
    pub(super) fn new(
        x_dims: &[usize],
        w_dims: &[usize],
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let &[n, c, h, w] = x_dims else {
            bail!("conv2d: input must be [N,C,H,W], got {x_dims:?}");
        };
        let &[o, wc, k, k2] = w_dims else {
            bail!("conv2d: weight must be [O,C,K,K], got {w_dims:?}");
        };
        if wc != c || k != k2 || k == 0 {
            bail!(
                "conv2d: weight {w_dims:?} does not fit input {x_dims:?} (square kernel, same C)"
            );
        }
        if stride == 0 || h + 2 * pad < k || w + 2 * pad < k {
            bail!("conv2d: kernel {k} stride {stride} padding {pad} does not fit input {x_dims:?}");
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (w + 2 * pad - k) / stride + 1;
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            pad,
            ho,
            wo,
        })
    }

    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    fn in_image(&self) -> usize {
        self.c * self.h * self.w
    }

    pub(super) fn out_dims(&self) -> [usize; 4] {
        [self.n, self.o, self.ho, self.wo]
    }

    /// 1×1, stride 1, no padding: the image is its own column matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// The range of output coordinates whose input coordinate `o·s + tap − p` lies in `0..size`.
    fn valid(&self, tap: usize, size: usize, out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = if self.pad > tap {
            (self.pad - tap).div_ceil(s)
        } else {
            0
        };
        let hi = if size + self.pad > tap {
            (size - 1 + self.pad - tap) / s + 1
        } else {
            0
        };
        let hi = hi.min(out);
        (lo.min(hi), hi)
    }
}

/// Fills columns `off..off+Ho·Wo` of `col` ([C·K·K, ld] row-major; every element of those columns written) from one
/// image `x` ([C, H, W]).
fn im2col<T: Float>(g: &ConvGeom, x: &[T], col: &mut [T], ld: usize, off: usize) {
    let (p, s) = (g.out_plane(), g.stride);
    let zero = T::ZERO;
    for (c, xc) in x.chunks_exact(g.h * g.w).enumerate().take(g.c) {
        for ky in 0..g.k {
            let (oy0, oy1) = g.valid(ky, g.h, g.ho);
            for kx in 0..g.k {
                let (ox0, ox1) = g.valid(kx, g.w, g.wo);
                let row = (c * g.k + ky) * g.k + kx;
                let row = &mut col[row * ld + off..row * ld + off + p];
                for (oy, dst) in row.chunks_exact_mut(g.wo).enumerate() {
                    if oy < oy0 || oy >= oy1 || ox0 == ox1 {
                        dst.fill(zero);
                        continue;
                    }
                    let iy = oy * s + ky - g.pad;
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    dst[..ox0].fill(zero);
                    dst[ox1..].fill(zero);
                    let ix0 = ox0 * s + kx - g.pad;
                    if s == 1 {
                        dst[ox0..ox1].copy_from_slice(&src[ix0..ix0 + (ox1 - ox0)]);
                    } else {
                        for (d, v) in dst[ox0..ox1].iter_mut().zip(src[ix0..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds columns `off..off+Ho·Wo` of `col` ([C·K·K, ld]) back onto one image gradient `dx` ([C, H, W]); the
/// transpose of [`im2col`].
fn col2im<T: Float>(g: &ConvGeom, col: &[T], ld: usize, off: usize, dx: &mut [T]) {
    let (p, s) = (g.out_plane(), g.stride);
    for (c, dxc) in dx.chunks_exact_mut(g.h * g.w).enumerate().take(g.c) {
        for ky in 0..g.k {
            let (oy0, oy1) = g.valid(ky, g.h, g.ho);
            for kx in 0..g.k {
                let (ox0, ox1) = g.valid(kx, g.w, g.wo);
                if ox0 == ox1 {
                    continue;
                }
                let row = (c * g.k + ky) * g.k + kx;
                let row = &col[row * ld + off..row * ld + off + p];
                for oy in oy0..oy1 {
                    let src = &row[oy * g.wo + ox0..oy * g.wo + ox1];
                    let iy = oy * s + ky - g.pad;
                    let ix0 = ox0 * s + kx - g.pad;
                    let dst = &mut dxc[iy * g.w + ix0..(iy + 1) * g.w];
                    if s == 1 {
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst.iter_mut().step_by(s).zip(src) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Below this many output pixels per image, images are batched side by side into one column matrix so that the GEMMs
/// are not thin (ResNet's 7×7 and 14×14 stages, small models at batch 128).
const MIN_GEMM_COLUMNS: usize = 512;

/// How images are processed: as parallel tasks of `group` images each (single-threaded GEMMs), or group after group
/// with GEMMs that are parallel inside; the images of a group sit side by side in one GEMM. Shared with
/// `winograd.rs`.
pub(super) struct Plan {
    pub(super) parallel: bool,
    pub(super) par: gemm::Parallelism,
    pub(super) group: usize,
}

impl Plan {
    /// Groups of `n` images of `cols_per_image` GEMM columns each, large enough for `min_cols` columns but at most
    /// one thread's share of the images when groups are tasks, and at most `serial_group` images otherwise.
    pub(super) fn new(
        n: usize,
        cols_per_image: usize,
        min_cols: usize,
        serial_group: usize,
    ) -> Self {
        let (parallel, par) = gemm_parallelism(n);
        let cap = if parallel {
            n.div_ceil(rayon::current_num_threads())
        } else {
            serial_group
        };
        let group = min_cols
            .div_ceil(cols_per_image.max(1))
            .clamp(1, cap.max(1));
        Self {
            parallel,
            par,
            group,
        }
    }

    /// The plan of the im2col kernels: one image at a time when the GEMMs are parallel inside.
    fn im2col(g: &ConvGeom) -> Self {
        Self::new(g.n, g.out_plane(), MIN_GEMM_COLUMNS, 1)
    }
}

/// Runs `f(images of the group, chunk of `out` for them)` over groups of `plan.group` consecutive images (the last
/// group may be shorter), in parallel when the plan says so.
pub(super) fn for_each_group<T: Float>(
    out: &mut [T],
    per_image: usize,
    plan: &Plan,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) -> Result<()> + Sync,
) -> Result<()> {
    if per_image == 0 {
        return Ok(());
    }
    let chunk = per_image * plan.group;
    let run = |(i, o): (usize, &mut [T])| {
        let first = i * plan.group;
        f(first..first + o.len() / per_image, o)
    };
    if plan.parallel {
        out.par_chunks_mut(chunk).enumerate().try_for_each(run)
    } else {
        out.chunks_mut(chunk).enumerate().try_for_each(run)
    }
}

/// Σ `partial(range)` over a split of the images `0..n` into one contiguous range per thread when the plan runs
/// tasks (one accumulator of `len` values per thread, not per image), or `partial(0..n)`. The split is fixed, not
/// left to work stealing, so the sum is the same bits on every run.
pub(super) fn sum_over_images<T: Float>(
    plan: &Plan,
    n: usize,
    len: usize,
    partial: impl Fn(std::ops::Range<usize>) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    if !plan.parallel {
        return partial(0..n);
    }
    let parts = rayon::current_num_threads().min(n);
    let sums = (0..parts)
        .into_par_iter()
        .map(|t| partial(t * n / parts..(t + 1) * n / parts))
        .collect::<Result<Vec<_>>>()?;
    let mut sums = sums.into_iter();
    let Some(mut total) = sums.next() else {
        return Ok(vec![T::ZERO; len]);
    };
    for s in sums {
        total
            .par_iter_mut()
            .zip(s.par_iter())
            .for_each(|(a, b)| *a += *b);
    }
    Ok(total)
}

/// Copies `cnt` consecutive [rows, p] blocks into one [rows, cnt·p] matrix (images side by side).
fn gather<T: Float>(src: &[T], rows: usize, p: usize, cnt: usize, dst: &mut [T]) {
    for (j, block) in src.chunks_exact(rows * p).take(cnt).enumerate() {
        for (r, row) in block.chunks_exact(p).enumerate() {
            dst[r * cnt * p + j * p..r * cnt * p + (j + 1) * p].copy_from_slice(row);
        }
    }
}

/// The transpose of [`gather`].
fn scatter<T: Float>(src: &[T], rows: usize, p: usize, cnt: usize, dst: &mut [T]) {
    for (j, block) in dst.chunks_exact_mut(rows * p).take(cnt).enumerate() {
        for (r, row) in block.chunks_exact_mut(p).enumerate() {
            row.copy_from_slice(&src[r * cnt * p + j * p..r * cnt * p + (j + 1) * p]);
        }
    }
}

pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Result<Vec<T>> {
    let (p, ckk) = (g.out_plane(), g.ckk());
    let mut y = zeroed::<T>(g.n * g.o * p);
    let w_mat = MatRef {
        data: w,
        rs: ckk,
        cs: 1,
    };
    let plan = Plan::im2col(g);
    for_each_group(&mut y, g.o * p, &plan, |images, y_grp| {
        let (first, cnt) = (images.start, images.len());
        let x_grp = &x[first * g.in_image()..(first + cnt) * g.in_image()];
        if cnt == 1 && g.pointwise() {
            return matmul(
                g.o,
                p,
                ckk,
                y_grp,
                w_mat,
                MatRef {
                    data: x_grp,
                    rs: p,
                    cs: 1,
                },
                false,
                plan.par,
            );
        }
        let cols = cnt * p;
        let tmp_len = if cnt == 1 { 0 } else { g.o * cols };
        T::with_scratch(ckk * cols + tmp_len, |buf| {
            let (col, tmp) = buf.split_at_mut(ckk * cols);
            for (j, x_n) in x_grp.chunks_exact(g.in_image()).enumerate() {
                im2col(g, x_n, col, cols, j * p);
            }
            let col = MatRef {
                data: &*col,
                rs: cols,
                cs: 1,
            };
            if cnt == 1 {
                return matmul(g.o, p, ckk, y_grp, w_mat, col, false, plan.par);
            }
            matmul(g.o, cols, ckk, tmp, w_mat, col, false, plan.par)?;
            scatter(tmp, g.o, p, cnt, y_grp);
            Ok(())
        })
    })?;
    Ok(y)
}

pub(super) fn grad_input<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Result<Vec<T>> {
    let (p, ckk) = (g.out_plane(), g.ckk());
    let mut dx = zeroed::<T>(g.n * g.in_image());
    // Wᵀ as a [C·K·K, O] matrix, read in place.
    let wt = MatRef {
        data: w,
        rs: 1,
        cs: ckk,
    };
    let plan = Plan::im2col(g);
    for_each_group(&mut dx, g.in_image(), &plan, |images, dx_grp| {
        let (first, cnt) = (images.start, images.len());
        let dy_grp = &dy[first * g.o * p..(first + cnt) * g.o * p];
        if cnt == 1 && g.pointwise() {
            return matmul(
                ckk,
                p,
                g.o,
                dx_grp,
                wt,
                MatRef {
                    data: dy_grp,
                    rs: p,
                    cs: 1,
                },
                false,
                plan.par,
            );
        }
        let cols = cnt * p;
        let tmp_len = if cnt == 1 { 0 } else { g.o * cols };
        T::with_scratch(ckk * cols + tmp_len, |buf| {
            let (dcol, tmp) = buf.split_at_mut(ckk * cols);
            let dy_mat = if cnt == 1 {
                MatRef {
                    data: dy_grp,
                    rs: p,
                    cs: 1,
                }
            } else {
                gather(dy_grp, g.o, p, cnt, tmp);
                MatRef {
                    data: &*tmp,
                    rs: cols,
                    cs: 1,
                }
            };
            matmul(ckk, cols, g.o, dcol, wt, dy_mat, false, plan.par)?;
            for (j, dx_n) in dx_grp.chunks_exact_mut(g.in_image()).enumerate() {
                col2im(g, dcol, cols, j * p, dx_n);
            }
            Ok(())
        })
    })?;
    Ok(dx)
}

pub(super) fn grad_weight<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Result<Vec<T>> {
    let (p, ckk) = (g.out_plane(), g.ckk());
    let len = g.o * ckk;
    let plan = Plan::im2col(g);
    // Sum over one range of images into a fresh accumulator, `plan.group` images per GEMM.
    let partial = |images: std::ops::Range<usize>| -> Result<Vec<T>> {
        let mut acc = vec![T::ZERO; len];
        let mut first = images.start;
        while first < images.end {
            let cnt = plan.group.min(images.end - first);
            let x_grp = &x[first * g.in_image()..(first + cnt) * g.in_image()];
            let dy_grp = &dy[first * g.o * p..(first + cnt) * g.o * p];
            let accumulate = first > images.start;
            if cnt == 1 && g.pointwise() {
                let (dy_mat, x_mat) = (
                    MatRef {
                        data: dy_grp,
                        rs: p,
                        cs: 1,
                    },
                    MatRef {
                        data: x_grp,
                        rs: 1,
                        cs: p,
                    },
                );
                matmul(g.o, ckk, p, &mut acc, dy_mat, x_mat, accumulate, plan.par)?;
            } else {
                let cols = cnt * p;
                let tmp_len = if cnt == 1 { 0 } else { g.o * cols };
                T::with_scratch(ckk * cols + tmp_len, |buf| {
                    let (col, tmp) = buf.split_at_mut(ckk * cols);
                    for (j, x_n) in x_grp.chunks_exact(g.in_image()).enumerate() {
                        im2col(g, x_n, col, cols, j * p);
                    }
                    let dy_mat = if cnt == 1 {
                        MatRef {
                            data: dy_grp,
                            rs: p,
                            cs: 1,
                        }
                    } else {
                        gather(dy_grp, g.o, p, cnt, tmp);
                        MatRef {
                            data: &*tmp,
                            rs: cols,
                            cs: 1,
                        }
                    };
                    let col_t = MatRef {
                        data: &*col,
                        rs: 1,
                        cs: cols,
                    };
                    matmul(
                        g.o, ckk, cols, &mut acc, dy_mat, col_t, accumulate, plan.par,
                    )
                })?;
            }
            first += cnt;
        }
        Ok(acc)
    };
    sum_over_images(&plan, g.n, len, partial)
}

/// Dispatches a typed kernel over the dtypes the CPU ops support.
macro_rules! by_dtype {
    ($storage:expr, $name:expr, $f:ident, $($arg:expr),*) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => $f::<f32>($($arg),*),
            candle_core::CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
        }
    };
}
pub(crate) use by_dtype;

struct Conv2dFwd {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dFwd {
    fn name(&self) -> &'static str {
        "ebv-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeom::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        fn run<T: Float>(
            g: &ConvGeom,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<CpuStorage> {
            let (x, w) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?);
            Ok(T::to_cpu_storage_owned(if winograd::applies(g) {
                winograd::forward::<T>(g, x, w)?
            } else {
                forward::<T>(g, x, w)?
            }))
        }
        let out = by_dtype!(s1, self.name(), run, &g, s1, l1, s2, l2)?;
        Ok((out, Shape::from(g.out_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = ConvGeom::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &Conv2dGradInput { g })?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &Conv2dGradWeight { g })?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// (dY, W) ↦ dX. Carries the forward geometry: the input size cannot be recovered from dY when stride > 1.
struct Conv2dGradInput {
    g: ConvGeom,
}

impl CustomOp2 for Conv2dGradInput {
    fn name(&self) -> &'static str {
        "ebv-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        if l1.dims() != g.out_dims() || l2.dims() != [g.o, g.c, g.k, g.k] {
            bail!(
                "{}: got dY {:?} and W {:?} for geometry {g:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        fn run<T: Float>(
            g: &ConvGeom,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<CpuStorage> {
            let (dy, w) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?);
            Ok(T::to_cpu_storage_owned(if winograd::applies(g) {
                winograd::grad_input::<T>(g, dy, w)?
            } else {
                grad_input::<T>(g, dy, w)?
            }))
        }
        let out = by_dtype!(s1, self.name(), run, g, s1, l1, s2, l2)?;
        Ok((out, Shape::from(vec![g.n, g.c, g.h, g.w])))
    }
}

/// (X, dY) ↦ dW, exactly [O, C, K, K].
struct Conv2dGradWeight {
    g: ConvGeom,
}

impl CustomOp2 for Conv2dGradWeight {
    fn name(&self) -> &'static str {
        "ebv-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        if l1.dims() != [g.n, g.c, g.h, g.w] || l2.dims() != g.out_dims() {
            bail!(
                "{}: got X {:?} and dY {:?} for geometry {g:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        fn run<T: Float>(
            g: &ConvGeom,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<CpuStorage> {
            let (x, dy) = (cpu_slice(s1, l1)?, cpu_slice(s2, l2)?);
            Ok(T::to_cpu_storage_owned(if winograd::applies(g) {
                winograd::grad_weight::<T>(g, x, dy)?
            } else {
                grad_weight::<T>(g, x, dy)?
            }))
        }
        let out = by_dtype!(s1, self.name(), run, g, s1, l1, s2, l2)?;
        Ok((out, Shape::from(vec![g.o, g.c, g.k, g.k])))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::super::test_util::{fd_check, max_rel_diff, rand_tensor};
    use super::super::{conv2d, KernelImpl};

    /// (n, cin, h, w, cout, k, stride, pad). candle's own conv2d backward fails when (H+2p−k) mod s differs from
    /// (W+2p−k) mod s (it derives the conv-transpose output padding from H alone), so these shapes avoid that case;
    /// the finite-difference test covers it.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    const SHAPES: &[Case] = &[
        (2, 3, 9, 11, 5, 3, 1, 1),
        (1, 5, 11, 7, 9, 3, 2, 1),
        (3, 3, 17, 15, 6, 7, 2, 3),
        (2, 6, 7, 9, 13, 1, 1, 0),
        (2, 7, 9, 7, 10, 1, 2, 0),
        (1, 4, 6, 6, 3, 3, 1, 0),
        (2, 2, 5, 5, 3, 3, 2, 0),
        (1, 3, 4, 5, 2, 7, 1, 3),
        (4, 9, 8, 8, 11, 3, 2, 1),
        (1, 2, 3, 3, 4, 1, 1, 1),
    ];

    /// Output, dX and dW of sum(conv(x, w) · r) for one implementation.
    fn run(
        x: &Tensor,
        w: &Tensor,
        r: &Tensor,
        stride: usize,
        pad: usize,
        imp: KernelImpl,
    ) -> [Tensor; 3] {
        let xv = Var::from_tensor(x).expect("var");
        let wv = Var::from_tensor(w).expect("var");
        let y = conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad, imp).expect("conv");
        let grads = (&y * r)
            .expect("mul")
            .sum_all()
            .expect("sum")
            .backward()
            .expect("backward");
        let gx = grads.get(xv.as_tensor()).expect("dx").clone();
        let gw = grads.get(wv.as_tensor()).expect("dw").clone();
        [y, gx, gw]
    }

    #[test]
    fn matches_candle_conv_and_its_gradients_f32() {
        // The thread count decides between per-image tasks, image groups and parallel GEMMs: cover all three.
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(compare_with_candle);
        }
    }

    fn compare_with_candle() {
        for (seed, &(n, c, h, w, o, k, s, p)) in SHAPES.iter().enumerate() {
            let seed = seed as u64 * 3;
            let x = rand_tensor(&[n, c, h, w], seed, DType::F32);
            let wt = rand_tensor(&[o, c, k, k], seed + 1, DType::F32);
            let ho = (h + 2 * p - k) / s + 1;
            let wo = (w + 2 * p - k) / s + 1;
            let r = rand_tensor(&[n, o, ho, wo], seed + 2, DType::F32);
            let ours = run(&x, &wt, &r, s, p, KernelImpl::Ebv);
            let theirs = run(&x, &wt, &r, s, p, KernelImpl::Candle);
            let threads = rayon::current_num_threads();
            for (what, a, b) in [
                ("y", &ours[0], &theirs[0]),
                ("dx", &ours[1], &theirs[1]),
                ("dw", &ours[2], &theirs[2]),
            ] {
                assert_eq!(
                    a.dims(),
                    b.dims(),
                    "{what} shape for {:?}",
                    SHAPES[seed as usize / 3]
                );
                let d = max_rel_diff(a, b);
                assert!(
                    d < 1e-5,
                    "{what} differs by {d:e} for {:?}, {threads} threads",
                    SHAPES[seed as usize / 3]
                );
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_f64() {
        // The first shape has (H+2p−k) mod s ≠ (W+2p−k) mod s, where candle's own backward fails.
        for &(n, c, h, w, o, k, s, p) in &[
            (2, 3, 7, 6, 4, 3, 2, 1),
            (1, 2, 9, 9, 3, 7, 2, 3),
            (2, 3, 5, 4, 5, 1, 2, 0),
        ] {
            let x = rand_tensor(&[n, c, h, w], 11, DType::F64);
            let wt = rand_tensor(&[o, c, k, k], 12, DType::F64);
            let ho = (h + 2 * p - k) / s + 1;
            let wo = (w + 2 * p - k) / s + 1;
            let r = rand_tensor(&[n, o, ho, wo], 13, DType::F64);
            let loss =
                |t: &[Tensor]| (conv2d(&t[0], &t[1], s, p, KernelImpl::Ebv)? * &r)?.sum_all();
            let worst = fd_check(loss, &[x, wt], 12).expect("fd check");
            assert!(worst < 1e-7, "finite differences disagree by {worst:e}");
        }
    }

    #[test]
    fn strided_input_and_frozen_input_work() {
        // A transposed (non-contiguous) input and an input that is not a variable (no dX wanted).
        let x = rand_tensor(&[2, 3, 6, 5], 21, DType::F32)
            .transpose(2, 3)
            .expect("t");
        let w = rand_tensor(&[4, 3, 3, 3], 22, DType::F32);
        let a = conv2d(&x, &w, 1, 1, KernelImpl::Ebv).expect("ebv");
        let b = conv2d(&x, &w, 1, 1, KernelImpl::Candle).expect("candle");
        assert!(max_rel_diff(&a, &b) < 1e-5);
        let wv = Var::from_tensor(&w).expect("var");
        let y = conv2d(&x, wv.as_tensor(), 1, 1, KernelImpl::Ebv).expect("ebv");
        let grads = y.sum_all().expect("sum").backward().expect("bwd");
        assert!(grads.get(&x).is_none());
        assert!(grads.get(wv.as_tensor()).is_some());
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &dev).expect("x");
        let w = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev).expect("w");
        assert!(conv2d(&x, &w, 1, 1, KernelImpl::Ebv).is_err());
        let w = Tensor::zeros((2, 3, 7, 7), DType::F32, &dev).expect("w");
        assert!(conv2d(&x, &w, 1, 0, KernelImpl::Ebv).is_err());
    }
}
