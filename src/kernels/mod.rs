//! Training kernels for the layers of a ResNet: conv2d (im2col + GEMM, Winograd F(2×2, 3×3) for 3×3 stride-1
//! layers), max-pool, fused train-mode BatchNorm (+ ReLU) and the residual add + ReLU; and the SGD update.
//!
//! Every public function takes a [`KernelImpl`]. `Ebv` runs the hand-written CPU ops of this module (candle
//! `CustomOp`s, so autograd flows through them) when all inputs are contiguous-able CPU tensors of one dtype,
//! f32 or f64, and, in a build with the `cuda` feature, conv2d on a CUDA device through cuDNN for the forward and
//! both backward passes (`cudnn.rs`; f32, f64, bf16, f16), and BatchNorm and max-pool on CUDA through this crate's
//! own kernels (`gpu.rs`, `cuda/*.cu`; BatchNorm takes bf16/f16 activations with f32 parameters as they are). Anything else silently takes the `Candle` path, built
//! from candle's own ops, which works on every device. Both paths compute the same function and the same gradients
//! (up to rounding, and up to how ties in max-pool are split, see [`max_pool2d`]); [`check_kernels`] measures that
//! on any device.
//!
//! Invariants shared by the ops:
//! - the forward ops make their inputs contiguous before `apply_op*`, and the backward ops make the incoming gradient
//!   contiguous, so `cpu_fwd` may (and does) reject strided layouts;
//! - backward ops are applied with `apply_op*_no_bwd`: second-order gradients are not supported;
//! - a gradient is only computed for an argument that takes part in the graph (`Tensor::track_op`), which skips the
//!   input gradient of the stem convolution.

mod bn;
mod check;
mod conv;
#[cfg(feature = "cuda")]
mod cudnn;
#[cfg(feature = "cuda")]
mod cudnn_find;
#[cfg(feature = "cuda")]
mod gpu;
mod pool;
mod profile;
mod residual;
mod sgd;
#[cfg(test)]
mod test_util;
mod transpose;
mod winograd;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

pub use check::{check_kernels, time_convs, ConvTiming, KernelCheck, KernelCheckRow};
pub use profile::{op_profile, set_op_profile};
pub use sgd::{sgd_momentum_update, SgdStep};

use candle_core::{bail, CpuStorage, DType, Device, Layout, Result, Tensor, WithDType};

/// Which implementation a layer uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelImpl {
    /// This module's CPU kernels where they apply (CPU, f32/f64), candle's ops elsewhere.
    #[default]
    Ebv,
    /// candle's own ops everywhere (with a working max-pool backward).
    Candle,
}

/// How [`KernelImpl::Ebv`] computes a CPU convolution (a process-wide setting: candle's ops carry no context).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgo {
    /// Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions with at least 16 channels in and out, im2col + GEMM
    /// for the rest.
    #[default]
    Auto,
    /// im2col + GEMM for every convolution (for comparisons, and as the reference).
    Im2col,
}

impl std::str::FromStr for ConvAlgo {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "im2col" => Ok(Self::Im2col),
            _ => Err(format!(
                "unknown conv algorithm {s:?} (expected auto or im2col)"
            )),
        }
    }
}

static CONV_ALGO: AtomicU8 = AtomicU8::new(0);

/// Sets the CPU convolution algorithm for the whole process (see [`ConvAlgo`]).
pub fn set_conv_algo(algo: ConvAlgo) {
    CONV_ALGO.store(algo as u8, Ordering::Relaxed);
}

/// The CPU convolution algorithm in effect.
pub fn conv_algo() -> ConvAlgo {
    match CONV_ALGO.load(Ordering::Relaxed) {
        1 => ConvAlgo::Im2col,
        _ => ConvAlgo::Auto,
    }
}

