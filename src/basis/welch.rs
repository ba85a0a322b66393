//! Closed-form reference values for the coherence (max off-diagonal |cos|) of
//! N unit vectors in R^d.
//!
//! - The Welch bound sqrt((N−d)/(d(N−1))) (0 when N ≤ d) is a hard lower
//!   bound: no matrix does better, so an α below it is refused.
//! - The coherence of *random* unit vectors: for two independent uniform unit
//!   vectors, cos² ~ Beta(1/2, (d−1)/2), so P(|cos| > t) = I_{1−t²}((d−1)/2, 1/2)
//!   exactly. The max over the M = N(N−1)/2 pairs is approximated by treating
//!   the pairs as independent (they are pairwise independent, not jointly),
//!   P(max ≤ t) ≈ (1 − P(|cos| > t))^M, exact for one pair (N = 2) and
//!   ≈ exp(−M·P(|cos| > t)) for many; its median solves
//!   P(|cos| > t) = 1 − 2^(−1/M). Checked against measured random matrices in
//!   the tests (a few percent), and for N = 2 against closed forms.

/// Welch lower bound on the max off-diagonal |cos| of `n` unit vectors in R^`d`.
pub fn welch_bound(n: usize, d: usize) -> f64 {
    if n <= d || n < 2 || d == 0 {
        return 0.0;
    }
    let (n, d) = (n as f64, d as f64);
    ((n - d) / (d * (n - 1.0))).sqrt()
}

/// Distribution summary of the max |cos| of `n` random unit vectors in R^`d`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RandomMaxCos {
    /// Median of the max |cos| (the "expected" value printed before a run).
    pub median: f64,
    /// 5 % quantile.
    pub q05: f64,
    /// 95 % quantile.
    pub q95: f64,
}

/// Quantiles of the max off-diagonal |cos| of `n` i.i.d. uniform unit vectors in R^`d`.
pub fn random_max_cos(n: usize, d: usize) -> RandomMaxCos {
    let q = |p: f64| max_quantile(n, d, p);
    RandomMaxCos {
        median: q(0.5),
        q05: q(0.05),
        q95: q(0.95),
    }
}

