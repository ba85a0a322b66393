//! A self-check of the kernels on any device: each op's (conv2d, max-pool, BatchNorm, residual add + ReLU) output
//! and gradients, through both [`KernelImpl`]s (and, on a GPU, the channels-last ops), against this module's CPU
//! kernels in f64 (themselves checked against finite differences in the unit tests). It is what
//! `ebv-train --check-kernels` runs, so the cuDNN ops can be checked on a GPU machine with the shipped binary, and
//! what the CPU tests run here.
//!
//! Invariants:
//! - the reference sees the inputs *after* rounding to the dtype under test, so a difference measures the op, not
//!   the input rounding;
//! - max-pool inputs are distinct within each plane and exactly representable in 16 bits, so no window has a tie
//!   (the two implementations split tied gradients differently, by design);
//! - BatchNorm is checked in f32/f64, and on CUDA also as the model runs it under mixed precision: 16-bit
//!   activations with f32 parameters.

use std::time::Instant;

use candle_core::{bail, DType, Device, Result, Tensor, Var};
use serde::Serialize;

use super::{
    add_relu, batch_norm_train, batch_norm_train_nhwc, channels_last, conv2d, conv2d_nhwc,
    max_pool2d, max_pool2d_nhwc, KernelImpl,
};

/// One compared tensor.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheckRow {
    pub op: String,
    pub case: String,
    pub kernels: String,
    /// `y`, or `d<input>` for a gradient.
    pub output: String,
    /// max |got − ref| / max |ref| (NaN when the op could not run).
    pub rel_diff: f64,
    pub tol: f64,
    /// Within tolerance. An error of this crate's kernels is a failure; one
    /// of candle's ops (a dtype it lacks on this device) is only reported.
    pub ok: bool,
    pub error: Option<String>,
}

/// Forward + backward time of one convolution layer.
#[derive(Debug, Clone, Serialize)]
pub struct ConvTiming {
    pub case: String,
    pub kernels: String,
    /// NaN when the layer could not run.
    pub ms_forward_backward: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub device: String,
    pub dtype: String,
    pub rows: Vec<KernelCheckRow>,
    /// Rows of this crate's kernels out of tolerance or in error.
    pub failures: usize,
    /// Rows of candle's own ops out of tolerance: reported, not failures (on an H200, candle 0.11.1's ReLU
    /// gradient in bf16 is one).
    pub candle_off: usize,
    pub timings: Vec<ConvTiming>,
}

/// (n, c, h, w, o, k, stride, pad). Avoids (H+2p−k) mod s ≠ (W+2p−k) mod s, where candle's own conv backward fails.
const CONV_CASES: &[[usize; 8]] = &[
    [2, 3, 9, 11, 5, 3, 1, 1],
    [1, 5, 11, 7, 9, 3, 2, 1],
    [3, 3, 17, 15, 6, 7, 2, 3],
    [2, 6, 7, 9, 13, 1, 1, 0],
    [2, 7, 9, 7, 10, 1, 2, 0],
    [4, 9, 8, 8, 11, 3, 2, 1],
    [2, 16, 14, 14, 32, 3, 1, 1],
    [2, 32, 14, 14, 16, 1, 2, 0],
    [3, 16, 7, 9, 17, 3, 1, 1],
];

/// (n, c, h, w, kernel, stride, pad).
const POOL_CASES: &[[usize; 7]] = &[
    [2, 3, 9, 11, 3, 2, 1],
    [1, 2, 8, 8, 3, 2, 1],
    [2, 2, 7, 7, 2, 2, 0],
    [2, 3, 23, 21, 3, 2, 1],
];

/// (n, c, h, w).
/// The last is large enough that the CUDA kernels split each channel's sums over several blocks.
const BN_CASES: &[[usize; 4]] = &[[4, 3, 5, 5], [2, 5, 3, 7], [16, 4, 48, 48]];