/// NCHW input x `[N, Cin, H, W]`, weight w `[Cout, Cin, K, K]` (square kernel), no bias, groups 1, dilation 1.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    imp: KernelImpl,
) -> Result<Tensor> {
    if stride == 0 {
        bail!("conv2d: stride must be at least 1");
    }
    if use_ebv(imp, &[x, w]) {
        return conv::conv2d_ebv(x, w, stride, padding);
    }
    #[cfg(feature = "cuda")]
    if imp == KernelImpl::Ebv && cudnn::applies(&[x, w]) {
        return cudnn::conv2d_cudnn(x, w, stride, padding);
    }
    {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

/// Max-pool with -inf padding, PyTorch semantics (gradient goes wholly to the first maximum in the window).
///
/// Output size is floor((H + 2·padding − kernel)/stride) + 1 (PyTorch's `ceil_mode=False`), and like PyTorch the
/// padding may be at most half the kernel, so no window lies wholly in the padding. The `Candle` path splits the
/// gradient evenly between tied maxima instead (that is how `Tensor::maximum` differentiates); for continuous
/// activations ties do not occur.
pub fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    imp: KernelImpl,
) -> Result<Tensor> {
    pool::check_args(x, kernel, stride, padding)?;
    #[cfg(feature = "cuda")]
    if imp == KernelImpl::Ebv && gpu::pool_applies(x) {
        return pool::max_pool2d_ebv(x, kernel, stride, padding);
    }
    if use_ebv(imp, &[x]) {
        pool::max_pool2d_ebv(x, kernel, stride, padding)
    } else {
        pool::max_pool2d_candle(x, kernel, stride, padding)
    }
}

/// relu(a + b) for two tensors of one shape: the end of a residual block.
pub fn add_relu(a: &Tensor, b: &Tensor, imp: KernelImpl) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    let on_gpu = imp == KernelImpl::Ebv
        && gpu::pool_applies(a)
        && a.dtype() == b.dtype()
        && b.device().same_device(a.device());
    #[cfg(not(feature = "cuda"))]
    let on_gpu = false;
    if use_ebv(imp, &[a, b]) || on_gpu {
        residual::add_relu_ebv(a, b)
    } else {
        profile::profiled(
            "add_relu_forward",
            || a.device().synchronize(),
            || residual::add_relu_candle(a, b),
        )
    }
}

/// Lets a CUDA device keep the memory a step frees for the next step instead of returning it to the driver.
///
/// Every tensor on a CUDA device is a stream-ordered allocation from the device's default memory pool (cudarc), and
/// that pool's release threshold is 0 unless set: at each synchronisation (one or two per training step) it hands
/// its free memory back, and the next step maps it again. With the threshold at its maximum the pool behaves as
/// PyTorch's caching allocator does. A no-op on the CPU and in builds without `cuda`.
pub fn keep_device_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use candle_core::cuda_backend::cudarc::driver::{result, sys};
        use candle_core::cuda_backend::WrapErr;
        let ctx = dev.cuda_stream().context().clone();
        ctx.bind_to_thread().w()?;
        let mut threshold = u64::MAX;
        // SAFETY: the pool is the live device's default pool, and the release threshold attribute takes a u64.
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device()).w()?;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .w()?;
        }
    }
    let _ = device;
    Ok(())
}

