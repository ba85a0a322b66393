//! Train-mode BatchNorm (+ ReLU), max-pool and the residual add + ReLU on CUDA: this crate's own kernels
//! (`cuda/*.cu`, compiled to PTX by `build.rs` with the toolkit's nvcc, loaded once per device through candle's
//! custom-module cache) launched on the device's candle stream, so they are ordered with every other candle kernel
//! without synchronisation.
//!
//! Why: candle's ops take BatchNorm apart into broadcast binary ops and multi-axis reductions whose every element
//! pays 64-bit index divisions; on an H200 that made a ResNet-50 bf16 step at batch 256 take 1.29 s against
//! PyTorch's 0.057 s (benches/gpu.sh, BENCHMARKS.md). Here a BatchNorm is three launches forward (partial sums,
//! per-channel statistics, normalise) and three backward, reading bf16 activations directly with f32 parameters
//! (no casts through f32 tensors); max-pool is one kernel each way (channels-last keeps the forward's argmax for
//! the backward); the residual add + ReLU is one pass each way.
//!
//! Invariants:
//! - NCHW or, where the model runs channels-last, NHWC; contiguous operands, each tensor under 2³¹ elements
//!   (`bn_applies`, `pool_applies`; larger tensors take candle's ops);
//! - storage type T ∈ {f32, f64, bf16, f16}; γ, β, the statistics and the arithmetic in P = f64 for f64, f32
//!   otherwise; sums over a channel in f64;
//! - the same semantics as the CPU ops in `bn.rs`, `pool.rs` and `residual.rs` (`check_kernels` compares both
//!   with the f64 CPU reference on the GPU).

use std::sync::{Arc, Mutex};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use half::{bf16, f16};

const BN_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/batch_norm.ptx"));
const POOL_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/max_pool.ptx"));

/// The largest element count a kernel indexes with 32-bit plane and block arithmetic.
const MAX_ELEMS: usize = i32::MAX as usize;

/// Storage types and their parameter/arithmetic type.
trait Elem: CudaDType + DeviceRepr + WithDType {
    type P: CudaDType + DeviceRepr + WithDType;
    const SUFFIX: &'static str;
}

impl Elem for f32 {
    type P = f32;
    const SUFFIX: &'static str = "f32";
}
impl Elem for f64 {
    type P = f64;
    const SUFFIX: &'static str = "f64";
}
impl Elem for bf16 {
    type P = f32;
    const SUFFIX: &'static str = "bf16";
}
impl Elem for f16 {
    type P = f32;
    const SUFFIX: &'static str = "f16";
}

/// The parameter dtype BatchNorm on CUDA expects for activations of `dtype`, if it runs them.
fn param_dtype(dtype: DType) -> Option<DType> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Some(DType::F32),
        DType::F64 => Some(DType::F64),
        _ => None,
    }
}

/// Whether [`batch_norm_cuda`] takes these tensors: x `[N,C,H,W]` on a CUDA device, γ and β `[C]` on the same
/// device in the parameter dtype of x (f32 for bf16/f16/f32 activations: the mixed-precision case).
pub(super) fn bn_applies(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    let Some(p) = param_dtype(x.dtype()) else {
        return false;
    };
    x.device().is_cuda()
        && x.rank() == 4
        && x.elem_count() <= MAX_ELEMS
        && [weight, bias]
            .iter()
            .all(|t| t.dtype() == p && t.device().same_device(x.device()))
}

/// Whether the max-pool and residual kernels take x (CUDA, a float dtype, under 2³¹ elements).
pub(super) fn pool_applies(x: &Tensor) -> bool {
    x.device().is_cuda() && param_dtype(x.dtype()).is_some() && x.elem_count() <= MAX_ELEMS
}

fn launch_cfg(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    match u32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("cuda kernels: {what} = {v} does not fit 32 bits"),
    }
}