/// The largest difference each dtype may show against the f64 reference, relative to the reference's scale.
fn tolerance(dtype: DType, device: &Device) -> f64 {
    match dtype {
        DType::F64 => 1e-9,
        // cuDNN may run f32 convolutions in TF32 (10-bit mantissa) on Ampere and later, as PyTorch allows.
        DType::F32 if device.is_cuda() => 5e-3,
        DType::F32 => 1e-5,
        DType::F16 => 1e-2,
        _ => 3e-2,
    }
}

/// Run every op on `device` in `dtype` with both implementations and compare with the CPU f64 reference.
pub fn check_kernels(device: &Device, dtype: DType) -> Result<KernelCheck> {
    if !matches!(dtype, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
        bail!("check_kernels: {dtype:?} is not a float type the kernels run in");
    }
    if device.is_cpu() && !matches!(dtype, DType::F32 | DType::F64) {
        bail!("check_kernels: {dtype:?} kernels need a CUDA device (candle's CPU ops have no {dtype:?} GEMM)");
    }
    let tol = tolerance(dtype, device);
    let mut rows = Vec::new();
    for (i, &[n, c, h, w, o, k, s, p]) in CONV_CASES.iter().enumerate() {
        let seed = 100 + 3 * i as u64;
        let x = rand_tensor(&[n, c, h, w], seed, dtype)?;
        let wt = rand_tensor(&[o, c, k, k], seed + 1, dtype)?;
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let r = rand_tensor(&[n, o, ho, wo], seed + 2, dtype)?;
        let f = |imp: KernelImpl| move |t: &[Tensor]| conv2d(&t[0], &t[1], s, p, imp);
        let want = outputs_and_grads(
            &f(KernelImpl::Ebv),
            &[x.clone(), wt.clone()],
            &r,
            &Device::Cpu,
            DType::F64,
        )?;
        let case = format!("x[{n},{c},{h},{w}] w[{o},{c},{k},{k}] s{s} p{p}");
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            let got = outputs_and_grads(&f(imp), &[x.clone(), wt.clone()], &r, device, dtype);
            rows.extend(compare(
                "conv2d",
                &case,
                imp,
                got,
                &want,
                &["y", "dx", "dw"],
                tol,
            ));
        }
    }
    // Channels-last (NHWC) convolutions where the model would use them: inputs and outputs transposed around the
    // op, so the gradients reach the NCHW inputs and compare with the same reference.
    let nhwc = channels_last(device, dtype, KernelImpl::Ebv);
    if nhwc {
        for (i, &[n, c, h, w, o, k, s, p]) in CONV_CASES.iter().enumerate() {
            let seed = 100 + 3 * i as u64;
            let x = rand_tensor(&[n, c, h, w], seed, dtype)?;
            let wt = rand_tensor(&[o, c, k, k], seed + 1, dtype)?;
            let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let r = rand_tensor(&[n, o, ho, wo], seed + 2, dtype)?;
            let want = outputs_and_grads(
                &|t: &[Tensor]| conv2d(&t[0], &t[1], s, p, KernelImpl::Ebv),
                &[x.clone(), wt.clone()],
                &r,
                &Device::Cpu,
                DType::F64,
            )?;
            let f = move |t: &[Tensor]| {
                conv2d_nhwc(&to_nhwc(&t[0])?, &to_nhwc(&t[1])?, s, p)?.permute((0, 3, 1, 2))
            };
            let got = outputs_and_grads(&f, &[x, wt], &r, device, dtype);
            let case = format!("x[{n},{c},{h},{w}] w[{o},{c},{k},{k}] s{s} p{p}");
            let names = ["y", "dx", "dw"];
            rows.extend(nhwc_rows(compare(
                "conv2d",
                &case,
                KernelImpl::Ebv,
                got,
                &want,
                &names,
                tol,
            )));
        }
    }
    for (i, &[n, c, h, w, k, s, p]) in POOL_CASES.iter().enumerate() {
        let seed = 200 + 2 * i as u64;
        let x = plane_distinct_tensor(&[n, c, h, w], seed, dtype)?;
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let r = rand_tensor(&[n, c, ho, wo], seed + 1, dtype)?;
        let f = |imp: KernelImpl| move |t: &[Tensor]| max_pool2d(&t[0], k, s, p, imp);
        let want = outputs_and_grads(
            &f(KernelImpl::Ebv),
            std::slice::from_ref(&x),
            &r,
            &Device::Cpu,
            DType::F64,
        )?;
        let case = format!("x[{n},{c},{h},{w}] k{k} s{s} p{p}");
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            let got = outputs_and_grads(&f(imp), std::slice::from_ref(&x), &r, device, dtype);
            rows.extend(compare(
                "max_pool2d",
                &case,
                imp,
                got,
                &want,
                &["y", "dx"],
                tol,
            ));
        }
        if nhwc {
            let f = move |t: &[Tensor]| {
                max_pool2d_nhwc(&to_nhwc(&t[0])?, k, s, p)?.permute((0, 3, 1, 2))
            };
            let got = outputs_and_grads(&f, std::slice::from_ref(&x), &r, device, dtype);
            let names = ["y", "dx"];
            rows.extend(nhwc_rows(compare(
                "max_pool2d",
                &case,
                KernelImpl::Ebv,
                got,
                &want,
                &names,
                tol,
            )));
        }
    }
    for (i, dims) in [[2, 3, 9, 11], [4, 16, 7, 7]].iter().enumerate() {
        let seed = 500 + 3 * i as u64;
        let a = rand_tensor(dims, seed, dtype)?;
        let b = rand_tensor(dims, seed + 1, dtype)?;
        let r = rand_tensor(dims, seed + 2, dtype)?;
        let f = |imp: KernelImpl| move |t: &[Tensor]| add_relu(&t[0], &t[1], imp);
        let inputs = [a, b];
        let want = outputs_and_grads(&f(KernelImpl::Ebv), &inputs, &r, &Device::Cpu, DType::F64)?;
        let case = format!("a, b {dims:?}");
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            let got = outputs_and_grads(&f(imp), &inputs, &r, device, dtype);
            let names = ["y", "da", "db"];
            rows.extend(compare("add_relu", &case, imp, got, &want, &names, tol));
        }
    }
    if matches!(dtype, DType::F32 | DType::F64) {
        for (i, &[n, c, h, w]) in BN_CASES.iter().enumerate() {
            for relu in [false, true] {
                let seed = 300 + 4 * i as u64;
                let x = rand_tensor(&[n, c, h, w], seed, dtype)?;
                let gamma = (rand_tensor(&[c], seed + 1, dtype)? + 1.5)?;
                let beta = rand_tensor(&[c], seed + 2, dtype)?;
                let r = rand_tensor(&[n, c, h, w], seed + 3, dtype)?;
                let f = |imp: KernelImpl| {
                    move |t: &[Tensor]| {
                        batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu, imp).map(|(y, _, _)| y)
                    }
                };
                let inputs = [x, gamma, beta];
                let want =
                    outputs_and_grads(&f(KernelImpl::Ebv), &inputs, &r, &Device::Cpu, DType::F64)?;
                let case = format!("x[{n},{c},{h},{w}] relu {relu}");
                let names = ["y", "dx", "dgamma", "dbeta"];
                for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
                    let got = outputs_and_grads(&f(imp), &inputs, &r, device, dtype);
                    rows.extend(compare("batch_norm", &case, imp, got, &want, &names, tol));
                }
                if nhwc {
                    let got = outputs_and_grads(&bn_nhwc(relu), &inputs, &r, device, dtype);
                    rows.extend(nhwc_rows(compare(
                        "batch_norm",
                        &case,
                        KernelImpl::Ebv,
                        got,
                        &want,
                        &names,
                        tol,
                    )));
                }
            }
        }
    }
    // Mixed precision as the model runs it on a GPU: 16-bit activations, f32 γ and β (this crate's CUDA kernels
    // only; candle's ops need one dtype).
    if matches!(dtype, DType::BF16 | DType::F16) && device.is_cuda() {
        for (i, &[n, c, h, w]) in BN_CASES.iter().enumerate() {
            for relu in [false, true] {
                let seed = 350 + 4 * i as u64;
                let x = rand_tensor(&[n, c, h, w], seed, dtype)?;
                let gamma = (rand_tensor(&[c], seed + 1, DType::F32)? + 1.5)?;
                let beta = rand_tensor(&[c], seed + 2, DType::F32)?;
                let r = rand_tensor(&[n, c, h, w], seed + 3, dtype)?;
                let f = move |t: &[Tensor]| {
                    batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu, KernelImpl::Ebv)
                        .map(|(y, _, _)| y)
                };
                let inputs = [x, gamma, beta];
                let want = outputs_and_grads(&f, &inputs, &r, &Device::Cpu, DType::F64)?;
                let got =
                    outputs_and_grads_in(&f, &inputs, &r, device, &[dtype, DType::F32, DType::F32]);
                let case = format!("x[{n},{c},{h},{w}] {dtype:?} with f32 parameters, relu {relu}");
                let names = ["y", "dx", "dgamma", "dbeta"];
                rows.extend(compare(
                    "batch_norm",
                    &case,
                    KernelImpl::Ebv,
                    got,
                    &want,
                    &names,
                    tol,
                ));
                let got = outputs_and_grads_in(
                    &bn_nhwc(relu),
                    &inputs,
                    &r,
                    device,
                    &[dtype, DType::F32, DType::F32],
                );
                rows.extend(nhwc_rows(compare(
                    "batch_norm",
                    &case,
                    KernelImpl::Ebv,
                    got,
                    &want,
                    &names,
                    tol,
                )));
            }
        }
    }
    // candle's own ops are the comparison, not the subject: a wrong result of theirs is reported, not failed.
    let failures = rows
        .iter()
        .filter(|r| !r.ok && r.kernels != "candle")
        .count();
    let candle_off = rows
        .iter()
        .filter(|r| !r.ok && r.kernels == "candle")
        .count();
    Ok(KernelCheck {
        candle_off,
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}").to_lowercase(),
        rows,
        failures,
        timings: Vec::new(),
    })
}

