//! The EBV generator: drive the max off-diagonal |cos| of N unit vectors in
//! R^d down to α.
//!
//! `Method::Sgd` is the paper's loop (Generate_EBV.py): renormalise rows;
//! evaluate C = B·Bᵀ blockwise; stop when max |C_ij| ≤ α + tol; else
//! B ← B − lr·G with G = 2·M·B, M_ij = sign(C_ij)·[|C_ij| > α]. Defaults are
//! the paper's (α 0.002, lr 1e-3, 100,000 steps, tol 1e-4, seed 42).
//! Additions that never change a run that converges smoothly:
//! - refusal of α below the Welch bound (the run cannot succeed);
//! - divergence recovery (`guard`): when max |cos| stays 25 % above the best
//!   seen for `patience` (500) steps in a row, or jumps past 2 × best + 0.05,
//!   the best matrix is restored and lr halved, which is what the paper's
//!   users did by hand after a collapse. The margins are wide because healthy
//!   runs also rise for a while before falling; the price is that a run that
//!   would have recovered by itself after a large rise (the paper's
//!   N=1000, d=500, α=0.035, lr 1e-4, max 0.21 → 0.40 → converged at step
//!   15,368) is slowed instead; `--no-guard` gives the paper's loop exactly;
//! - the best matrix is always the one returned, with its real statistics,
//!   whether or not α was reached.
//!
//! `Method::Adaptive` minimises the squared hinge Σ max(0, |C_ij| − τ)² with
//! the gradient projected on the tangent space of the unit sphere, heavy-ball
//! momentum, and a step size that grows while the loss falls and shrinks
//! (momentum reset) when it rises. The force on a pair shrinks as it nears τ,
//! so pairs settle rather than chatter across τ as with the plain hinge.
//!
//! `Init::Kerdock` replaces the random start by real mutually unbiased bases
//! (`kerdock`), which already sit at 1/√D; either method then runs from
//! there as from any start, and `--alpha auto` starts its continuation from
//! 1/√D instead of the random maximum.
//!
//! `AlphaSpec::Auto` (either method) lowers τ by continuation:
//! τ ← W + 0.9·(max − W) (W = Welch bound) each time the current τ is met,
//! and keeps the best matrix, until the step budget or a stall (no gain for
//! [`AUTO_STALL_STEPS`] steps).

use std::time::Instant;

use serde::Serialize;

use super::error::BasisError;
use super::gram::{slice_rows, Engine, GradPath, Loss};
use super::kerdock::{kerdock_basis, kerdock_fit, KerdockPlan};
use super::matrix::{normalize_rows, Basis};
use super::welch::{random_max_cos, welch_bound, RandomMaxCos};

/// Momentum of the adaptive method.
const BETA: f32 = 0.9;
/// Step-size growth per step while the loss falls (adaptive).
const LR_GROW: f64 = 1.02;
/// Step-size cut when the loss rises (adaptive).
const LR_CUT: f64 = 0.7;
/// `--alpha auto` stops after this many steps without a new best.
pub const AUTO_STALL_STEPS: u64 = 1000;
/// Continuation factor of `--alpha auto`.
const AUTO_SHRINK: f64 = 0.9;
/// max |cos| counts as "above best" when it exceeds best·(1 + this) (guard).
/// Healthy runs of the paper's loop rise by up to ≈8 % for a few hundred steps
/// before falling (e.g. N=1041, d=384, α=0.051, lr 1e-4), so this is wide.
const GUARD_SLACK: f32 = 0.25;

/// Optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The paper's plain SGD on the hinge loss (default lr 1e-3).
    Sgd,
    /// Squared hinge, tangent-projected, momentum and adaptive step (default initial lr 0.1).
    Adaptive,
}

impl Method {
    /// Name as written in metadata.
    pub fn name(self) -> &'static str {
        match self {
            Method::Sgd => "sgd",
            Method::Adaptive => "adaptive",
        }
    }
}

/// The matrix the optimiser starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Rows i.i.d. standard normal, normalised (the paper's start).
    Random,
    /// Real mutually unbiased bases from a Kerdock set: max |cos| = 1/√D,
    /// D = largest power of 4 ≤ d, for up to D·(D/2 + 1) classes.
    Kerdock,
}

impl Init {
    /// Name as written in metadata.
    pub fn name(self) -> &'static str {
        match self {
            Init::Random => "random",
            Init::Kerdock => "kerdock",
        }
    }
}

/// The target coherence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlphaSpec {
    /// Stop once max |cos| ≤ α + tol.
    Value(f64),
    /// As low as the step budget allows.
    Auto,
}