/// The contiguous elements of `s` described by `l`.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("cuda kernels: {what} is not contiguous");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Threads per block for a kernel that walks one plane of `plane` elements per block.
fn plane_threads(plane: usize) -> u32 {
    match plane {
        p if p >= 2048 => 256,
        p if p >= 512 => 128,
        p if p >= 128 => 64,
        _ => 32,
    }
}

/// How many blocks share one channel's sums: enough blocks to fill the GPU (~1,000), each with ≥ 16K elements.
fn splits(n: usize, c: usize, plane: usize) -> usize {
    let want = 1024usize.div_ceil(c.max(1));
    let most = (n * plane / 16_384).max(1);
    want.min(most).min(n).max(1)
}

/// The statistics of one forward call on the device: `[mean | invstd | unbiased var]` (3·C) and a copy of γ, both in
/// P, held for the backward.
struct Saved {
    stats: CudaStorage,
    gamma: CudaStorage,
}

type Slot = Arc<Mutex<Option<Saved>>>;

/// y = BatchNorm(x) (+ ReLU) in train mode; returns (y, batch mean `[C]`, unbiased batch variance `[C]`), the
/// statistics detached and in the parameter dtype.
pub(super) fn batch_norm_cuda(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
    nhwc: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.contiguous()?;
    let saved: Slot = Arc::new(Mutex::new(None));
    let y = x.apply_op3(
        &weight,
        &bias,
        BnFwd {
            eps,
            relu,
            nhwc,
            saved: saved.clone(),
        },
    )?;
    let stats = {
        let Ok(s) = saved.lock() else {
            bail!("batch_norm_train: statistics lock poisoned");
        };
        let Some(s) = s.as_ref() else {
            bail!("batch_norm_train: the CUDA forward left no statistics");
        };
        s.stats
            .try_clone(&Layout::contiguous(3 * weight.elem_count()))?
    };
    let c = weight.elem_count();
    let stats = Tensor::from_storage(Storage::Cuda(stats), (3, c), BackpropOp::none(), false);
    Ok((y, stats.get(0)?, stats.get(2)?))
}

struct BnFwd {
    eps: f64,
    relu: bool,
    /// Channels-last: x is `[N,H,W,C]`.
    nhwc: bool,
    saved: Slot,
}

/// (N, C, H·W) of x, `[N,C,H,W]` or, channels-last, `[N,H,W,C]`.
fn bn_dims(l: &Layout, nhwc: bool) -> Result<(usize, usize, usize)> {
    match (l.dims(), nhwc) {
        (&[n, c, h, w], false) => Ok((n, c, h * w)),
        (&[n, h, w, c], true) => Ok((n, c, h * w)),
        (d, _) => bail!("batch_norm_train: input must be 4-D, got {d:?}"),
    }
}

/// Row splits of a channels-last reduction: enough blocks of 32 channels to fill the GPU, ≥ 2048 rows each.
fn splits_nhwc(m: usize, c: usize) -> usize {
    let want = 1024usize.div_ceil(c.div_ceil(32));
    want.min(m / 2048).max(1)
}

