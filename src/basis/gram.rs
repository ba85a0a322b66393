//! Blockwise Gram kernel and the hinge-loss gradient built from it.
//!
//! For unit rows B (N × d), C = B·Bᵀ holds the cosines. One evaluation walks
//! row slices [s, e) and computes only the upper triangle C[s:e, s:N] with one
//! GEMM (the `gemm` crate, f32, all rayon threads), so the Gram costs ≈ N²·d
//! flops instead of 2·N²·d and memory stays at one slice × N block.
//!
//! The loss is the paper's Σ_{i≠j} max(0, |C_ij| − τ) over ordered pairs (or
//! its square for the adaptive method); its gradient is G = 2·M·B with
//! M_ij = ∂loss/∂C_ij (zero diagonal), which is non-zero only on violating
//! pairs. Per slice we choose how to apply M:
//! - dense: the block is overwritten in place by M and two GEMMs add
//!   `M·B[s:N]` to `G[s:e]` and `Mᵀ·B[s:e]` to `G[s:N]`; when the slice
//!   before went dense, the statistics and M come out of one pass;
//! - sparse: the violating pairs are listed, and after the last slice each
//!   row of G gathers its pairs (rows in parallel, no write conflicts).
//!
//! Sparse is chosen when violations are rare (below [`DENSE_DENSITY`]) and the
//! pair list fits its share of the memory budget.
//! Statistics (max |cos|, mean |cos|, loss) accumulate in f64 per row.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::matrix::Basis;

/// Fraction of violating upper-triangle entries in a slice above which the
/// dense GEMM path is used. `benches/basis.rs` (N=1000, d=512, 2 cores) found
/// dense 14 % faster at 26 % density and sparse 2.3× faster at 0.07 %; the
/// crossover in between is not pinned down, so this value is a guess on the
/// safe side of it.
pub const DENSE_DENSITY: f64 = 0.08;

/// Bytes per violating pair on the sparse path (pair record + two gather entries + slack).
const BYTES_PER_PAIR: u64 = 40;

/// How G = 2·M·B is applied; `Auto` picks per slice by density.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradPath {
    /// Dense or sparse per slice, by the density of violations.
    Auto,
    /// Always the dense GEMM path.
    Dense,
    /// Always the sparse pair path (up to the memory cap).
    Sparse,
}

/// The per-pair loss term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Loss {
    /// max(0, |c| − τ): the paper's loss; M_ij = sign(c).
    Hinge,
    /// max(0, |c| − τ)²: force grows with the violation, so pairs settle
    /// instead of chattering across τ.
    SquaredHinge,
    /// (|c|/m)^p for |c| > τ (m a reference maximum, passed as 1/m): the
    /// p-th power of a p-norm, a smooth max that for large p pushes mostly
    /// on the pairs nearest the maximum. τ only drops the pairs whose
    /// weight (|c|/m)^(p−1) is negligible.
    Power { p: f32, inv_m: f32 },
}

/// Statistics of one evaluation over the unordered pairs i < j.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Eval {
    pub max_abs: f32,
    /// Unordered pairs with |c| > τ.
    pub violations: u64,
    /// Loss over ordered pairs (each unordered pair counted twice).
    pub loss: f64,
    /// Σ |c| over unordered pairs.
    pub sum_abs: f64,
}

impl Eval {
    fn merge(&mut self, o: &Eval) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.violations += o.violations;
        self.loss += o.loss;
        self.sum_abs += o.sum_abs;
    }
}

#[derive(Clone, Copy)]
struct Pair {
    i: u32,
    j: u32,
    w: f32,
}

/// Reusable buffers for evaluating loss, statistics and gradient of one N × d matrix.
pub(crate) struct Engine {
    n: usize,
    d: usize,
    slice: usize,
    block: Vec<f32>,
    pairs: Vec<Pair>,
    sparse_cap: usize,
    path: GradPath,
    /// Gradient of the last evaluation with `want_grad` (N × d).
    pub grad: Vec<f32>,
    /// `grad` is known to hold zeros: fresh (its pages not even touched
    /// yet) or left so by an evaluation without violations. An evaluation
    /// then skips the N × d clearing pass, so a start that already meets α
    /// never touches the 2 GB of gradient at N = 100,000, d = 5000.
    grad_zero: bool,
    offsets: Vec<usize>,
    entries: Vec<(u32, f32)>,
    row_evals: Vec<Eval>,
    /// Whether the last slice took the dense path: the next one then scans
    /// and weighs in one pass (see `evaluate`).
    dense_hint: bool,
}