/// Everything `generate` needs.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// Number of classes N (rows).
    pub n: usize,
    /// Dimension d (columns).
    pub d: usize,
    /// Target max |cos|.
    pub alpha: AlphaSpec,
    /// Seed of the random start (row order and column signs for Kerdock).
    pub seed: u64,
    /// Starting matrix.
    pub init: Init,
    /// Optimiser.
    pub method: Method,
    /// Learning rate (initial one for `Adaptive`); `None` = method default.
    pub lr: Option<f64>,
    /// Maximum number of update steps.
    pub max_steps: u64,
    /// Wall-clock budget in seconds (checked after each step); `None` = none.
    pub max_seconds: Option<f64>,
    /// Stop tolerance above α (the paper's 1e-4).
    pub tol: f64,
    /// Rows per Gram slice; `None` = from `mem_bytes`.
    pub slice: Option<usize>,
    /// Budget for the Gram block and the violation list, in bytes.
    pub mem_bytes: u64,
    /// Divergence recovery for `Sgd` (restore best, halve lr).
    pub guard: bool,
    /// Steps above the best before the guard acts.
    pub patience: u64,
    /// Dense/sparse gradient choice (benchmarks force one).
    pub grad_path: GradPath,
}

impl Default for GenerateConfig {
    /// The paper's defaults.
    fn default() -> Self {
        GenerateConfig {
            n: 1000,
            d: 1000,
            alpha: AlphaSpec::Value(0.002),
            seed: 42,
            init: Init::Random,
            method: Method::Sgd,
            lr: None,
            max_steps: 100_000,
            max_seconds: None,
            tol: 1e-4,
            slice: None,
            mem_bytes: 2 << 30,
            guard: true,
            patience: 500,
            grad_path: GradPath::Auto,
        }
    }
}

/// What is known before the first step.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub n: usize,
    pub d: usize,
    /// Welch bound sqrt((N−d)/(d(N−1))), 0 for N ≤ d.
    pub welch: f64,
    /// Max |cos| of random unit vectors (median and 5–95 % band).
    pub random_max_cos: RandomMaxCos,
    /// The Kerdock start, when asked for.
    pub kerdock: Option<KerdockPlan>,
    /// Rows per Gram slice.
    pub slice: usize,
    /// Learning rate the run starts with.
    pub lr: f64,
    /// Approximate resident memory of the run, bytes.
    pub mem_estimate: u64,
}

/// One step, for progress reporting.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub step: u64,
    pub max_abs_cos: f64,
    pub best_max_abs_cos: f64,
    /// Unordered pairs with |cos| above the current threshold.
    pub violations: u64,
    pub loss: f64,
    pub lr: f64,
    /// Current threshold (α, or the auto continuation level).
    pub tau: f64,
}

/// The result's summary (also written as metadata).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub d: usize,
    /// α asked; `None` for auto.
    pub alpha: Option<f64>,
    pub tol: f64,
    /// α + tol was reached (always true for auto).
    pub reached: bool,
    /// The start (random or Kerdock) already met α: no step was taken.
    pub instant: bool,
    /// Max off-diagonal |cos| of the returned matrix.
    pub max_abs_cos: f64,
    /// Mean off-diagonal |cos| of the returned matrix.
    pub mean_abs_cos: f64,
    pub welch: f64,
    /// max_abs_cos / welch (None for N ≤ d).
    pub ratio_to_welch: Option<f64>,
    pub random_max_cos: f64,
    /// The starting matrix.
    pub init: Init,
    /// Update steps taken in total.
    pub steps: u64,
    /// Step at which the returned matrix was evaluated.
    pub best_step: u64,
    /// Max |cos| at the last evaluated step (differs from `max_abs_cos` when
    /// the run moved away from its best).
    pub last_max_abs_cos: f64,
    pub seed: u64,
    pub method: Method,
    pub lr_start: f64,
    pub lr_end: f64,
    /// Times the guard restored the best matrix and halved lr.
    pub recoveries: u32,
    pub seconds: f64,
    pub version: &'static str,
}

/// A generated basis and its summary.
#[derive(Debug, Clone)]
pub struct Generated {
    pub basis: Basis,
    pub summary: Summary,
}