/// Forward + backward time of ResNet-50's convolution shapes at `batch` (the stem, a bottleneck's 1×1 and 3×3, a
/// strided 3×3 and a 1×1 projection), both implementations, mean of `iters` after one warm-up.
pub fn time_convs(
    device: &Device,
    dtype: DType,
    batch: usize,
    iters: usize,
) -> Result<Vec<ConvTiming>> {
    // c, h (= w), o, k, stride, pad
    const LAYERS: &[[usize; 6]] = &[
        [3, 224, 64, 7, 2, 3],
        [64, 56, 64, 1, 1, 0],
        [64, 56, 64, 3, 1, 1],
        [128, 56, 128, 3, 2, 1],
        [256, 56, 512, 1, 2, 0],
        [512, 7, 512, 3, 1, 1],
    ];
    let mut out = Vec::new();
    for (i, &[c, h, o, k, s, p]) in LAYERS.iter().enumerate() {
        let seed = 400 + 3 * i as u64;
        let x = rand_tensor(&[batch, c, h, h], seed, dtype)?.to_device(device)?;
        let w = (rand_tensor(&[o, c, k, k], seed + 1, dtype)?.to_device(device)? * 0.05)?;
        let ho = (h + 2 * p - k) / s + 1;
        let r = rand_tensor(&[batch, o, ho, ho], seed + 2, dtype)?.to_device(device)?;
        let nhwc = channels_last(device, dtype, KernelImpl::Ebv);
        let variants: &[(KernelImpl, bool)] = if nhwc {
            &[
                (KernelImpl::Ebv, false),
                (KernelImpl::Candle, false),
                (KernelImpl::Ebv, true),
            ]
        } else {
            &[(KernelImpl::Ebv, false), (KernelImpl::Candle, false)]
        };
        for &(imp, nhwc) in variants {
            // Channels-last: the operands stored NHWC / OHWI, as the model keeps activations on a GPU.
            let (x, w, r) = if nhwc {
                (
                    to_nhwc(&x)?.contiguous()?,
                    to_nhwc(&w)?.contiguous()?,
                    to_nhwc(&r)?.contiguous()?,
                )
            } else {
                (x.clone(), w.clone(), r.clone())
            };
            let xv = Var::from_tensor(&x)?;
            let wv = Var::from_tensor(&w)?;
            let step = || -> Result<()> {
                let y = if nhwc {
                    conv2d_nhwc(xv.as_tensor(), wv.as_tensor(), s, p)?
                } else {
                    conv2d(xv.as_tensor(), wv.as_tensor(), s, p, imp)?
                };
                let g = (y * &r)?.sum_all()?.backward()?;
                if g.get(xv.as_tensor()).is_none() || g.get(wv.as_tensor()).is_none() {
                    bail!("time_convs: missing gradient");
                }
                Ok(())
            };
            // One layer that cannot run (candle lacks some dtypes on some devices) must not hide the others.
            let timed = || -> Result<f64> {
                step()?;
                device.synchronize()?;
                let t = Instant::now();
                for _ in 0..iters.max(1) {
                    step()?;
                }
                device.synchronize()?;
                Ok(t.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64)
            };
            let (ms, error) = match timed() {
                Ok(ms) => (ms, None),
                Err(e) => (f64::NAN, Some(e.to_string())),
            };
            out.push(ConvTiming {
                case: format!("x[{batch},{c},{h},{h}] w[{o},{c},{k},{k}] s{s} p{p}"),
                kernels: if nhwc {
                    "ebv-nhwc".to_string()
                } else {
                    imp_name(imp).to_string()
                },
                ms_forward_backward: ms,
                error,
            });
        }
    }
    Ok(out)
}