/// The budget one slice row takes: its N f32 of the Gram block, which gets
/// half of the budget. Below it slices have one row whatever `--mem` says.
pub fn slice_row_bytes(n: usize) -> u64 {
    2 * 4 * n.max(1) as u64
}

/// Rows per slice for an N-row matrix within `mem_bytes` (the Gram block gets
/// half of it, the sparse pair list the other half).
///
/// Also capped near N/16 rows so that the upper-triangle saving is real
/// (one slice of N rows would compute the full square).
pub fn slice_rows(n: usize, mem_bytes: u64) -> usize {
    let by_mem = (mem_bytes / slice_row_bytes(n)).max(1) as usize;
    let cap = n.div_ceil(16).max(128);
    by_mem.min(cap).min(n).max(1)
}

impl Engine {
    pub(crate) fn new(n: usize, d: usize, slice: usize, mem_bytes: u64, path: GradPath) -> Self {
        let slice = slice.clamp(1, n.max(1));
        Engine {
            n,
            d,
            slice,
            block: vec![0.0; slice * n],
            pairs: Vec::new(),
            sparse_cap: (mem_bytes / 2 / BYTES_PER_PAIR) as usize,
            path,
            grad: vec![0.0; n * d],
            grad_zero: true,
            offsets: Vec::new(),
            entries: Vec::new(),
            row_evals: Vec::new(),
            dense_hint: false,
        }
    }

    /// Whether the next evaluation's first slice is predicted dense.
    pub(crate) fn dense_hint(&self) -> bool {
        self.dense_hint
    }

    /// Restores [`Self::dense_hint`] (a resumed run).
    pub(crate) fn set_dense_hint(&mut self, hint: bool) {
        self.dense_hint = hint;
    }

    /// Loss and statistics at threshold `tau` for the rows `b` (assumed unit);
    /// with `want_grad`, also `self.grad` = ∂loss/∂B.
    pub(crate) fn evaluate(&mut self, b: &[f32], tau: f32, loss: Loss, want_grad: bool) -> Eval {
        let (n, d) = (self.n, self.d);
        assert_eq!(b.len(), n * d, "matrix size does not match the engine");
        // Cleared at the first violation (or at the end, if there is none).
        let mut cleared = !want_grad || self.grad_zero;
        self.pairs.clear();
        let mut total = Eval::default();
        let mut s = 0;
        while s < n {
            let e = (s + self.slice).min(n);
            let (rows, w) = (e - s, n - s);
            let blk = &mut self.block[..rows * w];
            matmul_nt(rows, w, d, &b[s * d..], d, &b[s * d..], d, blk, w);

            // Fused: when this slice will take the dense path (forced, or
            // predicted from the last slice, since violations come in bulk),
            // one pass takes the statistics and writes the weights in place,
            // one powf per pair for the p-norm instead of two. The dense
            // path is then taken whatever the density (it needs no pair
            // memory, and its result is the same).
            let fused = want_grad
                && match self.path {
                    GradPath::Dense => true,
                    GradPath::Sparse => false,
                    GradPath::Auto => self.dense_hint,
                };
            self.row_evals.clear();
            if fused {
                blk.par_chunks_mut(w)
                    .enumerate()
                    .map(|(r, row)| scan_and_weigh_row(row, r, tau, loss))
                    .collect_into_vec(&mut self.row_evals);
            } else {
                blk.par_chunks(w)
                    .enumerate()
                    .map(|(r, row)| scan_row(&row[r + 1..], tau, loss))
                    .collect_into_vec(&mut self.row_evals);
            }
            let mut slice_eval = Eval::default();
            for re in &self.row_evals {
                slice_eval.merge(re);
            }
            total.merge(&slice_eval);

            if want_grad && slice_eval.violations > 0 {
                let upper = (rows * w - rows * (rows + 1) / 2).max(1);
                let density = slice_eval.violations as f64 / upper as f64;
                let fits = self.pairs.len() + slice_eval.violations as usize <= self.sparse_cap;
                let dense = match self.path {
                    GradPath::Dense => true,
                    GradPath::Sparse => !fits,
                    GradPath::Auto => density > DENSE_DENSITY || !fits,
                };
                self.dense_hint = dense;
                if !cleared {
                    self.grad.fill(0.0);
                    cleared = true;
                }
                self.grad_zero = false;
                if dense || fused {
                    if !fused {
                        blk.par_chunks_mut(w).enumerate().for_each(|(r, row)| {
                            for (j, c) in row.iter_mut().enumerate() {
                                *c = if j > r { weight(*c, tau, loss) } else { 0.0 };
                            }
                        });
                    }
                    let bs = &b[s * d..];
                    // G[s:e] += M·B[s:N]
                    matmul_acc_nn(rows, d, w, blk, w, bs, d, &mut self.grad[s * d..], d);
                    // G[s:N] += Mᵀ·B[s:e]
                    matmul_acc_tn(w, d, rows, blk, w, bs, d, &mut self.grad[s * d..], d);
                } else {
                    self.collect_pairs(s, rows, w, tau, loss);
                }
            }
            s = e;
        }
        if want_grad && !self.pairs.is_empty() {
            self.scatter(b);
        }
        if !cleared {
            // No violation anywhere: the gradient is zero.
            self.grad.fill(0.0);
            self.grad_zero = true;
        }
        total
    }