/// Grid (⌈C/32⌉, S) of 32×8 threads: the channels-last reduction kernels.
fn nhwc_cfg(c: u32, splits: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.div_ceil(32), splits, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

impl BnFwd {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Elem>(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<CudaStorage> {
        let (n, c, plane) = bn_dims(lx, self.nhwc)?;
        if lg.dims() != [c] || lb.dims() != [c] {
            bail!("batch_norm_train: weight/bias must be [{c}]");
        }
        let dev = x.device.clone();
        let xv = view::<T>(x, lx, "x")?;
        let gv = view::<T::P>(g, lg, "weight")?;
        let bv = view::<T::P>(b, lb, "bias")?;
        let s = if self.nhwc {
            splits_nhwc(n * plane, c)
        } else {
            splits(n, c, plane)
        };
        let total = u32_of(n * c * plane, "N·C·H·W")?;
        let (n32, c32, p32, s32) = (
            u32_of(n, "N")?,
            u32_of(c, "C")?,
            u32_of(plane, "H·W")?,
            u32_of(s, "splits")?,
        );
        let m = (n * plane) as f64;
        let relu = i32::from(self.relu);

        // SAFETY (the three allocations): every element is written by the kernels below before it is read.
        let mut part = unsafe { dev.alloc::<f64>(2 * c * s)? };
        if self.nhwc {
            let m32 = u32_of(n * plane, "N·H·W")?;
            let name = format!("bn_stats_partial_nhwc_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
            let mut l = f.builder();
            l.arg(&xv).arg(&mut part).arg(&m32).arg(&c32);
            // SAFETY: argument types and order match bn_stats_partial_nhwc in batch_norm.cu.
            unsafe { l.launch(nhwc_cfg(c32, s32)) }.w()?;
        } else {
            let name = format!("bn_stats_partial_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
            let mut l = f.builder();
            l.arg(&xv).arg(&mut part).arg(&n32).arg(&c32).arg(&p32);
            // SAFETY: argument types and order match bn_stats_partial in batch_norm.cu.
            unsafe { l.launch(launch_cfg((c32, s32), 256)) }.w()?;
        }

        let mut stats = unsafe { dev.alloc::<T::P>(3 * c)? };
        let mut coef = unsafe { dev.alloc::<T::P>(2 * c)? };
        let f = dev.get_or_load_custom_func(
            &format!("bn_stats_final_{}", p_suffix::<T>()),
            "ebv_batch_norm",
            BN_PTX,
        )?;
        let mut l = f.builder();
        l.arg(&part)
            .arg(&s32)
            .arg(&c32)
            .arg(&m)
            .arg(&self.eps)
            .arg(&gv)
            .arg(&bv)
            .arg(&mut stats)
            .arg(&mut coef);
        // SAFETY: matches bn_stats_final; one thread per channel.
        unsafe { l.launch(launch_cfg((c32.div_ceil(128), 1), 128)) }.w()?;

        let mut y = unsafe { dev.alloc::<T>(n * c * plane)? };
        if self.nhwc {
            let name = format!("bn_apply_nhwc_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
            let mut l = f.builder();
            l.arg(&xv)
                .arg(&mut y)
                .arg(&coef)
                .arg(&c32)
                .arg(&total)
                .arg(&relu);
            // SAFETY: matches bn_apply_nhwc; a grid-stride loop over every element.
            unsafe { l.launch(launch_cfg((grid_for(total as usize), 1), 256)) }.w()?;
        } else {
            let name = format!("bn_apply_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
            let mut l = f.builder();
            l.arg(&xv)
                .arg(&mut y)
                .arg(&coef)
                .arg(&c32)
                .arg(&p32)
                .arg(&relu);
            // SAFETY: matches bn_apply; one block per (image, channel) plane.
            unsafe { l.launch(launch_cfg((u32_of(n * c, "N·C")?, 1), plane_threads(plane))) }
                .w()?;
        }

        let gamma = dev.cuda_stream().clone_dtod(&gv).w()?;
        let Ok(mut slot) = self.saved.lock() else {
            bail!("batch_norm_train: statistics lock poisoned");
        };
        *slot = Some(Saved {
            stats: CudaStorage::wrap_cuda_slice(stats, dev.clone()),
            gamma: CudaStorage::wrap_cuda_slice(gamma, dev.clone()),
        });
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }
}

fn p_suffix<T: Elem>() -> &'static str {
    if <T::P as WithDType>::DTYPE == DType::F64 {
        "f64"
    } else {
        "f32"
    }
}

/// Dispatches on the storage dtype of x: `$f::<T>($args)` (or `self.$f::<T>($args)`) for f32, f64, bf16 and f16.
macro_rules! by_cuda_dtype {
    ($s:expr, $what:expr, $recv:ident . $f:ident, $($args:expr),*) => {
        match $s.dtype() {
            DType::F32 => $recv.$f::<f32>($($args),*),
            DType::F64 => $recv.$f::<f64>($($args),*),
            DType::BF16 => $recv.$f::<bf16>($($args),*),
            DType::F16 => $recv.$f::<f16>($($args),*),
            d => bail!("{}: no CUDA kernel for {d:?}", $what),
        }
    };
    ($s:expr, $what:expr, $f:ident, $($args:expr),*) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($args),*),
            DType::F64 => $f::<f64>($($args),*),
            DType::BF16 => $f::<bf16>($($args),*),
            DType::F16 => $f::<f16>($($args),*),
            d => bail!("{}: no CUDA kernel for {d:?}", $what),
        }
    };
}

impl CustomOp3 for BnFwd {
    fn name(&self) -> &'static str {
        "ebv-batch-norm-train-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU op is in bn.rs)", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let sync = || s1.device.synchronize();
        let out = super::profile::profiled("batch_norm_forward", sync, || {
            by_cuda_dtype!(s1, self.name(), self.run, s1, l1, s2, l2, s3, l3)
        })?;
        Ok((out, l1.shape().clone()))
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
        let out: Arc<Mutex<Option<CudaStorage>>> = Arc::new(Mutex::new(None));
        let op = BnBwd {
            relu: self.relu,
            nhwc: self.nhwc,
            saved: self.saved.clone(),
            out: out.clone(),
        };
        let dx = x.apply_op3_no_bwd(res, &grad, &op)?;
        let grads = match out.lock() {
            Ok(mut o) => o.take(),
            Err(_) => bail!("{}: gradient lock poisoned", self.name()),
        };
        let Some(grads) = grads else {
            bail!(
                "{}: the CUDA backward left no parameter gradients",
                self.name()
            );
        };
        let c = weight.elem_count();
        let grads = Tensor::from_storage(Storage::Cuda(grads), (2, c), BackpropOp::none(), false);
        let dgamma = grads.get(0)?.to_dtype(weight.dtype())?;
        let dbeta = grads.get(1)?.to_dtype(bias.dtype())?;
        Ok((
            x.track_op().then_some(dx),
            weight.track_op().then_some(dgamma),
            bias.track_op().then_some(dbeta),
        ))
    }
}

/// (X, Y, dY) ↦ dX, with `[dγ | dβ]` (2·C, in P) left in `out`. Y is only read for the ReLU mask.
struct BnBwd {
    relu: bool,
    nhwc: bool,
    saved: Slot,
    out: Arc<Mutex<Option<CudaStorage>>>,
}

impl BnBwd {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Elem>(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        y: &CudaStorage,
        ly: &Layout,
        dy: &CudaStorage,
        ldy: &Layout,
    ) -> Result<CudaStorage> {
        let (n, c, plane) = bn_dims(lx, self.nhwc)?;
        if ly.dims() != lx.dims() || ldy.dims() != lx.dims() {
            bail!("{}: X, Y and dY must have one shape", self.name());
        }
        let total = u32_of(n * c * plane, "N·C·H·W")?;
        let dev = x.device.clone();
        let (xv, yv, dyv) = (
            view::<T>(x, lx, "x")?,
            view::<T>(y, ly, "y")?,
            view::<T>(dy, ldy, "dy")?,
        );
        let Ok(saved) = self.saved.lock() else {
            bail!("{}: statistics lock poisoned", self.name());
        };
        let Some(saved) = saved.as_ref() else {
            bail!("{}: backward before forward", self.name());
        };
        let stats = saved.stats.as_cuda_slice::<T::P>()?;
        let gamma = saved.gamma.as_cuda_slice::<T::P>()?;
        let s = if self.nhwc {
            splits_nhwc(n * plane, c)
        } else {
            splits(n, c, plane)
        };
        let (n32, c32, p32, s32) = (
            u32_of(n, "N")?,
            u32_of(c, "C")?,
            u32_of(plane, "H·W")?,
            u32_of(s, "splits")?,
        );
        let m = (n * plane) as f64;
        let relu = i32::from(self.relu);

        // SAFETY (the four allocations): every element is written by the kernels below before it is read.
        let mut part = unsafe { dev.alloc::<f64>(2 * c * s)? };
        if self.nhwc {
            let m32 = u32_of(n * plane, "N·H·W")?;
            let name = format!("bn_grad_partial_nhwc_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
            let mut l = f.builder();
            l.arg(&xv)
                .arg(&yv)
                .arg(&dyv)
                .arg(stats)
                .arg(&mut part)
                .arg(&m32)
                .arg(&c32)
                .arg(&relu);
            // SAFETY: matches bn_grad_partial_nhwc in batch_norm.cu.
            unsafe { l.launch(nhwc_cfg(c32, s32)) }.w()?;
        } else {
            let name = format!("bn_grad_partial_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
            let mut l = f.builder();
            l.arg(&xv)
                .arg(&yv)
                .arg(&dyv)
                .arg(stats)
                .arg(&mut part)
                .arg(&n32)
                .arg(&c32)
                .arg(&p32)
                .arg(&relu);
            // SAFETY: matches bn_grad_partial in batch_norm.cu.
            unsafe { l.launch(launch_cfg((c32, s32), 256)) }.w()?;
        }

        let mut grads = unsafe { dev.alloc::<T::P>(2 * c)? };
        let mut coef = unsafe { dev.alloc::<T::P>(4 * c)? };
        let f = dev.get_or_load_custom_func(
            &format!("bn_grad_final_{}", p_suffix::<T>()),
            "ebv_batch_norm",
            BN_PTX,
        )?;
        let mut l = f.builder();
        l.arg(&part)
            .arg(&s32)
            .arg(&c32)
            .arg(&m)
            .arg(gamma)
            .arg(stats)
            .arg(&mut grads)
            .arg(&mut coef);
        // SAFETY: matches bn_grad_final; one thread per channel.
        unsafe { l.launch(launch_cfg((c32.div_ceil(128), 1), 128)) }.w()?;

        let mut dx = unsafe { dev.alloc::<T>(n * c * plane)? };
        let (name, cfg, last) = if self.nhwc {
            (
                format!("bn_grad_apply_nhwc_{}", T::SUFFIX),
                launch_cfg((grid_for(total as usize), 1), 256),
                total,
            )
        } else {
            (
                format!("bn_grad_apply_{}", T::SUFFIX),
                launch_cfg((u32_of(n * c, "N·C")?, 1), plane_threads(plane)),
                p32,
            )
        };
        let f = dev.get_or_load_custom_func(&name, "ebv_batch_norm", BN_PTX)?;
        let mut l = f.builder();
        l.arg(&xv)
            .arg(&yv)
            .arg(&dyv)
            .arg(&mut dx)
            .arg(&coef)
            .arg(&c32)
            .arg(&last)
            .arg(&relu);
        // SAFETY: matches bn_grad_apply (one block per plane; last = H·W) or bn_grad_apply_nhwc (grid-stride; last =
        // the element count).
        unsafe { l.launch(cfg) }.w()?;

        let Ok(mut out) = self.out.lock() else {
            bail!("{}: gradient lock poisoned", self.name());
        };
        *out = Some(CudaStorage::wrap_cuda_slice(grads, dev.clone()));
        Ok(CudaStorage::wrap_cuda_slice(dx, dev))
    }
}

impl CustomOp3 for BnBwd {
    fn name(&self) -> &'static str {
        "ebv-batch-norm-train-grad-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU op is in bn.rs)", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let sync = || s1.device.synchronize();
        let out = super::profile::profiled("batch_norm_backward", sync, || {
            by_cuda_dtype!(s1, self.name(), self.run, s1, l1, s2, l2, s3, l3)
        })?;
        Ok((out, l1.shape().clone()))
    }
}

/// The pooling geometry as the kernels take it (`struct Geom` in max_pool.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct PoolGeom32 {
    h: u32,
    w: u32,
    k: u32,
    stride: u32,
    pad: u32,
    ho: u32,
    wo: u32,
}

// SAFETY: plain `#[repr(C)]` u32 fields, the layout of `struct Geom` in max_pool.cu.
unsafe impl DeviceRepr for PoolGeom32 {}

impl PoolGeom32 {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
        ho: usize,
        wo: usize,
    ) -> Result<Self> {
        Ok(Self {
            h: u32_of(h, "H")?,
            w: u32_of(w, "W")?,
            k: u32_of(k, "kernel")?,
            stride: u32_of(stride, "stride")?,
            pad: u32_of(pad, "padding")?,
            ho: u32_of(ho, "Ho")?,
            wo: u32_of(wo, "Wo")?,
        })
    }
}

