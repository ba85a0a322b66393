//! Measured algorithm choice for the cuDNN convolutions (`cudnn.rs`), opt-in with `EBV_CUDNN_FIND=1`:
//! `cudnnFind*AlgorithmEx` runs every algorithm of a pass once on the real operands and reports their times, as
//! PyTorch does with `cudnn.benchmark = True`. It runs once per (shape, dtype, layout, pass) and the choice is cached
//! by `cudnn.rs`. Why it exists: with the legacy heuristics (`cudnnGet*Algorithm_v7`) some ResNet-50 layers run up
//! to 4× slower than PyTorch's; why it is not the default: the one H200 run of it so far made the whole step slower
//! (BENCHMARKS.md), for reasons not yet separated from the memory pool's behaviour.
//!
//! cudarc's safe descriptors keep their raw handles private, so this module builds its own raw handle (bound to the
//! device's candle stream, one per thread and device) and descriptors from the same geometry. Any failure here is
//! not an error of the convolution: the caller falls back to the heuristic choice.
//!
//! Invariants: Find writes into the output buffer it is given (the caller's, which the real launch overwrites) and
//! into a scratch workspace of at most [`FIND_WORKSPACE`] bytes, so algorithms needing more are not considered.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;

use candle_core::cuda_backend::cudarc::cudnn::{result, sys, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, DeviceId};

use super::conv::ConvGeom;

/// The largest workspace an algorithm may need to be considered (PyTorch also caps its benchmark's workspace).
pub(super) const FIND_WORKSPACE: usize = 1 << 30;

/// A raw cuDNN handle on one device's stream, destroyed with its thread.
struct RawHandle(sys::cudnnHandle_t);

impl Drop for RawHandle {
    fn drop(&mut self) {
        // SAFETY: created by `result::create_handle` and dropped once.
        unsafe {
            let _ = result::destroy_handle(self.0);
        }
    }
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, RawHandle>> = RefCell::new(HashMap::new());
}

fn with_handle<R>(dev: &CudaDevice, f: impl FnOnce(sys::cudnnHandle_t) -> Option<R>) -> Option<R> {
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let handle = match handles.entry(dev.id()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let handle = RawHandle(result::create_handle().ok()?);
                // SAFETY: a fresh handle and the device's live stream.
                unsafe {
                    result::set_stream(handle.0, dev.cuda_stream().cu_stream() as sys::cudaStream_t)
                        .ok()?
                };
                e.insert(handle)
            }
        };
        f(handle.0)
    })
}

/// Raw descriptors of one convolution, destroyed on drop.
pub(super) struct RawConv {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for RawConv {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created in `RawConv::new` and is destroyed once.
        unsafe {
            let _ = result::destroy_tensor_descriptor(self.x);
            let _ = result::destroy_filter_descriptor(self.w);
            let _ = result::destroy_tensor_descriptor(self.y);
            let _ = result::destroy_convolution_descriptor(self.conv);
        }
    }
}

impl RawConv {
    /// The descriptors `cudnn.rs` builds for `g`, element type T, compute type C.
    pub(super) fn new<T: CudnnDataType, C: CudnnDataType>(
        g: &ConvGeom,
        nhwc: bool,
        tensor_ops: bool,
    ) -> Option<RawConv> {
        let i = |v: usize| i32::try_from(v).ok();
        let format = if nhwc {
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
        } else {
            sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
        };
        let raw = RawConv {
            x: result::create_tensor_descriptor().ok()?,
            w: result::create_filter_descriptor().ok()?,
            y: result::create_tensor_descriptor().ok()?,
            conv: result::create_convolution_descriptor().ok()?,
        };
        // SAFETY: freshly created descriptors, set once each.
        unsafe {
            result::set_tensor4d_descriptor(
                raw.x,
                format,
                T::DATA_TYPE,
                [i(g.n)?, i(g.c)?, i(g.h)?, i(g.w)?],
            )
            .ok()?;
            result::set_filter4d_descriptor(
                raw.w,
                T::DATA_TYPE,
                format,
                [i(g.o)?, i(g.c)?, i(g.k)?, i(g.k)?],
            )
            .ok()?;
            result::set_tensor4d_descriptor(
                raw.y,
                format,
                T::DATA_TYPE,
                [i(g.n)?, i(g.o)?, i(g.ho)?, i(g.wo)?],
            )
            .ok()?;
            result::set_convolution2d_descriptor(
                raw.conv,
                i(g.pad)?,
                i(g.pad)?,
                i(g.stride)?,
                i(g.stride)?,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                C::DATA_TYPE,
            )
            .ok()?;
            if tensor_ops {
                result::set_convolution_math_type(
                    raw.conv,
                    sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
                )
                .ok()?;
            }
        }
        Some(raw)
    }
}

/// How many algorithms each pass has at most (cuDNN's `*_ALGO_COUNT`).
const MAX_ALGOS: usize = 8;

/// A pass's perf record: whether the algorithm ran, and which it was.
trait Perf: Copy {
    type Algo: Copy;
    fn ran(&self) -> bool;
    fn algo(&self) -> Self::Algo;
}