/// One row per output: its difference from the reference, or the error that stopped the op (a failure for this
/// crate's kernels, only a note for candle's).
fn compare(
    op: &str,
    case: &str,
    imp: KernelImpl,
    got: Result<Vec<Tensor>>,
    want: &[Tensor],
    names: &[&str],
    tol: f64,
) -> Vec<KernelCheckRow> {
    let row = |name: &str, rel_diff: f64, ok: bool, error: Option<String>| KernelCheckRow {
        op: op.to_string(),
        case: case.to_string(),
        kernels: imp_name(imp).to_string(),
        output: name.to_string(),
        rel_diff,
        tol,
        ok,
        error,
    };
    match got {
        Ok(got) => names
            .iter()
            .enumerate()
            .map(|(i, name)| match (got.get(i), want.get(i)) {
                (Some(g), Some(w)) => {
                    let d = max_rel_diff(g, w);
                    row(name, d, d <= tol, None)
                }
                _ => row(name, f64::NAN, false, Some("missing output".into())),
            })
            .collect(),
        Err(e) => names
            .iter()
            .map(|name| row(name, f64::NAN, imp != KernelImpl::Ebv, Some(e.to_string())))
            .collect(),
    }
}

/// `[N,C,H,W]` → `[N,H,W,C]` (also `[O,C,K,K]` → `[O,K,K,C]`).
fn to_nhwc(t: &Tensor) -> Result<Tensor> {
    t.permute((0, 2, 3, 1))
}