/// Blocks of 256 for a grid-stride loop over `total` elements: enough to fill the GPU, no more.
fn grid_for(total: usize) -> u32 {
    total.div_ceil(256).clamp(1, 132 * 16) as u32
}

/// Max-pool forward of the `planes` planes of x.
pub(super) fn pool_fwd(
    x: &CudaStorage,
    lx: &Layout,
    planes: usize,
    g: PoolGeom32,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        x: &CudaStorage,
        lx: &Layout,
        planes: usize,
        g: PoolGeom32,
    ) -> Result<CudaStorage> {
        let dev = x.device.clone();
        let xv = view::<T>(x, lx, "x")?;
        let total = planes * g.ho as usize * g.wo as usize;
        if total > MAX_ELEMS {
            bail!("max_pool2d: {total} outputs exceed the CUDA kernel's 32-bit indexing");
        }
        // SAFETY: the kernel writes every output.
        let mut y = unsafe { dev.alloc::<T>(total)? };
        let p32 = u32_of(planes, "N·C")?;
        let f = dev.get_or_load_custom_func(
            &format!("max_pool_fwd_{}", T::SUFFIX),
            "ebv_max_pool",
            POOL_PTX,
        )?;
        let mut l = f.builder();
        l.arg(&xv).arg(&mut y).arg(&p32).arg(&g);
        // SAFETY: matches max_pool_fwd in max_pool.cu.
        unsafe { l.launch(launch_cfg((grid_for(total), 1), 256)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }
    by_cuda_dtype!(x, "max_pool2d", run, x, lx, planes, g)
}

/// Max-pool backward: (X, dY) ↦ dX.
pub(super) fn pool_bwd(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
    planes: usize,
    g: PoolGeom32,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        x: &CudaStorage,
        lx: &Layout,
        dy: &CudaStorage,
        ldy: &Layout,
        planes: usize,
        g: PoolGeom32,
    ) -> Result<CudaStorage> {
        let dev = x.device.clone();
        let xv = view::<T>(x, lx, "x")?;
        let dyv = view::<T>(dy, ldy, "dy")?;
        let total = planes * g.h as usize * g.w as usize;
        if total > MAX_ELEMS {
            bail!("max_pool2d: {total} inputs exceed the CUDA kernel's 32-bit indexing");
        }
        // SAFETY: the kernel writes every element of dx.
        let mut dx: CudaSlice<T> = unsafe { dev.alloc::<T>(total)? };
        let p32 = u32_of(planes, "N·C")?;
        let f = dev.get_or_load_custom_func(
            &format!("max_pool_bwd_{}", T::SUFFIX),
            "ebv_max_pool",
            POOL_PTX,
        )?;
        let mut l = f.builder();
        l.arg(&xv).arg(&dyv).arg(&mut dx).arg(&p32).arg(&g);
        // SAFETY: matches max_pool_bwd in max_pool.cu.
        unsafe { l.launch(launch_cfg((grid_for(total), 1), 256)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(dx, dev))
    }
    by_cuda_dtype!(x, "max_pool2d", run, x, lx, dy, ldy, planes, g)
}

/// Channels-last max-pool: x `[N,H,W,C]` ↦ y `[N,Ho,Wo,C]`, the same semantics as `pool.rs`. The forward keeps
/// each output's argmax (u32) for the backward.
pub(super) struct MaxPoolNhwc {
    kernel: usize,
    stride: usize,
    padding: usize,
    argmax: Arc<Mutex<Option<CudaSlice<u32>>>>,
}

impl MaxPoolNhwc {
    pub(super) fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            padding,
            argmax: Arc::new(Mutex::new(None)),
        }
    }

    /// (N, C, geometry) of x `[N,H,W,C]`.
    fn geom(&self, dims: &[usize]) -> Result<(usize, usize, PoolGeom32)> {
        let &[n, h, w, c] = dims else {
            bail!("max_pool2d: channels-last input must be [N,H,W,C], got {dims:?}");
        };
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if k == 0 || s == 0 || 2 * p > k || h + 2 * p < k || w + 2 * p < k {
            bail!("max_pool2d: bad kernel/stride/padding for {dims:?}");
        }
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        Ok((n, c, PoolGeom32::new(h, w, k, s, p, ho, wo)?))
    }
}