    /// Appends the violating pairs of the current block (rows s.., width w).
    fn collect_pairs(&mut self, s: usize, rows: usize, w: usize, tau: f32, loss: Loss) {
        let start = self.pairs.len();
        let added: usize = self.row_evals.iter().map(|r| r.violations as usize).sum();
        self.pairs
            .resize(start + added, Pair { i: 0, j: 0, w: 0.0 });
        // Disjoint output ranges per row, filled in parallel.
        let mut outs: Vec<&mut [Pair]> = Vec::with_capacity(rows);
        let mut rest = &mut self.pairs[start..];
        for re in &self.row_evals {
            let (head, tail) = rest.split_at_mut(re.violations as usize);
            outs.push(head);
            rest = tail;
        }
        let blk = &self.block[..rows * w];
        blk.par_chunks(w)
            .zip(outs.into_par_iter())
            .enumerate()
            .for_each(|(r, (row, out))| {
                let mut k = 0;
                for (j, &c) in row.iter().enumerate().skip(r + 1) {
                    if c.abs() > tau {
                        out[k] = Pair {
                            i: (s + r) as u32,
                            j: (s + j) as u32,
                            w: weight(c, tau, loss),
                        };
                        k += 1;
                    }
                }
            });
    }

    /// G_t += Σ w·B_src over the listed pairs touching row t, both directions.
    fn scatter(&mut self, b: &[f32]) {
        let (n, d) = (self.n, self.d);
        self.offsets.clear();
        self.offsets.resize(n + 1, 0);
        for p in &self.pairs {
            self.offsets[p.i as usize + 1] += 1;
            self.offsets[p.j as usize + 1] += 1;
        }
        for t in 0..n {
            self.offsets[t + 1] += self.offsets[t];
        }
        self.entries.clear();
        self.entries.resize(2 * self.pairs.len(), (0, 0.0));
        let mut cursor = self.offsets[..n].to_vec();
        for p in &self.pairs {
            let ci = &mut cursor[p.i as usize];
            self.entries[*ci] = (p.j, p.w);
            *ci += 1;
            let cj = &mut cursor[p.j as usize];
            self.entries[*cj] = (p.i, p.w);
            *cj += 1;
        }
        let (offsets, entries) = (&self.offsets, &self.entries);
        self.grad.par_chunks_mut(d).enumerate().for_each(|(t, g)| {
            for &(src, w) in &entries[offsets[t]..offsets[t + 1]] {
                let src = src as usize;
                for (x, y) in g.iter_mut().zip(&b[src * d..(src + 1) * d]) {
                    *x += w * y;
                }
            }
        });
    }
}

