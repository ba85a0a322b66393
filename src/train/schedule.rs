//! Per-iteration learning-rate schedule: linear warm-up followed by cosine decay.
//!
//! This is the closed form of PyTorch's
//! `SequentialLR([LinearLR(start_factor=f, end_factor=1, total_iters=W),
//! CosineAnnealingLR(T_max=total-W, eta_min=min_lr)], milestones=[W])`, stepped once per
//! optimiser step. PyTorch computes the same values recursively, so the two agree to rounding
//! (~1e-16 relative), not bit for bit.
//!
//! Invariants of [`Schedule::lr`]:
//! - step `s < W`: `base_lr · (f + (1 − f)·s/W)`, so step 0 uses `base_lr·f` and the ramp never
//!   reaches `base_lr` inside the warm-up (PyTorch's LinearLR convention);
//! - step `W ≤ s < total`: cosine from `base_lr` (at `s = W`) towards `min_lr`;
//! - step `s ≥ total`: `min_lr`. PyTorch's cosine would swing back up (it is periodic with period
//!   2·T_max); a run that overshoots its planned length should not see its LR rise again.
//! - `W = 0` is a pure cosine; `W ≥ total` never reaches the cosine part.
//!
//! The function is total: it never panics or divides by zero, whatever the fields hold. The
//! fields are not validated (PyTorch wants `0 < f ≤ 1`); a start factor of 0 works as well.

/// Warm-up + cosine schedule; see the module docs for the exact formula.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub warmup_start_factor: f64,
    pub total_steps: u64,
    pub min_lr: f64,
}

impl Schedule {
    /// The learning rate for 0-based optimiser step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        if step >= self.total_steps {
            return self.min_lr;
        }
        let w = self.warmup_steps;
        if step < w {
            let f = self.warmup_start_factor;
            let progress = step as f64 / w as f64;
            return self.base_lr * (f + (1.0 - f) * progress);
        }
        // Here w ≤ step < total, so cosine_len ≥ 1 and t/cosine_len ∈ [0, 1).
        let cosine_len = (self.total_steps - w) as f64;
        let t = (step - w) as f64;
        let cos = (std::f64::consts::PI * t / cosine_len).cos();
        self.min_lr + (self.base_lr - self.min_lr) * (1.0 + cos) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: f64, want: f64, what: &str) {
        let tol = 1e-14 * want.abs().max(1e-300);
        assert!(
            (got - want).abs() <= tol,
            "{what}: got {got:e}, want {want:e}"
        );
    }

    // Reference from torch 2.15.0 (/tmp/torchenv/bin/python):
    //
    // import torch
    // def run(base, W, f, total, mn, n):
    //     p = torch.nn.Parameter(torch.zeros(1))
    //     opt = torch.optim.SGD([p], lr=base)
    //     scheds = [torch.optim.lr_scheduler.LinearLR(opt, start_factor=f, end_factor=1.0, total_iters=W),
    //               torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - W, eta_min=mn)]
    //     s = torch.optim.lr_scheduler.SequentialLR(opt, scheds, milestones=[W])
    //     out = []
    //     for _ in range(n):
    //         out.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
    //     print(out)
    // run(0.1, 3, 0.01, 12, 1e-4, 12)
    const TORCH_WARMUP_COSINE: [f64; 12] = [
        0.001,
        0.034,
        0.067,
        0.1,
        0.09698764640825613,
        0.08831391993379295,
        0.07502500000000001,
        0.05872372647446319,
        0.041376273525536834,
        0.02507500000000001,
        0.011786080066207053,
        0.0031123535917438796,
    ];

    fn example() -> Schedule {
        Schedule {
            base_lr: 0.1,
            warmup_steps: 3,
            warmup_start_factor: 0.01,
            total_steps: 12,
            min_lr: 1e-4,
        }
    }

    #[test]
    fn matches_torch_sequential_lr() {
        let s = example();
        for (step, &want) in TORCH_WARMUP_COSINE.iter().enumerate() {
            assert_close(s.lr(step as u64), want, &format!("step {step}"));
        }
    }

    // import torch
    // p = torch.nn.Parameter(torch.zeros(1))
    // opt = torch.optim.SGD([p], lr=0.1)
    // s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4)
    // out = []
    // for _ in range(5):
    //     out.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
    // print(out)
    const TORCH_COSINE_ONLY: [f64; 5] = [
        0.1,
        0.09046039886902862,
        0.06548539886902863,
        0.03461460113097138,
        0.009639601130971379,
    ];

    #[test]
    fn zero_warmup_is_plain_cosine() {
        let s = Schedule {
            warmup_steps: 0,
            total_steps: 5,
            ..example()
        };
        for (step, &want) in TORCH_COSINE_ONLY.iter().enumerate() {
            assert_close(s.lr(step as u64), want, &format!("step {step}"));
        }
    }

    #[test]
    fn clamps_to_min_after_total() {
        let s = example();
        for step in [12, 13, 24, 1_000_000, u64::MAX] {
            assert_eq!(s.lr(step), 1e-4, "step {step}");
        }
    }

    #[test]
    fn degenerate_configs_are_finite() {
        // Warm-up as long as (or longer than) the run: ramp, then min_lr, never NaN.
        let s = Schedule {
            warmup_steps: 12,
            ..example()
        };
        assert_close(
            s.lr(11),
            0.1 * (0.01 + 0.99 * 11.0 / 12.0),
            "last warm-up step",
        );
        assert_eq!(s.lr(12), 1e-4);
        let s = Schedule {
            warmup_steps: 20,
            ..example()
        };
        assert!(s.lr(11).is_finite());
        let s = Schedule {
            total_steps: 0,
            warmup_steps: 0,
            ..example()
        };
        assert_eq!(s.lr(0), 1e-4);
    }
}