/// The `p`-quantile of the max: solves (1 − tail(t))^M = p for t by bisection.
fn max_quantile(n: usize, d: usize, p: f64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    if d < 2 {
        return 1.0;
    }
    let pairs = n as f64 * (n as f64 - 1.0) / 2.0;
    // Tail probability per pair at the quantile, 1 − p^(1/M), without the
    // cancellation of 1 − (a number near 1) when M is large.
    let target = -(p.ln() / pairs).exp_m1();
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if pair_tail(mid, d) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// P(|cos| > t) for two independent uniform unit vectors in R^d (d ≥ 2).
pub fn pair_tail(t: f64, d: usize) -> f64 {
    if t <= 0.0 {
        return 1.0;
    }
    if t >= 1.0 {
        return 0.0;
    }
    let a = (d as f64 - 1.0) / 2.0;
    let b = 0.5;
    let t2 = t * t;
    let y = 1.0 - t2; // tail = I_y(a, b)
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * (-t2).ln_1p() + b * t2.ln();
    if y < (a + 1.0) / (a + b + 2.0) {
        // Direct continued fraction: accurate for the tiny tails maxima live in.
        (ln_front.exp() * beta_cf(a, b, y) / a).clamp(0.0, 1.0)
    } else {
        (1.0 - ln_front.exp() * beta_cf(b, a, t2) / b).clamp(0.0, 1.0)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        s += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basis::matrix::Basis;

    #[test]
    fn welch_matches_regular_simplex() {
        // d+1 vectors of a regular simplex meet the Welch bound with equality:
        // every pair has cos = −1/d.
        for d in [2usize, 3, 7, 20] {
            let n = d + 1;
            // Centred standard basis of R^{d+1}: spans a d-dim subspace.
            let mut m = vec![0.0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    m[i * n + j] = if i == j { 1.0 } else { 0.0 } - 1.0 / n as f64;
                }
            }
            let norm: f64 = m[..n].iter().map(|x| x * x).sum::<f64>().sqrt();
            let cos01: f64 = (0..n).map(|k| m[k] * m[n + k]).sum::<f64>() / (norm * norm);
            assert!((cos01.abs() - welch_bound(n, d)).abs() < 1e-12, "d={d}");
        }
        assert_eq!(welch_bound(1000, 1000), 0.0);
        assert_eq!(welch_bound(10, 20), 0.0);
        assert!((welch_bound(1000, 100) - 0.094916).abs() < 1e-6);
        assert!((welch_bound(1000, 200) - 0.063277).abs() < 1e-6);
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut f = 1.0f64;
        for k in 1..30u32 {
            f *= k as f64;
            assert!((ln_gamma(k as f64 + 1.0) - f.ln()).abs() < 1e-10 * f.ln().max(1.0));
        }
        // Γ(1/2) = √π
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    /// Independent reference: integrate the density ∝ (1−x²)^((d−3)/2) with
    /// Simpson's rule and normalise numerically.
    fn tail_by_quadrature(t: f64, d: usize) -> f64 {
        let f = |x: f64| (1.0 - x * x).max(0.0).powf((d as f64 - 3.0) / 2.0);
        let simpson = |a: f64, b: f64| {
            let k = 20_000;
            let h = (b - a) / k as f64;
            let mut s = f(a) + f(b);
            for i in 1..k {
                let x = a + i as f64 * h;
                s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(x);
            }
            s * h / 3.0
        };
        simpson(t, 1.0) / simpson(0.0, 1.0)
    }

    #[test]
    fn pair_tail_matches_quadrature() {
        for &(t, d) in &[(0.1, 5usize), (0.5, 10), (0.3, 50), (0.05, 200), (0.2, 200)] {
            let a = pair_tail(t, d);
            let b = tail_by_quadrature(t, d);
            assert!(
                (a - b).abs() <= 1e-6 * b.max(1e-12) + 1e-12,
                "t={t} d={d}: {a} vs {b}"
            );
        }
    }

    /// One pair (N = 2): the max is |cos| itself. In R³ cos is uniform on
    /// [−1, 1] (Archimedes), so |cos| is uniform on [0, 1]; in R² the angle
    /// is uniform, so the median of |cos| is cos(π/4).
    #[test]
    fn random_max_is_exact_for_one_pair() {
        let r = random_max_cos(2, 3);
        for (got, want) in [(r.q05, 0.05), (r.median, 0.5), (r.q95, 0.95)] {
            assert!((got - want).abs() < 1e-9, "{r:?}");
        }
        let r2 = random_max_cos(2, 2);
        assert!(
            (r2.median - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9,
            "{r2:?}"
        );
    }

    #[test]
    fn random_max_matches_measurement() {
        // Median of the measured max over seeds must sit inside the predicted
        // 5–95 % band and within a few percent of the predicted median.
        for &(n, d) in &[(400usize, 32usize), (300, 200)] {
            let pred = random_max_cos(n, d);
            let mut maxima: Vec<f64> = (0..15u64)
                .map(|seed| {
                    let b = Basis::random(n, d, seed);
                    let mut mx = 0.0f64;
                    for i in 0..n {
                        for j in i + 1..n {
                            let c: f64 = b
                                .row(i)
                                .iter()
                                .zip(b.row(j))
                                .map(|(x, y)| *x as f64 * *y as f64)
                                .sum();
                            mx = mx.max(c.abs());
                        }
                    }
                    mx
                })
                .collect();
            maxima.sort_by(f64::total_cmp);
            let med = maxima[maxima.len() / 2];
            assert!(
                (med - pred.median).abs() / pred.median < 0.05,
                "(N={n}, d={d}) measured median {med}, predicted {}",
                pred.median
            );
            assert!(pred.q05 < med && med < pred.q95);
            assert!(med >= welch_bound(n, d));
        }
    }

    #[test]
    fn random_max_matches_paper_figures() {
        // Values quoted in the method notes (100k-class case: ≈0.091).
        let r = random_max_cos(100_000, 5000);
        assert!((r.median - 0.091).abs() < 0.003, "{r:?}");
        assert!((random_max_cos(1000, 100).median - 0.459).abs() < 0.01);
        assert!((random_max_cos(1000, 1000).median - 0.152).abs() < 0.005);
    }
}