/// Channels-last BatchNorm between NCHW tensors (the statistics dropped).
fn bn_nhwc(relu: bool) -> impl Fn(&[Tensor]) -> Result<Tensor> {
    move |t: &[Tensor]| {
        batch_norm_train_nhwc(&to_nhwc(&t[0])?, &t[1], &t[2], 1e-5, relu)?
            .0
            .permute((0, 3, 1, 2))
    }
}

/// Rows of the channels-last ops, named so in `kernels`.
fn nhwc_rows(rows: Vec<KernelCheckRow>) -> Vec<KernelCheckRow> {
    rows.into_iter()
        .map(|r| KernelCheckRow {
            kernels: "ebv-nhwc".into(),
            ..r
        })
        .collect()
}

fn imp_name(imp: KernelImpl) -> &'static str {
    match imp {
        KernelImpl::Ebv => "ebv",
        KernelImpl::Candle => "candle",
    }
}

/// `[f(inputs), d(sum(f·r))/d input…]` computed on `device` in `dtype`, returned on the CPU in f64.
fn outputs_and_grads(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    r: &Tensor,
    device: &Device,
    dtype: DType,
) -> Result<Vec<Tensor>> {
    outputs_and_grads_in(f, inputs, r, device, &vec![dtype; inputs.len()])
}