/// Statistics of one row's upper part (the entries j > i).
fn scan_row(upper: &[f32], tau: f32, loss: Loss) -> Eval {
    let mut ev = Eval::default();
    let mut sum = 0.0f64;
    let mut lsum = 0.0f64;
    let mut mx = 0.0f32;
    let mut count = 0u64;
    for &c in upper {
        let a = c.abs();
        sum += a as f64;
        mx = mx.max(a);
        if a > tau {
            count += 1;
            lsum += term_and_weight(c, tau, loss).0;
        }
    }
    ev.max_abs = mx;
    ev.violations = count;
    ev.loss = 2.0 * lsum;
    ev.sum_abs = sum;
    ev
}

/// [`scan_row`] for row `r` of a slice block, also overwriting the row with
/// the weights of [`weight`] (zero on and left of the diagonal): the dense
/// path's two passes over the block in one, one [`term_and_weight`] (one
/// powf for the p-norm) per violating pair instead of two.
fn scan_and_weigh_row(row: &mut [f32], r: usize, tau: f32, loss: Loss) -> Eval {
    let (lower, upper) = row.split_at_mut(r + 1);
    lower.fill(0.0);
    let mut sum = 0.0f64;
    let mut lsum = 0.0f64;
    let mut mx = 0.0f32;
    let mut count = 0u64;
    for c in upper {
        let a = c.abs();
        sum += a as f64;
        mx = mx.max(a);
        if a > tau {
            count += 1;
            let (term, w) = term_and_weight(*c, tau, loss);
            lsum += term;
            *c = w;
        } else {
            *c = 0.0;
        }
    }
    Eval {
        max_abs: mx,
        violations: count,
        loss: 2.0 * lsum,
        sum_abs: sum,
    }
}

/// For a violating pair (|c| > τ): its loss term, and ∂loss/∂C_ij times the
/// 2 of G = 2·M·B. One powf for the p-norm: x^(p−1) gives the weight, and
/// times x the term x^p.
#[inline]
fn term_and_weight(c: f32, tau: f32, loss: Loss) -> (f64, f32) {
    let a = c.abs();
    let s = if c > 0.0 { 1.0 } else { -1.0 };
    match loss {
        Loss::Hinge => ((a - tau) as f64, 2.0 * s),
        Loss::SquaredHinge => {
            let v = a - tau;
            ((v as f64) * (v as f64), 4.0 * v * s)
        }
        Loss::Power { p, inv_m } => {
            let x = a * inv_m;
            let t = x.powf(p - 1.0);
            ((t * x) as f64, 2.0 * p * inv_m * t * s)
        }
    }
}

/// ∂loss/∂C_ij times 2 (zero for a pair within τ).
#[inline]
fn weight(c: f32, tau: f32, loss: Loss) -> f32 {
    if c.abs() <= tau {
        return 0.0;
    }
    term_and_weight(c, tau, loss).1
}

/// Loss and gradient of the hinge loss Σ_{i≠j} max(0, |C_ij| − α) (or its
/// square) at `b`, through the same kernel `generate` uses, with the gradient
/// path forced. For tests and benchmarks.
pub fn hinge_loss_and_grad(
    b: &Basis,
    alpha: f32,
    squared: bool,
    slice: usize,
    path: GradPath,
) -> (f64, Vec<f32>) {
    let mut eng = Engine::new(b.n, b.d, slice, 1 << 30, path);
    let loss = if squared {
        Loss::SquaredHinge
    } else {
        Loss::Hinge
    };
    let ev = eng.evaluate(&b.data, alpha, loss, true);
    (ev.loss, std::mem::take(&mut eng.grad))
}

fn parallelism() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

/// Scalars the GEMM wrappers accept (f32 for the optimiser, f64 for `check`).
pub(crate) trait Scalar: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}
impl Scalar for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl Scalar for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// out(m×n, stride ldo) = A(m×k, stride lda) · B(n×k, stride ldb)ᵀ.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nt<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    out: &mut [T],
    ldo: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldb >= k && ldo >= n);
    assert!(a.len() >= (m - 1) * lda + k);
    assert!(b.len() >= (n - 1) * ldb + k);
    assert!(out.len() >= (m - 1) * ldo + n);
    // SAFETY: the asserts above keep every index gemm touches inside the slices;
    // `out` does not alias `a` or `b` (distinct borrows). T is f32 or f64,
    // both supported by gemm.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ldo as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            ldb as isize,
            1,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// out(m×n) += A(m×k, stride lda) · B(k×n, stride ldb).
