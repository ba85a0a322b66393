//! Optimisers (SGD with momentum/Nesterov/weight decay, AdamW) and global-norm gradient clipping,
//! with PyTorch's update rules, for candle `Var`s.
//!
//! Semantics follow `torch.optim.SGD`, `torch.optim.AdamW` (single-tensor path, `amsgrad=False`,
//! `maximize=False`) and `torch.nn.utils.clip_grad_norm_`:
//! - a parameter without a gradient in the `GradStore` is skipped entirely: its state is neither
//!   created nor advanced (PyTorch's `p.grad is None`). So an SGD momentum buffer starts at the
//!   parameter's first gradient, and each AdamW parameter keeps its own step count for the bias
//!   corrections, as PyTorch does;
//! - `Param::weight_decay == false` means weight decay 0 for that parameter;
//! - all arithmetic is done in the parameter's dtype. Results agree with PyTorch to rounding: PyTorch's
//!   CPU kernels fuse some multiply-adds (`add(alpha=..)`), so a step can differ by an ulp.
//!
//! State lives in immutable tensors that are replaced on every step, and every input is detached
//! first; otherwise each new state tensor would hold the autograd graph of the previous one and
//! memory would grow with the number of steps.
//!
//! Checkpoint format ([`Optimizer::state_tensors`] / [`Optimizer::load_state`]), each state tensor
//! with the shape and dtype of its parameter:
//! - `"step"`: f64, shape `[1]`, the number of `step()` calls so far;
//! - SGD with momentum ≠ 0: `"momentum_buffer.<name>"`;
//! - AdamW: `"exp_avg.<name>"`, `"exp_avg_sq.<name>"` and `"step.<name>"` (f64 `[1]`, the updates
//!   this parameter has received; it differs from `"step"` only for parameters that missed gradients).
//!
//! A parameter that never had a gradient has no keys. Hyper-parameters are not saved: they come
//! from the configuration the optimiser was built with.

use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{bail, DType, Device, Result, Tensor, Var};

use crate::kernels::{sgd_momentum_update, SgdStep};

/// A trainable tensor and whether weight decay applies to it.
pub struct Param {
    /// Unique name, used for the checkpoint keys (e.g. `layer1.0.conv1.weight`).
    pub name: String,
    pub var: Var,
    /// `false` for parameters excluded from decay (typically BatchNorm affine and biases).
    pub weight_decay: bool,
}

/// `torch.optim.SGD` hyper-parameters (the learning rate is passed to every step).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub dampening: f64,
}

/// `torch.optim.AdamW` hyper-parameters (the learning rate is passed to every step).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct AdamState {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

enum Kind {
    Sgd {
        cfg: SgdConfig,
        /// One slot per parameter, `None` until its first gradient (and always with momentum 0).
        momentum_buffers: Vec<Option<Tensor>>,
    },
    AdamW {
        cfg: AdamWConfig,
        state: Vec<Option<AdamState>>,
    },
}

/// SGD or AdamW over a fixed list of parameters.
pub struct Optimizer {
    params: Vec<Param>,
    kind: Kind,
    /// Number of `step()` calls, saved as `"step"`.
    steps: u64,
}

const STEP_KEY: &str = "step";
const MOMENTUM_PREFIX: &str = "momentum_buffer.";
const EXP_AVG_PREFIX: &str = "exp_avg.";
const EXP_AVG_SQ_PREFIX: &str = "exp_avg_sq.";
const PARAM_STEP_PREFIX: &str = "step.";
const STATE_PREFIXES: [&str; 4] = [
    MOMENTUM_PREFIX,
    EXP_AVG_PREFIX,
    EXP_AVG_SQ_PREFIX,
    PARAM_STEP_PREFIX,
];

impl Optimizer {
    /// SGD. The configuration is checked by the first `step()` (PyTorch's constructor checks).
    pub fn sgd(params: Vec<Param>, cfg: SgdConfig) -> Optimizer {
        let momentum_buffers = params.iter().map(|_| None).collect();
        Optimizer {
            params,
            kind: Kind::Sgd {
                cfg,
                momentum_buffers,
            },
            steps: 0,
        }
    }