/// As [`outputs_and_grads`], input i in `dtypes[i]`; r in the first input's dtype.
fn outputs_and_grads_in(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    r: &Tensor,
    device: &Device,
    dtypes: &[DType],
) -> Result<Vec<Tensor>> {
    let Some(&dtype) = dtypes.first() else {
        bail!("check_kernels: no inputs");
    };
    let vars = inputs
        .iter()
        .zip(dtypes)
        .map(|(t, &dt)| Var::from_tensor(&t.to_dtype(dt)?.to_device(device)?))
        .collect::<Result<Vec<_>>>()?;
    let tensors = vars
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect::<Vec<_>>();
    let y = f(&tensors)?;
    let r = r.to_dtype(dtype)?.to_device(device)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let mut out = vec![y.to_device(&Device::Cpu)?.to_dtype(DType::F64)?];
    for (i, t) in tensors.iter().enumerate() {
        match grads.get(t) {
            Some(g) => out.push(g.to_device(&Device::Cpu)?.to_dtype(DType::F64)?),
            None => bail!("check_kernels: no gradient for input {i}"),
        }
    }
    Ok(out)
}

/// xorshift64*: deterministic, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// Uniform [-1, 1) values on the CPU, rounded to `dtype`.
pub(crate) fn rand_tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let len = dims.iter().product::<usize>();
    let v = (0..len).map(|_| rng.uniform()).collect::<Vec<_>>();
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

/// Each H×W plane a random permutation of (j − plane/2)/128, j < plane ≤ 512: distinct within the plane and exact
/// in bf16 (at most 8 significant bits).
fn plane_distinct_tensor(dims: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let &[n, c, h, w] = dims else {
        bail!("plane_distinct_tensor: expected [N,C,H,W], got {dims:?}");
    };
    let plane = h * w;
    if plane > 512 {
        bail!("plane_distinct_tensor: plane of {plane} values cannot be distinct in bf16");
    }
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(n * c * plane);
    for _ in 0..n * c {
        let mut p = (0..plane)
            .map(|j| (j as f64 - (plane / 2) as f64) / 128.0)
            .collect::<Vec<_>>();
        for i in (1..plane).rev() {
            p.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        v.extend(p);
    }
    Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)
}

pub(crate) fn to_vec(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap_or_default()
}