macro_rules! perf {
    ($perf:ty, $algo:ty) => {
        impl Perf for $perf {
            type Algo = $algo;
            fn ran(&self) -> bool {
                self.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
            }
            fn algo(&self) -> $algo {
                self.algo
            }
        }
    };
}

perf!(
    sys::cudnnConvolutionFwdAlgoPerf_t,
    sys::cudnnConvolutionFwdAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnConvolutionBwdDataAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnConvolutionBwdFilterAlgo_t
);

/// Runs one `cudnnFind*AlgorithmEx` call, `find(handle, returned count, perf records, workspace)` (the operands'
/// pointers captured by the caller), with a scratch workspace of [`FIND_WORKSPACE`] bytes; the fastest algorithm
/// that ran (cuDNN sorts the records by time).
fn fastest<P: Perf>(
    dev: &CudaDevice,
    find: impl FnOnce(sys::cudnnHandle_t, *mut i32, *mut P, *mut c_void) -> sys::cudnnStatus_t,
) -> Option<P::Algo> {
    let stream = dev.cuda_stream();
    // SAFETY: scratch for cuDNN only.
    let mut ws = unsafe { dev.alloc::<u8>(FIND_WORKSPACE) }.ok()?;
    let (wsp, _gws) = ws.device_ptr_mut(&stream);
    with_handle(dev, |h| {
        let mut n = 0;
        // SAFETY: all-zero is a valid bit pattern of the plain-data perf structs, overwritten by cuDNN.
        let mut perf = [unsafe { std::mem::zeroed::<P>() }; MAX_ALGOS];
        if find(h, &mut n, perf.as_mut_ptr(), wsp as *mut c_void)
            != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
        {
            return None;
        }
        perf[..n.clamp(0, MAX_ALGOS as i32) as usize]
            .iter()
            .find(|p| p.ran())
            .map(|p| p.algo())
    })
}

/// The fastest forward algorithm that ran, measured on (x, w) into y.
pub(super) fn forward<X: DevicePtr<T>, W: DevicePtr<T>, Y: DevicePtrMut<T>, T>(
    dev: &CudaDevice,
    raw: &RawConv,
    x: &X,
    w: &W,
    y: &mut Y,
) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
    let stream = dev.cuda_stream();
    let (xp, _gx) = x.device_ptr(&stream);
    let (wp, _gw) = w.device_ptr(&stream);
    let (yp, _gy) = y.device_ptr_mut(&stream);
    fastest(dev, |h, n, perf, ws| {
        // SAFETY: descriptors match the buffers' shapes and dtype (built from the caller's geometry).
        unsafe {
            sys::cudnnFindConvolutionForwardAlgorithmEx(
                h,
                raw.x,
                xp as *const c_void,
                raw.w,
                wp as *const c_void,
                raw.conv,
                raw.y,
                yp as *mut c_void,
                MAX_ALGOS as i32,
                n,
                perf,
                ws,
                FIND_WORKSPACE,
            )
        }
    })
}

/// The fastest backward-data algorithm that ran, measured on (w, dy) into dx.
pub(super) fn backward_data<W: DevicePtr<T>, DY: DevicePtr<T>, DX: DevicePtrMut<T>, T>(
    dev: &CudaDevice,
    raw: &RawConv,
    w: &W,
    dy: &DY,
    dx: &mut DX,
) -> Option<sys::cudnnConvolutionBwdDataAlgo_t> {
    let stream = dev.cuda_stream();
    let (wp, _gw) = w.device_ptr(&stream);
    let (dyp, _gdy) = dy.device_ptr(&stream);
    let (dxp, _gdx) = dx.device_ptr_mut(&stream);
    fastest(dev, |h, n, perf, ws| {
        // SAFETY: as in `forward`.
        unsafe {
            sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                h,
                raw.w,
                wp as *const c_void,
                raw.y,
                dyp as *const c_void,
                raw.conv,
                raw.x,
                dxp as *mut c_void,
                MAX_ALGOS as i32,
                n,
                perf,
                ws,
                FIND_WORKSPACE,
            )
        }
    })
}

/// The fastest backward-filter algorithm that ran, measured on (x, dy) into dw.
pub(super) fn backward_filter<X: DevicePtr<T>, DY: DevicePtr<T>, DW: DevicePtrMut<T>, T>(
    dev: &CudaDevice,
    raw: &RawConv,
    x: &X,
    dy: &DY,
    dw: &mut DW,
) -> Option<sys::cudnnConvolutionBwdFilterAlgo_t> {
    let stream = dev.cuda_stream();
    let (xp, _gx) = x.device_ptr(&stream);
    let (dyp, _gdy) = dy.device_ptr(&stream);
    let (dwp, _gdw) = dw.device_ptr_mut(&stream);
    fastest(dev, |h, n, perf, ws| {
        // SAFETY: as in `forward`.
        unsafe {
            sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h,
                raw.x,
                xp as *const c_void,
                raw.y,
                dyp as *const c_void,
                raw.conv,
                raw.w,
                dwp as *mut c_void,
                MAX_ALGOS as i32,
                n,
                perf,
                ws,
                FIND_WORKSPACE,
            )
        }
    })
}