    /// AdamW. The configuration is checked by the first `step()`.
    pub fn adamw(params: Vec<Param>, cfg: AdamWConfig) -> Optimizer {
        let state = params.iter().map(|_| None).collect();
        Optimizer {
            params,
            kind: Kind::AdamW { cfg, state },
            steps: 0,
        }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One update with learning rate `lr`. Parameters without a gradient in `grads` are skipped.
    ///
    /// On error (bad configuration, gradient of the wrong shape or dtype) parameters earlier in
    /// the list may already have been updated; treat the run as failed.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.check(lr)?;
        for (i, param) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            let p = param.var.as_tensor().detach();
            let g = grad.detach();
            if g.shape() != p.shape() || g.dtype() != p.dtype() {
                bail!(
                    "optimiser: gradient of {} is {:?} {:?}, the parameter is {:?} {:?}",
                    param.name,
                    g.dtype(),
                    g.shape(),
                    p.dtype(),
                    p.shape()
                )
            }
            let decay = |wd: f64| if param.weight_decay { wd } else { 0.0 };
            let new_p = match &mut self.kind {
                Kind::Sgd {
                    cfg,
                    momentum_buffers,
                } => sgd_update(
                    cfg,
                    decay(cfg.weight_decay),
                    lr,
                    &p,
                    g,
                    &mut momentum_buffers[i],
                )?,
                Kind::AdamW { cfg, state } => {
                    adamw_update(cfg, decay(cfg.weight_decay), lr, &p, &g, &mut state[i])?
                }
            };
            param.var.set(&new_p)?;
        }
        self.steps += 1;
        Ok(())
    }

    /// The optimiser state as named tensors (see the module docs for the keys). `"step"` is an f64
    /// tensor of shape `[1]`; it lives on the CPU, the other tensors on their parameter's device.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.check_names()?;
        let mut out = vec![(STEP_KEY.to_string(), step_tensor(self.steps)?)];
        match &self.kind {
            Kind::Sgd {
                momentum_buffers, ..
            } => {
                for (param, buf) in self.params.iter().zip(momentum_buffers) {
                    if let Some(buf) = buf {
                        out.push((format!("{MOMENTUM_PREFIX}{}", param.name), buf.clone()));
                    }
                }
            }
            Kind::AdamW { state, .. } => {
                for (param, st) in self.params.iter().zip(state) {
                    if let Some(st) = st {
                        let name = &param.name;
                        out.push((format!("{EXP_AVG_PREFIX}{name}"), st.exp_avg.clone()));
                        out.push((format!("{EXP_AVG_SQ_PREFIX}{name}"), st.exp_avg_sq.clone()));
                        out.push((format!("{PARAM_STEP_PREFIX}{name}"), step_tensor(st.step)?));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Replaces the state with the one in `tensors` (the inverse of [`Self::state_tensors`]).
    ///
    /// Keys outside the optimiser's namespace (`step`, `momentum_buffer.*`, `exp_avg.*`,
    /// `exp_avg_sq.*`, `step.*`) are ignored, so the map may also hold model weights. Inside it,
    /// an unknown parameter name, a key this optimiser kind does not use, a partial AdamW entry, or
    /// a shape/dtype differing from the parameter's is an error that names the key. Tensors are
    /// moved to their parameter's device. On error the current state is left unchanged.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.check_names()?;
        let names: HashSet<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let uses_momentum = matches!(&self.kind, Kind::Sgd { cfg, .. } if cfg.momentum != 0.0);
        let is_adamw = matches!(&self.kind, Kind::AdamW { .. });
        for key in tensors.keys() {
            let Some((prefix, name)) = STATE_PREFIXES
                .iter()
                .find_map(|pre| key.strip_prefix(pre).map(|name| (*pre, name)))
            else {
                continue;
            };
            let used = match prefix {
                MOMENTUM_PREFIX => uses_momentum,
                _ => is_adamw,
            };
            if !used {
                bail!("optimiser state: unexpected key {key} for this optimiser kind")
            }
            if !names.contains(name) {
                bail!("optimiser state: key {key} names no parameter of this optimiser")
            }
        }
        let Some(step) = tensors.get(STEP_KEY) else {
            bail!("optimiser state: missing key {STEP_KEY}")
        };
        let steps = read_step(STEP_KEY, step)?;

        match &mut self.kind {
            Kind::Sgd {
                momentum_buffers, ..
            } => {
                let mut loaded = Vec::with_capacity(self.params.len());
                for param in &self.params {
                    let key = format!("{MOMENTUM_PREFIX}{}", param.name);
                    loaded.push(match tensors.get(&key) {
                        Some(t) => Some(state_like(&key, t, param)?),
                        None => None,
                    });
                }
                *momentum_buffers = loaded;
            }
            Kind::AdamW { state, .. } => {
                let mut loaded = Vec::with_capacity(self.params.len());
                for param in &self.params {
                    let keys = [EXP_AVG_PREFIX, EXP_AVG_SQ_PREFIX, PARAM_STEP_PREFIX]
                        .map(|pre| format!("{pre}{}", param.name));
                    let found = keys.clone().map(|k| tensors.get(&k));
                    if found.iter().all(Option::is_none) {
                        loaded.push(None);
                        continue;
                    }
                    let [Some(m), Some(v), Some(s)] = found else {
                        let missing = keys
                            .iter()
                            .zip(found)
                            .filter(|(_, t)| t.is_none())
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ");
                        bail!("optimiser state: missing key(s) {missing}")
                    };
                    loaded.push(Some(AdamState {
                        step: read_step(&keys[2], s)?,
                        exp_avg: state_like(&keys[0], m, param)?,
                        exp_avg_sq: state_like(&keys[1], v, param)?,
                    }));
                }
                *state = loaded;
            }
        }
        self.steps = steps;
        Ok(())
    }

    /// PyTorch's constructor checks, plus unique parameters (a duplicate would be updated twice).
    fn check(&self, lr: f64) -> Result<()> {
        if !non_negative(lr) {
            bail!("optimiser: invalid learning rate {lr}")
        }
        match &self.kind {
            Kind::Sgd { cfg, .. } => {
                if !non_negative(cfg.momentum)
                    || !non_negative(cfg.weight_decay)
                    || !cfg.dampening.is_finite()
                {
                    bail!("optimiser: invalid SGD configuration {cfg:?}")
                }
                if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
                    bail!("optimiser: Nesterov momentum requires a momentum and zero dampening")
                }
            }
            Kind::AdamW { cfg, .. } => {
                let beta_ok = |b: f64| (0.0..1.0).contains(&b);
                if !beta_ok(cfg.beta1)
                    || !beta_ok(cfg.beta2)
                    || !non_negative(cfg.eps)
                    || !non_negative(cfg.weight_decay)
                {
                    bail!("optimiser: invalid AdamW configuration {cfg:?}")
                }
            }
        }
        self.check_names()
    }

    fn check_names(&self) -> Result<()> {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for p in &self.params {
            if !names.insert(p.name.as_str()) {
                bail!("optimiser: parameter name {} appears twice", p.name)
            }
            if !ids.insert(p.var.as_tensor().id()) {
                bail!(
                    "optimiser: parameter {} is the same Var as an earlier one",
                    p.name
                )
            }
        }
        Ok(())
    }
}

/// One `torch.optim.SGD` update of one parameter; returns the new parameter value.
fn sgd_update(
    cfg: &SgdConfig,
    wd: f64,
    lr: f64,
    p: &Tensor,
    g: Tensor,
    buf: &mut Option<Tensor>,
) -> Result<Tensor> {
    if cfg.momentum != 0.0 {
        if let Some(b) = buf.as_ref() {
            let step = SgdStep {
                lr,
                weight_decay: wd,
                momentum: cfg.momentum,
                dampening: cfg.dampening,
                nesterov: cfg.nesterov,
            };
            if let Some((new_buf, new_p)) = sgd_momentum_update(p, &g, b, step)? {
                *buf = Some(new_buf);
                return Ok(new_p);
            }
        }
    }
    let mut d_p = if wd != 0.0 {
        (g + p.affine(wd, 0.0)?)?
    } else {
        g
    };
    if cfg.momentum != 0.0 {
        let new_buf = match buf.take() {
            // A copy, so the buffer never shares storage with a gradient the caller still holds.
            None => d_p.copy()?,
            Some(b) => {
                let damped = if cfg.dampening != 0.0 {
                    d_p.affine(1.0 - cfg.dampening, 0.0)?
                } else {
                    d_p.clone()
                };
                (b.affine(cfg.momentum, 0.0)? + damped)?
            }
        };
        d_p = if cfg.nesterov {
            (d_p + new_buf.affine(cfg.momentum, 0.0)?)?
        } else {
            new_buf.clone()
        };
        *buf = Some(new_buf);
    }
    p - d_p.affine(lr, 0.0)?
}

/// One `torch.optim.AdamW` update of one parameter; returns the new parameter value.
fn adamw_update(
    cfg: &AdamWConfig,
    wd: f64,
    lr: f64,
    p: &Tensor,
    g: &Tensor,
    state: &mut Option<AdamState>,
) -> Result<Tensor> {
    let st = match state {
        Some(st) => st,
        None => state.insert(AdamState {
            step: 0,
            exp_avg: g.zeros_like()?,
            exp_avg_sq: g.zeros_like()?,
        }),
    };
    st.step += 1;
    let p = if wd != 0.0 {
        p.affine(1.0 - lr * wd, 0.0)?
    } else {
        p.clone()
    };
    // exp_avg.lerp_(grad, 1 - beta1), with the two formulas torch's lerp switches between.
    let w = 1.0 - cfg.beta1;
    st.exp_avg = if w < 0.5 {
        (&st.exp_avg + (g - &st.exp_avg)?.affine(w, 0.0)?)?
    } else {
        (g - (g - &st.exp_avg)?.affine(1.0 - w, 0.0)?)?
    };
    st.exp_avg_sq =
        (st.exp_avg_sq.affine(cfg.beta2, 0.0)? + (g.affine(1.0 - cfg.beta2, 0.0)? * g)?)?;

    // powf rather than powi: Python's `beta ** step` is C pow on floats.
    let step = st.step as f64;
    let bias_correction1 = 1.0 - cfg.beta1.powf(step);
    let bias_correction2 = 1.0 - cfg.beta2.powf(step);
    let step_size = lr / bias_correction1;
    let denom = (st
        .exp_avg_sq
        .sqrt()?
        .affine(1.0 / bias_correction2.sqrt(), 0.0)?
        + cfg.eps)?;
    p - (&st.exp_avg / denom)?.affine(step_size, 0.0)?
}

/// `x ≥ 0`, false for NaN.
fn non_negative(x: f64) -> bool {
    x >= 0.0
}

fn step_tensor(step: u64) -> Result<Tensor> {
    Tensor::new(&[step as f64], &Device::Cpu)
}

fn read_step(key: &str, t: &Tensor) -> Result<u64> {
    if t.elem_count() != 1 {
        bail!(
            "optimiser state: {key} should hold one value, it has shape {:?}",
            t.shape()
        )
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
    if !(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53)) {
        bail!("optimiser state: {key} = {v} is not a step count")
    }
    Ok(v as u64)
}

/// Checks a loaded state tensor against its parameter and moves it to the parameter's device.
fn state_like(key: &str, t: &Tensor, param: &Param) -> Result<Tensor> {
    let p = param.var.as_tensor();
    if t.shape() != p.shape() || t.dtype() != p.dtype() {
        bail!(
            "optimiser state: {key} is {:?} {:?}, parameter {} is {:?} {:?}",
            t.dtype(),
            t.shape(),
            param.name,
            p.dtype(),
            p.shape()
        )
    }
    t.to_device(p.device())
}

/// Scales the gradients of `params` in `grads` so that their global L2 norm is at most `max_norm`,
/// like `torch.nn.utils.clip_grad_norm_`: `coef = max_norm / (total + 1e-6)`, applied when
/// `coef < 1`. Returns the norm before clipping (0 when no parameter has a gradient).
///
/// The norm is the L2 norm of the per-tensor L2 norms, as in PyTorch, computed in f64 from
/// per-tensor sums in the gradient's dtype (f32 for f16/bf16), with one device-to-host transfer.
/// Deviation: when the norm is NaN or infinite the gradients are left untouched (PyTorch would
/// turn them into NaN or zeros); the caller should skip the step.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[Param], max_norm: f64) -> Result<f64> {
    if !non_negative(max_norm) {
        bail!("clip_grad_norm: invalid max_norm {max_norm}")
    }
    let mut norms_sq = Vec::new();
    for param in params {
        let Some(g) = grads.get(param.var.as_tensor()) else {
            continue;
        };
        let g = match g.dtype() {
            DType::F16 | DType::BF16 => g.detach().to_dtype(DType::F32)?,
            _ => g.detach(),
        };
        // sqrt then square again (rather than the plain sum of squares) to follow torch's
        // norm-of-norms rounding.
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F64)?;
        norms_sq.push(norm.sqr()?);
    }
    if norms_sq.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&norms_sq, 0)?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()?;
    let coef = max_norm / (total + 1e-6);
    if total.is_finite() && coef < 1.0 {
        for param in params {
            let t = param.var.as_tensor();
            if let Some(g) = grads.get(t) {
                let scaled = g.detach().affine(coef, 0.0)?;
                grads.insert(t, scaled);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W0: [[f64; 3]; 2] = [[0.5, -1.0, 1.5], [2.0, -0.25, 0.75]];
    const B0: [f64; 3] = [0.1, -0.2, 0.3];
    const C0: [f64; 4] = [1.0, -2.0, 0.5, -0.5];
    const TW: [[f64; 3]; 2] = [[0.3, 0.1, -0.2], [0.5, 0.0, 1.0]];
    const TB: [f64; 3] = [0.05, 0.0, -0.1];
    const TC: [f64; 4] = [0.2, 0.2, -0.3, 0.1];

    /// Parameters w (decay), c (decay, no gradient on steps 0 and 5) and b (no decay).
    fn make_params() -> Result<Vec<Param>> {
        let dev = Device::Cpu;
        let param = |name: &str, t: Tensor, weight_decay| -> Result<Param> {
            Ok(Param {
                name: name.to_string(),
                var: Var::from_tensor(&t)?,
                weight_decay,
            })
        };
        Ok(vec![
            param("w", Tensor::new(&W0, &dev)?, true)?,
            param("c", Tensor::new(&C0, &dev)?, true)?,
            param("b", Tensor::new(&B0, &dev)?, false)?,
        ])
    }

    /// grad = p³ − target, the same element-wise arithmetic as the torch snippet, so both sides
    /// start every step from bitwise-equal gradients.
    fn make_grads(params: &[Param], step: u64) -> Result<GradStore> {
        let dev = Device::Cpu;
        let targets = [
            Tensor::new(&TW, &dev)?,
            Tensor::new(&TC, &dev)?,
            Tensor::new(&TB, &dev)?,
        ];
        let mut grads = GradStore::default();
        for (p, t) in params.iter().zip(targets) {
            if p.name == "c" && (step == 0 || step == 5) {
                continue;
            }
            let x = p.var.as_tensor().detach();
            grads.insert(p.var.as_tensor(), ((&x * &x)? * &x)?.sub(&t)?);
        }
        Ok(grads)
    }

    fn schedule() -> crate::train::schedule::Schedule {
        crate::train::schedule::Schedule {
            base_lr: 0.1,
            warmup_steps: 3,
            warmup_start_factor: 0.01,
            total_steps: 12,
            min_lr: 1e-4,
        }
    }

    fn run(opt: &mut Optimizer, steps: std::ops::Range<u64>) -> Result<()> {
        let sched = schedule();
        for step in steps {
            let grads = make_grads(opt.params(), step)?;
            opt.step(&grads, sched.lr(step))?;
        }
        Ok(())
    }

    fn values(params: &[Param]) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for p in params {
            out.extend(p.var.as_tensor().flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{what}[{i}]: got {g:e}, want {w:e}, diff {:e}",
                (g - w).abs()
            );
        }
    }

    /// torch's output is printed as [w, b, c]; our parameter order is w, c, b.
    fn torch_order(w: [[f64; 3]; 2], b: [f64; 3], c: [f64; 4]) -> Vec<f64> {
        let mut v: Vec<f64> = w.iter().flatten().copied().collect();
        v.extend(c);
        v.extend(b);
        v
    }

    // Reference from torch 2.15.0 (/tmp/torchenv/bin/python), printed as [w, b, c]:
    //
    // import torch
    // torch.set_default_dtype(torch.float64)
    // W0 = [[0.5, -1.0, 1.5], [2.0, -0.25, 0.75]]; B0 = [0.1, -0.2, 0.3]; C0 = [1.0, -2.0, 0.5, -0.5]
    // TW = [[0.3, 0.1, -0.2], [0.5, 0.0, 1.0]]; TB = [0.05, 0.0, -0.1]; TC = [0.2, 0.2, -0.3, 0.1]
    // def run(make_opt):
    //     w, b, c = (torch.tensor(x, requires_grad=True) for x in (W0, B0, C0))
    //     opt = make_opt([{"params": [w, c]}, {"params": [b], "weight_decay": 0.0}])
    //     scheds = [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=3),
    //               torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12 - 3, eta_min=1e-4)]
    //     s = torch.optim.lr_scheduler.SequentialLR(opt, scheds, milestones=[3])
    //     for step in range(10):
    //         with torch.no_grad():
    //             for p, t in ((w, TW), (b, TB), (c, TC)):
    //                 p.grad = p * p * p - torch.tensor(t)
    //             if step in (0, 5):
    //                 c.grad = None  # c has no gradient on steps 0 and 5
    //         opt.step(); s.step()
    //     print([x.tolist() for x in (w, b, c)])
    // run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=False))
    // run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True))
    // run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.0, weight_decay=1e-2))
    // run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, dampening=0.25, weight_decay=1e-2))
    // run(lambda g: torch.optim.AdamW(g, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2))
    fn torch_sgd_momentum() -> Vec<f64> {
        torch_order(
            [
                [0.7528385611946082, 0.5564465234949317, -1.1974737602253727],
                [
                    -0.04002050553923173,
                    -0.20775376890030578,
                    1.0378259774805199,
                ],
            ],
            [
                0.2215515370061774,
                -0.18073188178814023,
                0.0009576469287082747,
            ],
            [
                0.27968026135679747,
                1.3131250035988733,
                -0.14223111902565605,
                -0.17236281138956086,
            ],
        )
    }
    fn torch_sgd_nesterov() -> Vec<f64> {
        torch_order(
            [
                [0.7315756594993499, 0.503545468174858, -1.0791810841534035],
                [-0.6576597179754113, -0.20380736804370667, 1.012398267137039],
            ],
            [
                0.23550271340357332,
                -0.17867780620879617,
                -0.031106290325909326,
            ],
            [
                0.33790670699471087,
                1.2156663010995465,
                -0.23439029212080828,
                -0.13604869473773534,
            ],
        )
    }
    fn torch_sgd_plain() -> Vec<f64> {
        torch_order(
            [
                [0.5806944123540648, -0.620536032322977, 0.6745655719330865],
                [0.9193067735843641, -0.23986227987463635, 0.9518641209499118],
            ],
            [
                0.12852495291532542,
                -0.19543987974410856,
                0.22966144327938573,
            ],
            [
                0.7573066906588874,
                -0.7662423709615992,
                0.31086418456189074,
                -0.40040826123606793,
            ],
        )
    }
    fn torch_sgd_dampening() -> Vec<f64> {
        torch_order(
            [
                [0.7312955962924047, 0.32486686361789635, -1.4268847988151427],
                [-0.8362527411363899, -0.2161313382490747, 1.1159240695025263],
            ],
            [
                0.1963470617530104,
                -0.18465990647721015,
                0.06210377258867386,
            ],
            [
                0.35390527342755174,
                1.6881680411618942,
                -0.024931859873072025,
                -0.22857126974700517,
            ],
        )
    }
    fn torch_adamw() -> Vec<f64> {
        torch_order(
            [
                [0.7507861962179345, -0.45943752477365696, 0.9392483062904364],
                [1.4313530045649518, 0.1536249532174659, 1.1318993317124562],
            ],
            [
                0.4703204168078039,
                0.15968066995504407,
                -0.27655343080992595,
            ],
            [
                0.5598721331107066,
                -1.5076097154120671,
                0.008831850552163973,
                -0.0247275225487437,
            ],
        )
    }

    fn sgd_cfg(momentum: f64, nesterov: bool, dampening: f64) -> SgdConfig {
        SgdConfig {
            momentum,
            nesterov,
            weight_decay: 1e-2,
            dampening,
        }
    }

    fn adamw_cfg() -> AdamWConfig {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }

    // Measured: ≤ 8e-16 from torch (which fuses some multiply-adds; p³ amplifies it). 1e-13 leaves
    // room for other SIMD paths and is still ~1e9 times tighter than a formula mistake (a missed
    // weight decay alone moves b by ~1e-4).
    const TOL: f64 = 1e-13;

    #[test]
    fn sgd_matches_torch() -> Result<()> {
        let cases = [
            (sgd_cfg(0.9, false, 0.0), torch_sgd_momentum(), "momentum"),
            (sgd_cfg(0.9, true, 0.0), torch_sgd_nesterov(), "nesterov"),
            (sgd_cfg(0.0, false, 0.0), torch_sgd_plain(), "plain"),
            (
                sgd_cfg(0.9, false, 0.25),
                torch_sgd_dampening(),
                "dampening",
            ),
        ];
        for (cfg, want, what) in cases {
            let mut opt = Optimizer::sgd(make_params()?, cfg);
            run(&mut opt, 0..10)?;
            assert_close(&values(opt.params())?, &want, TOL, what);
        }
        Ok(())
    }

    #[test]
    fn adamw_matches_torch() -> Result<()> {
        let mut opt = Optimizer::adamw(make_params()?, adamw_cfg());
        run(&mut opt, 0..10)?;
        assert_close(&values(opt.params())?, &torch_adamw(), TOL, "adamw");
        // c missed two gradients, so its bias-correction count is behind the global one.
        let state: HashMap<_, _> = opt.state_tensors()?.into_iter().collect();
        let step = |k: &str| -> Result<Vec<f64>> { state[k].to_vec1::<f64>() };
        assert_eq!(step("step")?, [10.0]);
        assert_eq!(step("step.w")?, [10.0]);
        assert_eq!(step("step.c")?, [8.0]);
        Ok(())
    }

    /// Save after 4 steps (through a real safetensors file), resume into fresh Vars, and check
    /// the remaining 6 steps are bitwise identical to the uninterrupted run.
    #[test]
    fn resume_is_bitwise_identical() -> Result<()> {
        type Make = fn(Vec<Param>) -> Optimizer;
        let optimisers: [(&str, Make); 3] = [
            ("sgd", |p| Optimizer::sgd(p, sgd_cfg(0.9, false, 0.0))),
            ("nesterov", |p| Optimizer::sgd(p, sgd_cfg(0.9, true, 0.0))),
            ("adamw", |p| Optimizer::adamw(p, adamw_cfg())),
        ];
        for (what, make) in optimisers {
            let mut straight = make(make_params()?);
            run(&mut straight, 0..10)?;

            let mut first = make(make_params()?);
            run(&mut first, 0..4)?;
            let path = std::env::temp_dir().join(format!(
                "trainmath-optim-{what}-{}.safetensors",
                std::process::id()
            ));
            let mut file: HashMap<String, Tensor> = first.state_tensors()?.into_iter().collect();
            for p in first.params() {
                file.insert(format!("model.{}", p.name), p.var.as_tensor().clone());
            }
            candle_core::safetensors::save(&file, &path)?;
            let loaded = candle_core::safetensors::load(&path, &Device::Cpu)?;
            std::fs::remove_file(&path)?;

            let mut params = make_params()?;
            for p in &mut params {
                p.var = Var::from_tensor(&loaded[&format!("model.{}", p.name)])?;
            }
            let mut resumed = make(params);
            resumed.load_state(&loaded)?;
            run(&mut resumed, 4..10)?;

            let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
            assert_eq!(
                bits(values(resumed.params())?),
                bits(values(straight.params())?),
                "{what}"
            );
            let state = |o: &Optimizer| -> Result<Vec<(String, Vec<u64>)>> {
                let mut s = Vec::new();
                for (k, t) in o.state_tensors()? {
                    s.push((k, bits(t.flatten_all()?.to_vec1::<f64>()?)));
                }
                Ok(s)
            };
            assert_eq!(state(&resumed)?, state(&straight)?, "{what} state");
        }
        Ok(())
    }

    #[test]
    fn load_state_rejects_bad_checkpoints() -> Result<()> {
        let mut opt = Optimizer::adamw(make_params()?, adamw_cfg());
        run(&mut opt, 0..2)?;
        let good: HashMap<String, Tensor> = opt.state_tensors()?.into_iter().collect();
        let before = opt.state_tensors()?;

        let expect_err = |opt: &mut Optimizer, map: HashMap<String, Tensor>, needle: &str| match opt
            .load_state(&map)
        {
            Ok(()) => panic!("loading should fail with {needle}"),
            Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle}"),
        };
        let mut m = good.clone();
        m.remove("exp_avg_sq.w");
        expect_err(&mut opt, m, "missing key(s) exp_avg_sq.w");
        let mut m = good.clone();
        m.remove("step");
        expect_err(&mut opt, m, "missing key step");
        let mut m = good.clone();
        m.insert(
            "exp_avg.w".into(),
            Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?,
        );
        expect_err(&mut opt, m, "exp_avg.w is F64 [3, 2]");
        let mut m = good.clone();
        m.insert(
            "exp_avg.w".into(),
            Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?,
        );
        expect_err(&mut opt, m, "exp_avg.w is F32");
        let mut m = good.clone();
        m.insert(
            "exp_avg.renamed".into(),
            Tensor::zeros(1, DType::F64, &Device::Cpu)?,
        );
        expect_err(&mut opt, m, "key exp_avg.renamed names no parameter");
        let mut m = good.clone();
        m.insert(
            "momentum_buffer.w".into(),
            Tensor::zeros((2, 3), DType::F64, &Device::Cpu)?,
        );
        expect_err(&mut opt, m, "unexpected key momentum_buffer.w");
        let mut m = good.clone();
        m.insert("step".into(), Tensor::new(&[1.5f64], &Device::Cpu)?);
        expect_err(&mut opt, m, "not a step count");

        // Failed loads left the state alone; foreign keys are ignored.
        let after = opt.state_tensors()?;
        assert_eq!(before.len(), after.len());
        for ((k1, t1), (k2, t2)) in before.iter().zip(&after) {
            assert_eq!(k1, k2);
            assert_eq!(
                t1.flatten_all()?.to_vec1::<f64>()?,
                t2.flatten_all()?.to_vec1::<f64>()?
            );
        }
        let mut m = good;
        m.insert(
            "conv1.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu)?,
        );
        opt.load_state(&m)?;

        // An SGD optimiser refuses AdamW state.
        let mut sgd = Optimizer::sgd(make_params()?, sgd_cfg(0.9, false, 0.0));
        let adam_state: HashMap<String, Tensor> = opt.state_tensors()?.into_iter().collect();
        expect_err(&mut sgd, adam_state, "unexpected key");
        Ok(())
    }

    #[test]
    fn invalid_configs_and_duplicates_are_errors() -> Result<()> {
        let grads = GradStore::default();
        let mut opt = Optimizer::sgd(make_params()?, sgd_cfg(0.9, true, 0.1));
        assert!(opt.step(&grads, 0.1).is_err());
        let mut opt = Optimizer::sgd(make_params()?, sgd_cfg(0.9, false, 0.0));
        assert!(opt.step(&grads, -1.0).is_err());
        let mut params = make_params()?;
        params[1].name = "w".into();
        let mut opt = Optimizer::sgd(params, sgd_cfg(0.9, false, 0.0));
        assert!(opt.step(&grads, 0.1).is_err());
        assert!(opt.state_tensors().is_err());
        let mut params = make_params()?;
        let w = params[0].var.clone();
        params[1].var = w;
        let mut opt = Optimizer::adamw(params, adamw_cfg());
        assert!(opt.step(&grads, 0.1).is_err());
        Ok(())
    }

    // Reference from torch 2.15.0:
    //
    // import torch
    // torch.set_default_dtype(torch.float64)
    // def clip(max_norm):
    //     w, b, c = (torch.tensor(x) for x in (W0, B0, C0))   # W0, B0, C0 as in the optimiser snippet
    //     for p, t in ((w, TW), (b, TB), (c, TC)):
    //         p.grad = p * p * p - torch.tensor(t)
    //     n = torch.nn.utils.clip_grad_norm_([w, c, b], max_norm)
    //     print(n.item(), [p.grad.flatten().tolist() for p in (w, c, b)])
    // clip(1.0); clip(100.0)
    const TORCH_NORM: f64 = 11.7786063121343;
    const TORCH_CLIPPED: [f64; 13] = [
        -0.014857444124121136,
        -0.09338964878019002,
        0.30351635853561754,
        0.6367476053194773,
        -0.0013265575110822444,
        -0.049082627910043045,
        0.06791974456741091,
        -0.6961773818159618,
        0.03608236430143705,
        -0.01910242815958432,
        -0.004160084354753919,
        -0.0006791974456741093,
        0.010782259450076482,
    ];
    const TORCH_UNCLIPPED: [f64; 13] = [
        -0.175,
        -1.1,
        3.575,
        7.5,
        -0.015625,
        -0.578125,
        0.8,
        -8.2,
        0.425,
        -0.225,
        -0.049,
        -0.008000000000000002,
        0.127,
    ];

    fn grad_values(grads: &GradStore, params: &[Param]) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for p in params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                out.extend(g.flatten_all()?.to_vec1::<f64>()?);
            }
        }
        Ok(out)
    }

    #[test]
    fn clip_grad_norm_matches_torch() -> Result<()> {
        let params = make_params()?;
        // Step 1: every parameter has a gradient.
        let mut grads = make_grads(&params, 1)?;
        let norm = clip_grad_norm(&mut grads, &params, 1.0)?;
        assert_close(&[norm], &[TORCH_NORM], 1e-15, "norm");
        assert_close(
            &grad_values(&grads, &params)?,
            &TORCH_CLIPPED,
            1e-15,
            "clipped",
        );

        let mut grads = make_grads(&params, 1)?;
        let norm = clip_grad_norm(&mut grads, &params, 100.0)?;
        assert_close(&[norm], &[TORCH_NORM], 1e-15, "norm");
        let got = grad_values(&grads, &params)?;
        assert_eq!(
            got, TORCH_UNCLIPPED,
            "below max_norm the gradients are untouched"
        );

        // Only the listed parameters count and get scaled; missing gradients are skipped.
        let mut grads = make_grads(&params, 0)?; // c has no gradient
        let b_before = grads
            .get(params[2].var.as_tensor())
            .map(|g| g.to_vec1::<f64>());
        let w_only = clip_grad_norm(&mut grads, &params[..2], 1.0)?;
        let w_norm = TORCH_UNCLIPPED[..6]
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt();
        assert_close(&[w_only], &[w_norm], 1e-15, "w-only norm");
        let b_after = grads
            .get(params[2].var.as_tensor())
            .map(|g| g.to_vec1::<f64>());
        assert_eq!(format!("{b_before:?}"), format!("{b_after:?}"));

        let mut empty = GradStore::default();
        assert_eq!(clip_grad_norm(&mut empty, &params, 1.0)?, 0.0);
        assert!(clip_grad_norm(&mut empty, &params, f64::NAN).is_err());
        Ok(())
    }

    #[test]
    fn clip_grad_norm_leaves_non_finite_gradients_alone() -> Result<()> {
        let params = make_params()?;
        let mut grads = make_grads(&params, 1)?;
        let w = params[0].var.as_tensor();
        let inf = Tensor::new(&[[f64::INFINITY, 0.0, 0.0], [0.0, 0.0, 0.0]], &Device::Cpu)?;
        grads.insert(w, inf);
        let norm = clip_grad_norm(&mut grads, &params, 1.0)?;
        assert_eq!(norm, f64::INFINITY);
        let b = grads
            .get(params[2].var.as_tensor())
            .map(|g| g.to_vec1::<f64>());
        assert_eq!(
            format!("{b:?}"),
            format!("{:?}", Some(Ok::<_, ()>(TORCH_UNCLIPPED[10..].to_vec())))
        );
        Ok(())
    }
}