impl candle_core::CustomOp1 for MaxPoolNhwc {
    fn name(&self) -> &'static str {
        "ebv-max-pool2d-nhwc"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU runs NCHW, pool.rs)", self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (n, c, g) = self.geom(l.dims())?;
        fn run<T: Elem>(
            x: &CudaStorage,
            lx: &Layout,
            n: usize,
            c: usize,
            g: PoolGeom32,
            argmax: &Mutex<Option<CudaSlice<u32>>>,
        ) -> Result<CudaStorage> {
            let dev = x.device.clone();
            let xv = view::<T>(x, lx, "x")?;
            let total = n * g.ho as usize * g.wo as usize * c;
            if total > MAX_ELEMS || lx.shape().elem_count() > MAX_ELEMS {
                bail!("max_pool2d: {total} outputs exceed the CUDA kernel's 32-bit indexing");
            }
            // SAFETY: the kernel writes every output and every index.
            let mut y = unsafe { dev.alloc::<T>(total)? };
            let mut idx = unsafe { dev.alloc::<u32>(total)? };
            let (n32, c32) = (u32_of(n, "N")?, u32_of(c, "C")?);
            let name = format!("max_pool_fwd_idx_nhwc_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_max_pool", POOL_PTX)?;
            let mut l = f.builder();
            l.arg(&xv)
                .arg(&mut y)
                .arg(&mut idx)
                .arg(&n32)
                .arg(&c32)
                .arg(&g);
            // SAFETY: matches max_pool_fwd_idx_nhwc in max_pool.cu.
            unsafe { l.launch(launch_cfg((grid_for(total), 1), 256)) }.w()?;
            match argmax.lock() {
                Ok(mut a) => *a = Some(idx),
                Err(_) => bail!("max_pool2d: argmax lock poisoned"),
            }
            Ok(CudaStorage::wrap_cuda_slice(y, dev))
        }
        let sync = || s.device.synchronize();
        let out = super::profile::profiled("max_pool_forward", sync, || {
            by_cuda_dtype!(s, self.name(), run, s, l, n, c, g, &self.argmax)
        })?;
        Ok((out, Shape::from(vec![n, g.ho as usize, g.wo as usize, c])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let op = MaxPoolNhwcGrad(MaxPoolNhwc {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            argmax: self.argmax.clone(),
        });
        Ok(Some(x.apply_op2_no_bwd(&grad, &op)?))
    }
}

