//! conv2d on CUDA through cuDNN for the forward pass *and* both backward passes (cudarc's bindings, on candle's
//! stream). candle 0.11.1 runs the forward through cuDNN but differentiates it with its own conv-transpose and a
//! transposed conv2d, naive kernels that dominate a ResNet step on a GPU.
//!
//! Three `CustomOp2`s, as on the CPU (`conv.rs`): the forward op's `bwd` applies the input-gradient op (dY, W) ↦ dX
//! (`cudnnConvolutionBackwardData`) and the weight-gradient op (X, dY) ↦ dW (`cudnnConvolutionBackwardFilter`), each
//! only for an argument that takes part in the graph.
//!
//! Invariants:
//! - NCHW, contiguous operands of one dtype on one device (the callers make them contiguous); f32 and f64 compute in
//!   their own type, bf16 and f16 store in 16 bits and accumulate in f32 (cuDNN's pseudo-half configuration) with
//!   tensor-core math allowed;
//! - outputs are written with β = 0, so they are allocated uninitialised;
//! - the cuDNN handle is per thread and per device (a handle is neither `Send` nor `Sync`) and bound to the device's
//!   candle stream, so the ops are ordered with every other candle kernel without synchronisation;
//! - algorithms come from cuDNN's heuristics (`cudnnGet*Algorithm_v7`, PyTorch's choice with
//!   `cudnn.benchmark = False`) or, with `EBV_CUDNN_FIND=1`, are measured (`cudnn_find.rs`, PyTorch's
//!   `cudnn.benchmark = True`); either choice is cached per shape, dtype, layout and pass with its workspace size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::LocalKey;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::cudnn::{
    sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use half::{bf16, f16};

use super::conv::ConvGeom;
use super::cudnn_find;

/// Whether the cuDNN ops take these tensors: all on one CUDA device, one floating dtype.
pub(super) fn applies(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    first.device().is_cuda()
        && matches!(
            first.dtype(),
            DType::F32 | DType::F64 | DType::BF16 | DType::F16
        )
        && tensors
            .iter()
            .all(|t| t.device().same_device(first.device()) && t.dtype() == first.dtype())
}

pub(super) fn conv2d_cudnn(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let g = ConvGeom::new(x.dims(), w.dims(), stride, padding)?;
    x.apply_op2(&w, CudnnConv { g, nhwc: false })
}

/// Channels-last: x `[N,H,W,C]`, w `[O,K,K,C]` ↦ y `[N,Ho,Wo,O]` (cuDNN's NHWC / KRSC layouts, the tensor-core
/// kernels' own, as PyTorch's `channels_last`).
pub(super) fn conv2d_cudnn_nhwc(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let (&[n, h, wd, c], &[o, k, k2, wc]) = (x.dims(), w.dims()) else {
        bail!(
            "conv2d (channels-last): x must be [N,H,W,C] and w [O,K,K,C], got {:?} and {:?}",
            x.dims(),
            w.dims()
        );
    };
    let g = ConvGeom::new(&[n, c, h, wd], &[o, wc, k, k2], stride, padding)?;
    x.apply_op2(&w, CudnnConv { g, nhwc: true })
}

/// Raw descriptors for a measured algorithm choice (`cudnn_find.rs`) when `EBV_CUDNN_FIND=1` asks for one; else
/// none, and cuDNN's heuristics choose. Both compute the same convolution; on an H200 the measured choice made the
/// ResNet-50 step slower (1,342 against 1,618 images/s, BENCHMARKS.md), so it is not the default.
fn find<T: Elem>(g: &ConvGeom, nhwc: bool) -> Option<cudnn_find::RawConv> {
    if std::env::var("EBV_CUDNN_FIND").map_or(true, |v| v != "1") {
        return None;
    }
    cudnn_find::RawConv::new::<T, T::Compute>(g, nhwc, T::TENSOR_OPS)
}