/// Whether the channels-last (NHWC) ops below run tensors of this device and dtype with these kernels: CUDA
/// builds, [`KernelImpl::Ebv`], a CUDA device, f32/bf16/f16. Models lay out their activations channels-last exactly
/// when this holds (cuDNN's tensor-core convolutions work in NHWC; in NCHW PyTorch's own ResNet-50 step is 1.9×
/// slower on an H200, BENCHMARKS.md).
pub fn channels_last(device: &Device, dtype: DType, imp: KernelImpl) -> bool {
    cfg!(feature = "cuda")
        && imp == KernelImpl::Ebv
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// Channels-last conv2d: x `[N,H,W,C]`, w `[O,K,K,C]` ↦ `[N,Ho,Wo,O]`, through cuDNN (forward and both backward
/// passes). Only where [`channels_last`] holds.
pub fn conv2d_nhwc(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if stride == 0 {
        bail!("conv2d: stride must be at least 1");
    }
    #[cfg(feature = "cuda")]
    if cudnn::applies(&[x, w]) {
        return cudnn::conv2d_cudnn_nhwc(x, w, stride, padding);
    }
    let _ = (w, padding);
    bail!(
        "conv2d: channels-last needs a CUDA build and CUDA tensors of one float dtype, got {:?} {:?}",
        x.device(),
        x.dtype()
    )
}

/// Channels-last max-pool, x `[N,H,W,C]`, with [`max_pool2d`]'s semantics. Only where [`channels_last`] holds.
pub fn max_pool2d_nhwc(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gpu::pool_applies(x) {
        let op = gpu::MaxPoolNhwc::new(kernel, stride, padding);
        return x.contiguous()?.apply_op1(op);
    }
    let _ = (kernel, stride, padding);
    bail!(
        "max_pool2d: channels-last needs a CUDA build and a CUDA tensor, got {:?} {:?}",
        x.device(),
        x.dtype()
    )
}

/// Channels-last train-mode BatchNorm, x `[N,H,W,C]`, with [`batch_norm_train`]'s semantics and return values;
/// 16-bit x takes f32 γ and β as they are. Only where [`channels_last`] holds.
pub fn batch_norm_train_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if gpu::bn_applies(x, weight, bias) {
        return gpu::batch_norm_cuda(x, weight, bias, eps, relu, true);
    }
    let _ = (bias, eps, relu);
    bail!(
        "batch_norm_train: channels-last needs a CUDA build, x on CUDA and γ, β in f32 (f64 for f64 x), got x {:?} \
         {:?} and γ {:?}",
        x.device(),
        x.dtype(),
        weight.dtype()
    )
}

/// Train-mode BatchNorm over (N,H,W) per channel: y = (x-mean)/sqrt(var_biased+eps)*weight + bias, optionally
/// followed by ReLU.
/// Returns (y, batch_mean `[C]`, batch_var_unbiased `[C]`) — the two statistics detached, for the caller's running-stat
/// update (PyTorch uses the unbiased variance for running_var).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
    imp: KernelImpl,
) -> Result<(Tensor, Tensor, Tensor)> {
    bn::check_args(x, weight, bias)?;
    #[cfg(feature = "cuda")]
    if imp == KernelImpl::Ebv && gpu::bn_applies(x, weight, bias) {
        return gpu::batch_norm_cuda(x, weight, bias, eps, relu, false);
    }
    if use_ebv(imp, &[x, weight, bias]) {
        bn::batch_norm_ebv(x, weight, bias, eps, relu)
    } else {
        bn::batch_norm_candle(x, weight, bias, eps, relu)
    }
}

fn use_ebv(imp: KernelImpl, tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    imp == KernelImpl::Ebv
        && matches!(first.dtype(), DType::F32 | DType::F64)
        && tensors
            .iter()
            .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == first.dtype())
}

/// Element types the CPU kernels run on. Only f32 and f64 implement it, which is what makes the `gemm::gemm` calls
/// (which panic on other types) sound.
pub(crate) trait Float: WithDType {
    const NEG_INF: Self;
    const ZERO: Self;

    /// Runs `f` on a scratch buffer of `len` elements with unspecified contents, kept per thread between calls so the
    /// im2col columns are not reallocated for every image. Falls back to a fresh buffer when the thread's buffer is
    /// already in use (a Rayon job stolen while this thread waits inside a parallel GEMM).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;

    /// Transposes the 8×8 block whose row i is `src[s0 + i·ss..][..8]` into `dst` (value j of row i to
    /// `dst[d0 + j·ds + i]`), with SIMD shuffles where the type and the CPU allow (`transpose.rs`). Panics when a
    /// row lies outside its slice.
    fn transpose8(src: &[Self], s0: usize, ss: usize, dst: &mut [Self], d0: usize, ds: usize);
}