/// Validates `cfg` and computes what is printed before starting.
pub fn plan(cfg: &GenerateConfig) -> Result<Plan, BasisError> {
    let (n, d) = (cfg.n, cfg.d);
    if n < 2 {
        return Err(BasisError::arg("--classes", "need at least 2 classes"));
    }
    if n > u32::MAX as usize {
        return Err(BasisError::arg("--classes", "at most 2^32 − 1 classes"));
    }
    if d < 2 {
        return Err(BasisError::arg("--dim", "need a dimension of at least 2"));
    }
    let welch = welch_bound(n, d);
    if let AlphaSpec::Value(a) = cfg.alpha {
        if !(a.is_finite() && (0.0..1.0).contains(&a)) {
            return Err(BasisError::arg("--alpha", format!("{a} is not in [0, 1)")));
        }
        if a < welch {
            return Err(BasisError::BelowWelch {
                alpha: a,
                welch,
                n,
                d,
            });
        }
    }
    let lr = cfg.lr.unwrap_or(match cfg.method {
        Method::Sgd => 1e-3,
        Method::Adaptive => 0.1,
    });
    if !(lr.is_finite() && lr > 0.0) {
        return Err(BasisError::arg("--lr", format!("{lr} must be positive")));
    }
    if !(cfg.tol.is_finite() && cfg.tol >= 0.0) {
        return Err(BasisError::arg("--tol", "must be a non-negative number"));
    }
    let kerdock = match cfg.init {
        Init::Random => None,
        Init::Kerdock => Some(kerdock_fit(n, d)?),
    };
    let slice = match cfg.slice {
        Some(0) => return Err(BasisError::arg("--slice", "must be at least 1")),
        Some(s) => s.min(n),
        None => slice_rows(n, cfg.mem_bytes),
    };
    let nd = (n * d) as u64 * 4;
    let copies = match cfg.method {
        Method::Sgd => 3,      // B, G, best
        Method::Adaptive => 4, // + velocity
    };
    Ok(Plan {
        n,
        d,
        welch,
        random_max_cos: random_max_cos(n, d),
        kerdock,
        slice,
        lr,
        mem_estimate: copies * nd + (slice * n) as u64 * 4,
    })
}