/// The memory-order dims of X, W and Y for a layout.
fn layout_dims(g: &ConvGeom, nhwc: bool) -> ([usize; 4], [usize; 4], [usize; 4]) {
    if nhwc {
        (
            [g.n, g.h, g.w, g.c],
            [g.o, g.k, g.k, g.c],
            [g.n, g.ho, g.wo, g.o],
        )
    } else {
        (
            [g.n, g.c, g.h, g.w],
            [g.o, g.c, g.k, g.k],
            [g.n, g.o, g.ho, g.wo],
        )
    }
}

/// Element types: storage type, the type cuDNN accumulates in, and whether tensor cores may be used.
trait Elem: CudaDType + CudnnDataType + DeviceRepr + WithDType {
    type Compute: CudnnDataType;
    const TENSOR_OPS: bool;
}

impl Elem for f32 {
    type Compute = f32;
    // CUDNN_DEFAULT_MATH: f32 convolutions may still use TF32 on Ampere and later, as PyTorch allows by default.
    const TENSOR_OPS: bool = false;
}

impl Elem for f64 {
    type Compute = f64;
    const TENSOR_OPS: bool = false;
}

impl Elem for bf16 {
    type Compute = f32;
    const TENSOR_OPS: bool = true;
}

impl Elem for f16 {
    type Compute = f32;
    const TENSOR_OPS: bool = true;
}

/// (device, dtype, [n, c, h, w, o, k, stride, pad, nhwc]).
type AlgoKey = (DeviceId, DType, [usize; 9]);

/// Per pass: the chosen algorithm and its workspace bytes.
type AlgoCache<A> = RefCell<HashMap<AlgoKey, (A, usize)>>;

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static FORWARD: AlgoCache<sys::cudnnConvolutionFwdAlgo_t> = RefCell::new(HashMap::new());
    static DATA: AlgoCache<sys::cudnnConvolutionBwdDataAlgo_t> = RefCell::new(HashMap::new());
    static FILTER: AlgoCache<sys::cudnnConvolutionBwdFilterAlgo_t> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|handles| {
        if let Some(h) = handles.borrow().get(&dev.id()) {
            return Ok(Arc::clone(h));
        }
        let h = Cudnn::new(dev.cuda_stream())?;
        handles.borrow_mut().insert(dev.id(), Arc::clone(&h));
        Ok(h)
    })
}

/// The algorithm and workspace size cached for (device, dtype, shape), or cuDNN's heuristic choice, remembered.
fn choose<A: Copy>(
    cache: &'static LocalKey<AlgoCache<A>>,
    dev: &CudaDevice,
    dtype: DType,
    g: &ConvGeom,
    nhwc: bool,
    pick: impl FnOnce() -> Result<A>,
    workspace: impl FnOnce(A) -> Result<usize>,
) -> Result<(A, usize)> {
    let key = (
        dev.id(),
        dtype,
        [
            g.n,
            g.c,
            g.h,
            g.w,
            g.o,
            g.k,
            g.stride,
            g.pad,
            usize::from(nhwc),
        ],
    );
    if let Some(hit) = cache.with(|c| c.borrow().get(&key).copied()) {
        return Ok(hit);
    }
    let algo = pick()?;
    let bytes = workspace(algo)?;
    cache.with(|c| c.borrow_mut().insert(key, (algo, bytes)));
    Ok((algo, bytes))
}

/// The descriptors of one convolution.
struct Descriptors<T: Elem> {
    conv: ConvDescriptor<T::Compute>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

fn dim(v: usize) -> Result<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("cudnn conv2d: dimension {v} does not fit cuDNN's int"),
    }
}