macro_rules! impl_float {
    ($t:ty, $tls:ident, $transpose:path) => {
        thread_local! {
            static $tls: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }

        impl Float for $t {
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const ZERO: Self = 0.0;

            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                $tls.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                        f(&mut buf[..len])
                    }
                    Err(_) => f(&mut vec![0.0; len]),
                })
            }

            fn transpose8(
                src: &[Self],
                s0: usize,
                ss: usize,
                dst: &mut [Self],
                d0: usize,
                ds: usize,
            ) {
                $transpose(src, s0, ss, dst, d0, ds)
            }
        }
    };
}

impl_float!(f32, SCRATCH_F32, transpose::transpose8_f32);
impl_float!(f64, SCRATCH_F64, transpose::transpose8_scalar);

/// A zeroed activation-sized buffer, filled by the whole Rayon pool: zeroing a fresh output of tens of MB on the
/// calling thread is serial time in every layer of a multi-threaded step (large buffers come from the heap, not
/// from fresh zero pages, see `crate::memory`).
pub(crate) fn zeroed<T: Float>(len: usize) -> Vec<T> {
    use rayon::iter::ParallelExtend;
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::ZERO, len));
    v
}

/// The contiguous elements of a CPU storage as described by `layout`.
pub(crate) fn cpu_slice<'a, T: WithDType>(s: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("ebv kernels: input is not contiguous");
    };
    match data.get(start..end) {
        Some(d) => Ok(d),
        None => bail!(
            "ebv kernels: layout {start}..{end} outside storage of {}",
            data.len()
        ),
    }
}

/// A read-only row-major-or-strided matrix operand: element (i, j) is `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// `dst[m×n] (row-major, contiguous) = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]`.
#[allow(clippy::too_many_arguments)] // a GEMM's shape, operands and options; a struct would only rename them
pub(crate) fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    par: gemm::Parallelism,
) -> Result<()> {
    matmul_rs(m, n, k, dst, n, lhs, rhs, accumulate, par)
}

/// [`matmul`] into a `dst` whose rows are `dst_rs` ≥ n apart (the columns in between are left as they are).
///
/// Bounds are checked up front, which is what makes the raw-pointer `gemm::gemm` call sound.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_rs<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    par: gemm::Parallelism,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if dst_rs < n || dst.len() <= last(m, n, dst_rs, 1) {
        bail!("ebv matmul: destination too small for {m}x{n} rows {dst_rs} apart");
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].iter_mut().for_each(|d| *d = T::ZERO);
            }
        }
        return Ok(());
    }
    if lhs.data.len() <= last(m, k, lhs.rs, lhs.cs) || rhs.data.len() <= last(k, n, rhs.rs, rhs.cs)
    {
        bail!("ebv matmul: operand too small for {m}x{k} · {k}x{n}");
    }
    // SAFETY: T is f32 or f64 (the only `Float` impls), all indices touched are within the slices (checked above),
    // and `dst` is borrowed mutably so it cannot alias `lhs`/`rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// How a batch of independent per-image problems is spread over the Rayon pool: one image per task with
/// single-threaded GEMMs when there are at least as many images as threads, otherwise one image after another with
/// GEMMs that are parallel inside.
pub(crate) fn gemm_parallelism(images: usize) -> (bool, gemm::Parallelism) {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        (false, gemm::Parallelism::None)
    } else if images >= threads {
        (true, gemm::Parallelism::None)
    } else {
        (false, gemm::Parallelism::Rayon(threads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_is_for_gpus_only_and_says_so_elsewhere() {
        let dev = Device::Cpu;
        assert!(!channels_last(&dev, DType::F32, KernelImpl::Ebv));
        let x = Tensor::zeros((1, 4, 4, 2), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 1, 1, 2), DType::F32, &dev).unwrap();
        let c = Tensor::ones(2, DType::F32, &dev).unwrap();
        let errors = [
            conv2d_nhwc(&x, &w, 1, 0).unwrap_err(),
            max_pool2d_nhwc(&x, 2, 2, 0).unwrap_err(),
            batch_norm_train_nhwc(&x, &c, &c, 1e-5, true).unwrap_err(),
        ];
        for e in errors {
            assert!(e.to_string().contains("channels-last needs a CUDA"), "{e}");
        }
    }
}