/// Runs the generator. `on_step` sees every evaluated step.
pub fn generate(
    cfg: &GenerateConfig,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<Generated, BasisError> {
    let plan = plan(cfg)?;
    let started = Instant::now();
    let (n, d) = (cfg.n, cfg.d);
    let pairs = n as f64 * (n as f64 - 1.0) / 2.0;
    let welch = plan.welch;
    let target = match cfg.alpha {
        AlphaSpec::Value(a) => Some(a),
        AlphaSpec::Auto => None,
    };
    let loss_kind = match cfg.method {
        Method::Sgd => Loss::Hinge,
        Method::Adaptive => Loss::SquaredHinge,
    };
    let start_max = match plan.kerdock {
        Some(k) => k.coherence,
        None => plan.random_max_cos.median,
    };
    let mut tau = target.unwrap_or(welch + AUTO_SHRINK * (start_max - welch));

    let mut b = match cfg.init {
        Init::Random => Basis::random(n, d, cfg.seed),
        Init::Kerdock => kerdock_basis(n, d, cfg.seed)?,
    };
    let mut eng = Engine::new(n, d, plan.slice, cfg.mem_bytes, cfg.grad_path);
    let mut velocity = match cfg.method {
        Method::Adaptive => vec![0.0f32; n * d],
        Method::Sgd => Vec::new(),
    };
    let mut best = b.data.clone();
    let (mut best_max, mut best_mean, mut best_step) = (f32::INFINITY, 0.0f64, 0u64);
    let mut lr = plan.lr;
    let mut prev_loss: Option<f64> = None;
    let mut above_best = 0u64;
    let mut recoveries = 0u32;
    let mut last_gain = 0u64;
    let mut step = 0u64;
    let mut reached = false;
    let mut last_max: f32;

    loop {
        normalize_rows(&mut b.data, d);
        let ev = eng.evaluate(&b.data, tau as f32, loss_kind, step < cfg.max_steps);
        let mx = ev.max_abs;
        last_max = mx;
        if mx < best_max {
            if (mx as f64) < best_max as f64 - 1e-5 {
                last_gain = step;
            }
            best_max = mx;
            best_mean = ev.sum_abs / pairs;
            best_step = step;
            best.copy_from_slice(&b.data);
        }
        on_step(&StepInfo {
            step,
            max_abs_cos: mx as f64,
            best_max_abs_cos: best_max as f64,
            violations: ev.violations,
            loss: ev.loss,
            lr,
            tau,
        });
        if let Some(a) = target {
            if mx as f64 <= a + cfg.tol {
                reached = true;
                break;
            }
        }
        if step >= cfg.max_steps || lr < 1e-12 {
            break;
        }
        if cfg
            .max_seconds
            .is_some_and(|t| started.elapsed().as_secs_f64() > t)
        {
            break;
        }
        if target.is_none() && step - last_gain >= AUTO_STALL_STEPS {
            break;
        }

        if cfg.guard && cfg.method == Method::Sgd {
            if mx > best_max * (1.0 + GUARD_SLACK) + 1e-4 {
                above_best += 1;
            } else {
                above_best = 0;
            }
            // A collapse in progress (the paper's max |cos| → 0.6–0.9997)
            // does not wait for the patience to run out.
            let collapsing = mx > 2.0 * best_max + 0.05;
            if above_best >= cfg.patience.max(1) || collapsing {
                b.data.copy_from_slice(&best);
                lr *= 0.5;
                recoveries += 1;
                above_best = 0;
                step += 1;
                continue;
            }
        }

        let g = &mut eng.grad;
        match cfg.method {
            Method::Sgd => {
                let s = lr as f32;
                b.data
                    .iter_mut()
                    .zip(g.iter())
                    .for_each(|(x, gx)| *x -= s * gx);
            }
            Method::Adaptive => {
                project_tangent(g, &b.data, d);
                match prev_loss {
                    Some(p) if ev.loss > p => {
                        lr *= LR_CUT;
                        velocity.fill(0.0);
                    }
                    _ => lr *= LR_GROW,
                }
                prev_loss = Some(ev.loss);
                let s = lr as f32;
                velocity
                    .iter_mut()
                    .zip(g.iter())
                    .zip(b.data.iter_mut())
                    .for_each(|((v, gx), x)| {
                        *v = BETA * *v - s * gx;
                        *x += *v;
                    });
            }
        }
        if target.is_none() && mx as f64 <= tau + cfg.tol {
            tau = welch + AUTO_SHRINK * (mx as f64 - welch);
            prev_loss = None;
        }
        step += 1;
    }

    let basis = Basis { n, d, data: best };
    let max = best_max as f64;
    let summary = Summary {
        n,
        d,
        alpha: target,
        tol: cfg.tol,
        reached: reached || target.is_none(),
        instant: reached && step == 0,
        max_abs_cos: max,
        mean_abs_cos: best_mean,
        welch,
        ratio_to_welch: (welch > 0.0).then(|| max / welch),
        random_max_cos: plan.random_max_cos.median,
        init: cfg.init,
        steps: step,
        best_step,
        last_max_abs_cos: last_max as f64,
        seed: cfg.seed,
        method: cfg.method,
        lr_start: plan.lr,
        lr_end: lr,
        recoveries,
        seconds: started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION"),
    };
    Ok(Generated { basis, summary })
}

/// g_i ← g_i − (g_i·b_i)·b_i for unit rows b_i: only the tangent part moves
/// a row on the sphere; the radial part is undone by the next renormalisation.
fn project_tangent(g: &mut [f32], b: &[f32], d: usize) {
    use rayon::prelude::*;
    g.par_chunks_mut(d)
        .zip(b.par_chunks(d))
        .for_each(|(gr, br)| {
            let dot: f32 = gr.iter().zip(br).map(|(x, y)| x * y).sum();
            gr.iter_mut().zip(br).for_each(|(x, y)| *x -= dot * y);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, d: usize, alpha: f64) -> GenerateConfig {
        GenerateConfig {
            n,
            d,
            alpha: AlphaSpec::Value(alpha),
            ..GenerateConfig::default()
        }
    }

    #[test]
    fn refuses_alpha_below_welch() {
        // The paper's issue #4 case: N=1041, d=384, α=0.002 (Welch 0.0406).
        let err = plan(&cfg(1041, 384, 0.002)).unwrap_err();
        assert!(matches!(err, BasisError::BelowWelch { .. }), "{err}");
        assert!(err.to_string().contains("Welch bound 0.040560"), "{err}");
        assert!(plan(&cfg(1041, 384, 0.051)).is_ok());
    }

    #[test]
    fn instant_when_random_start_meets_alpha() {
        let c = cfg(200, 64, 0.9);
        let mut steps = 0;
        let g = generate(&c, &mut |_| steps += 1).unwrap();
        assert!(g.summary.instant && g.summary.reached);
        assert_eq!((g.summary.steps, steps), (0, 1));
        // The returned matrix is the random start (renormalised once more).
        let start = Basis::random(200, 64, 42);
        let worst = g
            .basis
            .data
            .iter()
            .zip(&start.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "moved by {worst}");
    }

    #[test]
    fn same_seed_same_matrix() {
        let mut c = cfg(120, 48, 0.3);
        c.method = Method::Adaptive;
        let a = generate(&c, &mut |_| {}).unwrap();
        let b = generate(&c, &mut |_| {}).unwrap();
        assert!(a.summary.steps > 0);
        assert_eq!(a.basis.data, b.basis.data);
        c.seed = 43;
        let e = generate(&c, &mut |_| {}).unwrap();
        assert_ne!(a.basis.data, e.basis.data);
    }
}