/// (X, dY) ↦ dX for [`MaxPoolNhwc`], from the argmax its forward kept (X gives the shape).
struct MaxPoolNhwcGrad(MaxPoolNhwc);

impl candle_core::CustomOp2 for MaxPoolNhwcGrad {
    fn name(&self) -> &'static str {
        "ebv-max-pool2d-nhwc-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU runs NCHW, pool.rs)", self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, c, g) = self.0.geom(l1.dims())?;
        if l2.dims() != [n, g.ho as usize, g.wo as usize, c] {
            bail!(
                "{}: dY {:?} does not match X {:?}",
                self.name(),
                l2.dims(),
                l1.dims()
            );
        }
        #[allow(clippy::too_many_arguments)]
        fn run<T: Elem>(
            x: &CudaStorage,
            lx: &Layout,
            dy: &CudaStorage,
            ldy: &Layout,
            n: usize,
            c: usize,
            g: PoolGeom32,
            argmax: &Mutex<Option<CudaSlice<u32>>>,
        ) -> Result<CudaStorage> {
            let dev = x.device.clone();
            let dyv = view::<T>(dy, ldy, "dy")?;
            let total = lx.shape().elem_count();
            if total > MAX_ELEMS {
                bail!("max_pool2d: {total} inputs exceed the CUDA kernel's 32-bit indexing");
            }
            let Ok(idx) = argmax.lock() else {
                bail!("max_pool2d: argmax lock poisoned");
            };
            let Some(idx) = idx.as_ref() else {
                bail!("max_pool2d: backward before forward");
            };
            // SAFETY: the kernel writes every element of dx.
            let mut dx: CudaSlice<T> = unsafe { dev.alloc::<T>(total)? };
            let (n32, c32) = (u32_of(n, "N")?, u32_of(c, "C")?);
            let name = format!("max_pool_bwd_idx_nhwc_{}", T::SUFFIX);
            let f = dev.get_or_load_custom_func(&name, "ebv_max_pool", POOL_PTX)?;
            let mut l = f.builder();
            l.arg(idx)
                .arg(&dyv)
                .arg(&mut dx)
                .arg(&n32)
                .arg(&c32)
                .arg(&g);
            // SAFETY: matches max_pool_bwd_idx_nhwc in max_pool.cu; idx has one entry per element of dy.
            unsafe { l.launch(launch_cfg((grid_for(total), 1), 256)) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(dx, dev))
        }
        let sync = || s1.device.synchronize();
        let argmax = &self.0.argmax;
        let out = super::profile::profiled("max_pool_backward", sync, || {
            by_cuda_dtype!(s1, self.name(), run, s1, l1, s2, l2, n, c, g, argmax)
        })?;
        Ok((out, l1.shape().clone()))
    }
}