/// max |a − b| / max(max |b|, 1e-30): a difference relative to the scale of the reference. Shapes that differ
/// count as infinitely different.
pub(crate) fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    if a.dims() != b.dims() {
        return f64::INFINITY;
    }
    let (a, b) = (to_vec(a), to_vec(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| {
        m.max((x - y).abs())
            .max(if x.is_nan() { f64::INFINITY } else { 0.0 })
    }) / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_kernels_pass_their_own_check_in_f32_and_f64() {
        for dtype in [DType::F32, DType::F64] {
            let report = check_kernels(&Device::Cpu, dtype).unwrap();
            let bad: Vec<_> = report.rows.iter().filter(|r| !r.ok).collect();
            assert!(bad.is_empty(), "{dtype:?}: {bad:#?}");
            // conv: 9 cases × 2 impls × 3 outputs; pool 4 × 2 × 2; add_relu 2 × 2 × 3; bn 3 × 2 relu × 2 × 4.
            assert_eq!(report.rows.len(), 54 + 16 + 12 + 48);
            assert_eq!(report.failures, 0);
        }
    }

    #[test]
    fn the_comparison_flags_a_wrong_result() {
        let want = Tensor::new(&[1.0f64, -2.0, 4.0], &Device::Cpu).unwrap();
        let close = Tensor::new(&[1.0f64, -2.0, 4.00004], &Device::Cpu).unwrap();
        let off = Tensor::new(&[1.0f64, -2.1, 4.0], &Device::Cpu).unwrap();
        let nan = Tensor::new(&[f64::NAN, -2.0, 4.0], &Device::Cpu).unwrap();
        let short = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        assert!((max_rel_diff(&close, &want) - 1e-5).abs() < 1e-9);
        assert!((max_rel_diff(&off, &want) - 0.025).abs() < 1e-9);
        assert!(max_rel_diff(&nan, &want).is_infinite());
        assert!(max_rel_diff(&short, &want).is_infinite());
    }

    #[test]
    fn an_op_error_fails_ours_and_is_noted_for_candle() {
        // A max-pool whose padding exceeds half the kernel is an error on both paths.
        let x = plane_distinct_tensor(&[1, 1, 4, 4], 1, DType::F64).unwrap();
        let f = |imp: KernelImpl| move |t: &[Tensor]| max_pool2d(&t[0], 2, 1, 2, imp);
        let r = rand_tensor(&[1, 1, 7, 7], 2, DType::F64).unwrap();
        let want = vec![r.clone(), x.clone()];
        for imp in [KernelImpl::Ebv, KernelImpl::Candle] {
            let got = outputs_and_grads(
                &f(imp),
                std::slice::from_ref(&x),
                &r,
                &Device::Cpu,
                DType::F64,
            );
            let rows = compare("max_pool2d", "bad", imp, got, &want, &["y", "dx"], 1e-9);
            assert_eq!(rows.len(), 2);
            for row in rows {
                assert!(row.error.is_some() && row.rel_diff.is_nan());
                assert_eq!(row.ok, imp == KernelImpl::Candle, "{row:?}");
            }
        }
        // Results are compared output by output.
        let off = (&x + 0.5).unwrap();
        let rows = compare(
            "t",
            "t",
            KernelImpl::Ebv,
            Ok(vec![x.clone(), off]),
            &[x.clone(), x.clone()],
            &["a", "b"],
            1e-9,
        );
        assert!(rows[0].ok && !rows[1].ok && rows[1].error.is_none());
    }

    #[test]
    fn half_types_on_the_cpu_are_refused() {
        let e = check_kernels(&Device::Cpu, DType::BF16).unwrap_err();
        assert!(e.to_string().contains("CUDA"), "{e}");
    }

    #[test]
    fn pool_inputs_are_distinct_per_plane_and_exact_in_bf16() {
        let t = plane_distinct_tensor(&[2, 3, 9, 11], 5, DType::F64).unwrap();
        let b = t
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        assert_eq!(to_vec(&t), to_vec(&b));
        for plane in to_vec(&t).chunks(99) {
            let mut p = plane.to_vec();
            p.sort_by(f64::total_cmp);
            p.dedup();
            assert_eq!(p.len(), 99);
        }
    }
}