#[allow(clippy::too_many_arguments)]
fn matmul_acc_nn(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    ldo: usize,
) {
    matmul_scaled_acc_nn(m, n, k, 1.0, a, lda, b, ldb, out, ldo)
}

/// out(m×n) += scale · A(m×k, stride lda) · B(k×n, stride ldb).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_scaled_acc_nn<T: Scalar>(
    m: usize,
    n: usize,
    k: usize,
    scale: T,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    out: &mut [T],
    ldo: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(lda >= k && ldb >= n && ldo >= n);
    assert!(a.len() >= (m - 1) * lda + k);
    assert!(b.len() >= (k - 1) * ldb + n);
    assert!(out.len() >= (m - 1) * ldo + n);
    // SAFETY: bounds asserted above; `out` is a distinct mutable borrow.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ldo as isize,
            true,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            T::ONE,
            scale,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

/// out(m×n) += Aᵀ · B with A stored k×m (stride lda) and B k×n (stride ldb).
#[allow(clippy::too_many_arguments)]
fn matmul_acc_tn(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    ldo: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(lda >= m && ldb >= n && ldo >= n);
    assert!(a.len() >= (k - 1) * lda + m);
    assert!(b.len() >= (k - 1) * ldb + n);
    assert!(out.len() >= (m - 1) * ldo + n);
    // SAFETY: bounds asserted above; `out` is a distinct mutable borrow.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ldo as isize,
            true,
            a.as_ptr(),
            lda as isize,
            1,
            b.as_ptr(),
            1,
            ldb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct f64 loss over ordered pairs, for finite differences.
    fn loss_f64(b: &[f64], n: usize, d: usize, alpha: f64, squared: bool) -> f64 {
        let mut l = 0.0;
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let c: f64 = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum();
                let v = (c.abs() - alpha).max(0.0);
                l += if squared { v * v } else { v };
            }
        }
        l
    }

    fn check_fd(squared: bool, path: GradPath, slice: usize) {
        let (n, d, alpha) = (40usize, 12usize, 0.25f64);
        let b = Basis::random(n, d, 7);
        let (loss, grad) = hinge_loss_and_grad(&b, alpha as f32, squared, slice, path);
        let b64: Vec<f64> = b.data.iter().map(|&x| x as f64).collect();
        let direct = loss_f64(&b64, n, d, alpha, squared);
        assert!(
            (loss - direct).abs() < 1e-4 * direct.max(1.0),
            "{loss} vs {direct}"
        );
        // Central differences in f64 on a sample of coordinates; the hinge is
        // piecewise linear, so a small step that crosses no kink is exact.
        let h = 1e-6;
        let mut checked = 0;
        for idx in (0..n * d).step_by(7) {
            let mut p = b64.clone();
            p[idx] += h;
            let lp = loss_f64(&p, n, d, alpha, squared);
            p[idx] -= 2.0 * h;
            let lm = loss_f64(&p, n, d, alpha, squared);
            let fd = (lp - lm) / (2.0 * h);
            let g = grad[idx] as f64;
            assert!(
                (fd - g).abs() < 1e-3 * fd.abs().max(1.0),
                "coordinate {idx}: fd {fd} vs kernel {g} ({path:?}, squared={squared})"
            );
            checked += 1;
        }
        assert!(checked > 50);
        assert!(grad.iter().any(|&g| g != 0.0));
    }

    #[test]
    fn hinge_gradient_matches_finite_differences_dense() {
        check_fd(false, GradPath::Dense, 16);
    }

    #[test]
    fn hinge_gradient_matches_finite_differences_sparse() {
        check_fd(false, GradPath::Sparse, 9);
    }

    #[test]
    fn squared_hinge_gradient_matches_finite_differences() {
        check_fd(true, GradPath::Dense, 40);
        check_fd(true, GradPath::Sparse, 13);
    }

    #[test]
    fn power_gradient_matches_finite_differences() {
        // Σ_{i≠j} (|c_ij|/m)^p over pairs above τ = 0.2 (none sits near τ
        // closely enough for a step of 1e-6 to cross it).
        let (n, d, p, m, tau) = (40usize, 12usize, 6.0f64, 0.8f64, 0.2f64);
        let b = Basis::random(n, d, 11);
        let b64: Vec<f64> = b.data.iter().map(|&x| x as f64).collect();
        let loss_f64 = |x: &[f64]| -> f64 {
            let mut l = 0.0;
            for i in 0..n {
                for j in 0..n {
                    let c: f64 = (0..d).map(|k| x[i * d + k] * x[j * d + k]).sum();
                    if i != j && c.abs() > tau {
                        l += (c.abs() / m).powf(p);
                    }
                }
            }
            l
        };
        let loss = Loss::Power {
            p: p as f32,
            inv_m: (1.0 / m) as f32,
        };
        // Dense takes the fused pass, Sparse the two-pass scan, Auto both
        // (its first slice unfused, the rest fused).
        for (path, slice) in [
            (GradPath::Dense, 16),
            (GradPath::Sparse, 9),
            (GradPath::Auto, 7),
        ] {
            let mut eng = Engine::new(n, d, slice, 1 << 30, path);
            let ev = eng.evaluate(&b.data, tau as f32, loss, true);
            let direct = loss_f64(&b64);
            assert!(
                (ev.loss - direct).abs() < 1e-4 * direct,
                "{} vs {direct}",
                ev.loss
            );
            let h = 1e-6;
            for idx in (0..n * d).step_by(7) {
                let mut x = b64.clone();
                x[idx] += h;
                let lp = loss_f64(&x);
                x[idx] -= 2.0 * h;
                let fd = (lp - loss_f64(&x)) / (2.0 * h);
                let g = eng.grad[idx] as f64;
                assert!(
                    (fd - g).abs() < 1e-3 * fd.abs().max(1.0),
                    "coordinate {idx}: fd {fd} vs kernel {g} ({path:?})"
                );
            }
        }
    }

    #[test]
    fn dense_and_sparse_paths_agree() {
        let b = Basis::random(300, 64, 3);
        let (l1, g1) = hinge_loss_and_grad(&b, 0.3, false, 37, GradPath::Dense);
        let (l2, g2) = hinge_loss_and_grad(&b, 0.3, false, 300, GradPath::Sparse);
        assert!((l1 - l2).abs() < 1e-3 * l1.max(1.0));
        let worst = g1
            .iter()
            .zip(&g2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "{worst}");
    }

    /// One engine reused across evaluations gives each the gradient a fresh
    /// engine gives: the clearing pass it skips while the gradient is known
    /// to be zero is never skipped when it is not.
    #[test]
    fn reused_engine_clears_the_gradient_when_it_must() {
        let b = Basis::random(200, 32, 5);
        for path in [GradPath::Dense, GradPath::Sparse] {
            let fresh = |tau: f32| {
                let mut e = Engine::new(200, 32, 37, 1 << 30, path);
                e.evaluate(&b.data, tau, Loss::Hinge, true);
                e.grad
            };
            let mut eng = Engine::new(200, 32, 37, 1 << 30, path);
            // Violations, none, violations again, then a gradient-free pass.
            for tau in [0.3f32, 0.99, 0.35, 0.99, 0.3] {
                eng.evaluate(&b.data, tau, Loss::Hinge, true);
                let want = fresh(tau);
                assert!(eng.grad == want, "{path:?}, tau {tau}");
                assert_eq!(eng.grad.iter().any(|&g| g != 0.0), tau < 0.9);
            }
            eng.evaluate(&b.data, 0.3, Loss::Hinge, false);
            eng.evaluate(&b.data, 0.99, Loss::Hinge, true);
            assert!(eng.grad.iter().all(|&g| g == 0.0), "{path:?}");
        }
    }

    #[test]
    fn slice_rows_respects_budget() {
        assert_eq!(slice_rows(1000, 1 << 30), 128);
        // 100k rows, 1 GiB: the block gets 512 MiB → 1342 rows of 400 KB.
        let r = slice_rows(100_000, 1 << 30);
        assert!(r as u64 * 100_000 * 4 <= 1 << 29 && r > 1000, "{r}");
        assert_eq!(slice_rows(10, 1 << 30), 10);
    }
}