/// cuDNN takes the dims in N, C, H, W order whatever the memory format.
fn descriptors<T: Elem>(cudnn: &Arc<Cudnn>, g: &ConvGeom, nhwc: bool) -> Result<Descriptors<T>> {
    let nchw = if nhwc {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
    } else {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
    };
    let (p, s) = (dim(g.pad)?, dim(g.stride)?);
    let mut conv = cudnn.create_conv2d::<T::Compute>(
        [p, p],
        [s, s],
        [1, 1],
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    if T::TENSOR_OPS {
        conv.set_math_type(sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)?;
    }
    let x = cudnn.create_4d_tensor::<T>(nchw, [dim(g.n)?, dim(g.c)?, dim(g.h)?, dim(g.w)?])?;
    let w = cudnn.create_4d_filter::<T>(nchw, [dim(g.o)?, dim(g.c)?, dim(g.k)?, dim(g.k)?])?;
    let y = cudnn.create_4d_tensor::<T>(nchw, [dim(g.n)?, dim(g.o)?, dim(g.ho)?, dim(g.wo)?])?;
    Ok(Descriptors { conv, x, w, y })
}

/// The contiguous elements of `s` described by `l`, checked against the expected shape.
fn view<'a, T: Elem>(
    s: &'a CudaStorage,
    l: &Layout,
    dims: &[usize],
    what: &str,
) -> Result<CudaView<'a, T>> {
    if l.dims() != dims {
        bail!("cudnn conv2d: {what} is {:?}, expected {dims:?}", l.dims());
    }
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("cudnn conv2d: {what} is not contiguous");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