const RESIDUAL_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/residual.ptx"));

/// relu(a + b) (`forward`) or, backward, (y, g) ↦ g·[y > 0], over two contiguous tensors of one shape and dtype.
pub(super) fn add_relu(
    forward: bool,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<CudaStorage> {
    fn run<T: Elem>(
        forward: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<CudaStorage> {
        if l1.dims() != l2.dims() {
            bail!(
                "add_relu: shapes differ: {:?} and {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let dev = s1.device.clone();
        let (a, b) = (view::<T>(s1, l1, "a")?, view::<T>(s2, l2, "b")?);
        let total = l1.shape().elem_count();
        let n32 = u32_of(total, "elements")?;
        if total > MAX_ELEMS {
            bail!("add_relu: {total} elements exceed the CUDA kernel's 32-bit indexing");
        }
        // SAFETY: the kernel writes every element.
        let mut out = unsafe { dev.alloc::<T>(total)? };
        let name = if forward {
            format!("add_relu_fwd_{}", T::SUFFIX)
        } else {
            format!("relu_grad_{}", T::SUFFIX)
        };
        let f = dev.get_or_load_custom_func(&name, "ebv_residual", RESIDUAL_PTX)?;
        let mut l = f.builder();
        l.arg(&a).arg(&b).arg(&mut out).arg(&n32);
        // SAFETY: matches add_relu_fwd / relu_grad in residual.cu.
        unsafe { l.launch(launch_cfg((grid_for(total), 1), 256)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
    let sync = || s1.device.synchronize();
    let name = if forward {
        "add_relu_forward"
    } else {
        "add_relu_backward"
    };
    super::profile::profiled(name, sync, || {
        by_cuda_dtype!(s1, "add_relu", run, forward, s1, l1, s2, l2)
    })
}