fn forward<T: Elem>(
    g: &ConvGeom,
    nhwc: bool,
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let cudnn = handle(dev)?;
    let d = descriptors::<T>(&cudnn, g, nhwc)?;
    let (xd, wd, _) = layout_dims(g, nhwc);
    let xv = view::<T>(x, lx, &xd, "X")?;
    let wv = view::<T>(w, lw, &wd, "W")?;
    // SAFETY: β = 0, cuDNN writes every element of y.
    let mut y = unsafe { dev.alloc::<T>(g.n * g.o * g.ho * g.wo)? };
    let op = ConvForward {
        conv: &d.conv,
        x: &d.x,
        w: &d.w,
        y: &d.y,
    };
    let (algo, bytes) = choose(
        &FORWARD,
        dev,
        T::DTYPE,
        g,
        nhwc,
        || match find::<T>(g, nhwc).and_then(|raw| cudnn_find::forward(dev, &raw, &xv, &wv, &mut y))
        {
            Some(a) => Ok(a),
            None => Ok(op.pick_algorithm()?),
        },
        |a| Ok(op.get_workspace_size(a)?),
    )?;
    // SAFETY: the workspace is scratch for cuDNN, never read by us.
    let mut workspace = unsafe { dev.alloc::<u8>(bytes.max(1))? };
    // SAFETY: the descriptors were built from `g`, and the views were checked against the same shapes and dtype.
    unsafe {
        op.launch(
            algo,
            Some(&mut workspace),
            (T::from_f64(1.0), T::from_f64(0.0)),
            &xv,
            &wv,
            &mut y,
        )?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

fn grad_input<T: Elem>(
    g: &ConvGeom,
    nhwc: bool,
    dy: &CudaStorage,
    ldy: &Layout,
    w: &CudaStorage,
    lw: &Layout,
) -> Result<CudaStorage> {
    let dev = &dy.device;
    let cudnn = handle(dev)?;
    let d = descriptors::<T>(&cudnn, g, nhwc)?;
    let (_, wd, yd) = layout_dims(g, nhwc);
    let dyv = view::<T>(dy, ldy, &yd, "dY")?;
    let wv = view::<T>(w, lw, &wd, "W")?;
    // SAFETY: β = 0, cuDNN writes every element of dx.
    let mut dx = unsafe { dev.alloc::<T>(g.n * g.c * g.h * g.w)? };
    let op = ConvBackwardData {
        conv: &d.conv,
        dx: &d.x,
        w: &d.w,
        dy: &d.y,
    };
    let (algo, bytes) = choose(
        &DATA,
        dev,
        T::DTYPE,
        g,
        nhwc,
        || match find::<T>(g, nhwc)
            .and_then(|raw| cudnn_find::backward_data(dev, &raw, &wv, &dyv, &mut dx))
        {
            Some(a) => Ok(a),
            None => Ok(op.pick_algorithm()?),
        },
        |a| Ok(op.get_workspace_size(a)?),
    )?;
    // SAFETY: scratch for cuDNN.
    let mut workspace = unsafe { dev.alloc::<u8>(bytes.max(1))? };
    // SAFETY: descriptors and views agree on shapes and dtype (checked above).
    unsafe {
        op.launch(
            algo,
            Some(&mut workspace),
            (T::from_f64(1.0), T::from_f64(0.0)),
            &mut dx,
            &wv,
            &dyv,
        )?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
}

fn grad_weight<T: Elem>(
    g: &ConvGeom,
    nhwc: bool,
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<CudaStorage> {
    let dev = &x.device;
    let cudnn = handle(dev)?;
    let d = descriptors::<T>(&cudnn, g, nhwc)?;
    let (xd, _, yd) = layout_dims(g, nhwc);
    let xv = view::<T>(x, lx, &xd, "X")?;
    let dyv = view::<T>(dy, ldy, &yd, "dY")?;
    // SAFETY: β = 0, cuDNN writes every element of dw.
    let mut dw = unsafe { dev.alloc::<T>(g.o * g.c * g.k * g.k)? };
    let op = ConvBackwardFilter {
        conv: &d.conv,
        x: &d.x,
        dw: &d.w,
        dy: &d.y,
    };
    let (algo, bytes) = choose(
        &FILTER,
        dev,
        T::DTYPE,
        g,
        nhwc,
        || match find::<T>(g, nhwc)
            .and_then(|raw| cudnn_find::backward_filter(dev, &raw, &xv, &dyv, &mut dw))
        {
            Some(a) => Ok(a),
            None => Ok(op.pick_algorithm()?),
        },
        |a| Ok(op.get_workspace_size(a)?),
    )?;
    // SAFETY: scratch for cuDNN.
    let mut workspace = unsafe { dev.alloc::<u8>(bytes.max(1))? };
    // SAFETY: descriptors and views agree on shapes and dtype (checked above).
    unsafe {
        op.launch(
            algo,
            Some(&mut workspace),
            (T::from_f64(1.0), T::from_f64(0.0)),
            &xv,
            &mut dw,
            &dyv,
        )?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dw, dev.clone()))
}

/// Dispatch a generic pass on the storage dtype.
macro_rules! by_dtype {
    ($s:expr, $name:expr, $f:ident, $($arg:expr),*) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            other => bail!("{}: unsupported dtype {other:?}", $name),
        }
    };
}

fn cpu_only(name: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{name}: a CUDA op, called on the CPU (the CPU path is conv.rs)")
}

/// (X, W) ↦ Y.
struct CudnnConv {
    g: ConvGeom,
    nhwc: bool,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "ebv-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.g;
        let sync = || s1.device.synchronize();
        let out = super::profile::profiled("conv_forward", sync, || {
            by_dtype!(s1, self.name(), forward, g, self.nhwc, s1, l1, s2, l2)
        })?;
        Ok((out, Shape::from(layout_dims(g, self.nhwc).2.to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &CudnnGradInput {
                    g: self.g,
                    nhwc: self.nhwc,
                },
            )?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad,
                &CudnnGradWeight {
                    g: self.g,
                    nhwc: self.nhwc,
                },
            )?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// (dY, W) ↦ dX.
struct CudnnGradInput {
    g: ConvGeom,
    nhwc: bool,
}

impl CustomOp2 for CudnnGradInput {
    fn name(&self) -> &'static str {
        "ebv-cudnn-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.g;
        let sync = || s1.device.synchronize();
        let out = super::profile::profiled("conv_grad_input", sync, || {
            by_dtype!(s1, self.name(), grad_input, g, self.nhwc, s1, l1, s2, l2)
        })?;
        Ok((out, Shape::from(layout_dims(g, self.nhwc).0.to_vec())))
    }
}

/// (X, dY) ↦ dW.
struct CudnnGradWeight {
    g: ConvGeom,
    nhwc: bool,
}

impl CustomOp2 for CudnnGradWeight {
    fn name(&self) -> &'static str {
        "ebv-cudnn-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_only(self.name())
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let g = &self.g;
        let sync = || s1.device.synchronize();
        let out = super::profile::profiled("conv_grad_weight", sync, || {
            by_dtype!(s1, self.name(), grad_weight, g, self.nhwc, s1, l1, s2, l2)
        })?;
        Ok((out, Shape::from(layout_dims(g, self.nhwc).1.to_vec())))
    }
}
