//! A structured start: real mutually unbiased bases (MUBs) built from a
//! Kerdock set, which reach max |cos| = 1/√D for up to D·(D/2 + 1) unit
//! vectors in R^D, D = 4^k, with no optimisation at all.
//!
//! Why: for N ≫ d the optimisers stall at 1.24–1.44 × the Welch bound
//! (BENCHMARKS.md), while D/2 + 1 real MUBs have every off-diagonal |cos|
//! either 0 or exactly 1/√D: √((N−1)/(N−D)) × Welch, i.e. 1.118 × at
//! N = 5D, 1.054 × at N = 10D and 1.02 × at the paper's 100,000 classes in
//! D = 4096 (whose random start sits at 6 × Welch).
//!
//! Construction (Cameron–Seidel; Kantor's form of the Kerdock set), checked
//! in the tests rather than trusted:
//! - D = 2^m, m even; coordinates are indexed by x ∈ GF(2)^m.
//! - With t = m − 1 (odd) and F = GF(2^t), every a ∈ F gives an alternating
//!   bilinear form on F ⊕ GF(2):
//!   A_a((x,ξ),(y,η)) = Tr(a·x·y) + Tr(c·x)·Tr(c·y) + ξ·Tr(c·y) + η·Tr(c·x),
//!   c = √a. The 2^t forms are a Kerdock set: A_a + A_b is non-singular for
//!   a ≠ b.
//! - q_a is the quadratic form whose polar form is A_a (q_a(x) = Σ_{i<j}
//!   A_ij·x_i·x_j). Basis a holds the D vectors v_{a,b}(x) = (−1)^{q_a(x) +
//!   b·x}/√D, b ∈ GF(2)^m: a Hadamard basis twisted by q_a. Two vectors of
//!   bases a ≠ b have |⟨v, w⟩| = |Walsh transform of q_a + q_b|/D = 1/√D
//!   because q_a + q_b has a non-singular polar form (it is bent); vectors of
//!   one basis are orthogonal; every v_{a,b} has |⟨v, e_x⟩| = 1/√D against
//!   the standard basis, which is basis number 0.
//!
//! Invariants: rows are exactly unit length (entries ±1/√D or one-hot); the
//! output depends on (N, d, seed) only. When d is not a power of 4 the
//! largest D = 4^k ≤ d is used and the D coordinates are spread over a
//! seeded choice of the d columns (zeros elsewhere), so the coherence is
//! 1/√D, not better; an optimiser started from such a matrix moves only
//! inside that D-dimensional subspace (its gradient G = 2·M·B is a
//! combination of the rows).

use rayon::prelude::*;

use super::error::BasisError;
use super::matrix::{Basis, Embedding};

/// Largest supported exponent: D = 2^30 would not fit one row in memory anyway.
const MAX_M: u32 = 30;

/// What a Kerdock start gives for a dimension d.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KerdockPlan {
    /// D = 4^k ≤ d, the dimension the bases live in.
    pub dim: usize,
    /// Number of bases available: D/2 + 1 (the standard basis and 2^(m−1)).
    pub bases: usize,
    /// Most vectors it can give: D·(D/2 + 1).
    pub capacity: usize,
    /// Max off-diagonal |cos| of any two of its vectors: 1/√D.
    pub coherence: f64,
}

/// The Kerdock start for dimension `d`; `None` when d < 4.
pub fn kerdock_plan(d: usize) -> Option<KerdockPlan> {
    if d < 4 {
        return None;
    }
    // Largest even m with 2^m ≤ d.
    let mut m = (usize::BITS - 1 - d.leading_zeros()).min(MAX_M);
    m -= m % 2;
    let dim = 1usize << m;
    let bases = dim / 2 + 1;
    Some(KerdockPlan {
        dim,
        bases,
        capacity: dim.saturating_mul(bases),
        coherence: 1.0 / (dim as f64).sqrt(),
    })
}

/// The Kerdock start for N vectors in R^d, or an error naming `--init` when
/// d < 4 or N is above its capacity.
pub fn kerdock_fit(n: usize, d: usize) -> Result<KerdockPlan, BasisError> {
    let plan = kerdock_plan(d).ok_or_else(|| {
        BasisError::arg(
            "--init",
            format!("kerdock needs --dim of at least 4, got {d}"),
        )
    })?;
    if n > plan.capacity {
        return Err(BasisError::arg(
            "--init",
            format!(
                "kerdock gives at most {} vectors with --dim {d} ({} bases of {} in R^{}); \
                 --classes {n} needs a larger --dim or --init random",
                plan.capacity, plan.bases, plan.dim, plan.dim
            ),
        ));
    }
    Ok(plan)
}

/// N rows of the Kerdock MUBs in R^d: rows in a seeded order, the D
/// coordinates on a seeded choice of columns with seeded signs.
pub fn kerdock_basis(n: usize, d: usize, seed: u64) -> Result<Basis, BasisError> {
    let plan = kerdock_fit(n, d)?;
    let dim = plan.dim;
    let m = dim.trailing_zeros();
    let field = Field::new(m - 1);
    let used_bases = n.div_ceil(dim);
    // Quadratic form tables of the twisted bases in use (basis 0 is the
    // standard one and needs none); one bit per coordinate x.
    let forms: Vec<Vec<u64>> = (0..used_bases.saturating_sub(1))
        .into_par_iter()
        .map(|a| quadratic_table(&alternating_form(&field, a as u32), m))
        .collect();

    // Which of the used_bases·D vectors become rows, and in what order;
    // coordinate x of the construction goes to column cols[x] with sign signs[x].
    let place = Embedding::seeded(n, used_bases * dim, dim, d, seed);
    let (cols, signs) = (&place.cols, &place.signs);

    let scale = 1.0 / (dim as f32).sqrt();
    let mut data = vec![0.0f32; n * d];
    data.par_chunks_mut(d)
        .zip(place.pick.par_iter())
        .for_each(|(row, &v)| {
            let (basis, b) = (v / dim, v % dim);
            if basis == 0 {
                row[cols[b]] = signs[b];
                return;
            }
            let q = &forms[basis - 1];
            for x in 0..dim {
                let odd = bit(q, x) ^ ((b & x).count_ones() & 1 == 1);
                let s = if odd { -scale } else { scale };
                row[cols[x]] = s * signs[x];
            }
        });
    Ok(Basis { n, d, data })
}

fn bit(table: &[u64], x: usize) -> bool {
    (table[x / 64] >> (x % 64)) & 1 == 1
}

/// GF(2^t) in a polynomial basis: elements are the low t bits of a u32.
struct Field {
    t: u32,
    /// The reduction polynomial, including the x^t term.
    poly: u64,
}

impl Field {
    fn new(t: u32) -> Self {
        Field {
            t,
            poly: irreducible(t),
        }
    }

    fn mul(&self, a: u32, b: u32) -> u32 {
        let (mut a, mut b, mut r) = (a as u64, b as u64, 0u64);
        while b != 0 {
            if b & 1 == 1 {
                r ^= a;
            }
            b >>= 1;
            a <<= 1;
            if (a >> self.t) & 1 == 1 {
                a ^= self.poly;
            }
        }
        r as u32
    }

    /// Absolute trace Tr(z) = z + z² + … + z^(2^(t−1)) ∈ {0, 1}.
    fn trace(&self, z: u32) -> u32 {
        let (mut s, mut y) = (0, z);
        for _ in 0..self.t {
            s ^= y;
            y = self.mul(y, y);
        }
        debug_assert!(s <= 1, "trace outside GF(2): {s}");
        s
    }

    /// √a = a^(2^(t−1)): squaring is a bijection of GF(2^t).
    fn sqrt(&self, a: u32) -> u32 {
        let mut y = a;
        for _ in 1..self.t {
            y = self.mul(y, y);
        }
        y
    }
}

/// The smallest irreducible polynomial of degree t over GF(2) (bit i =
/// coefficient of x^i), by trial division: t ≤ 29 needs divisors of degree
/// ≤ 14 only.
fn irreducible(t: u32) -> u64 {
    if t == 1 {
        return 0b11; // x + 1
    }
    let divides = |p: u64, q: u64| -> bool {
        // Remainder of p by q.
        let dq = 63 - q.leading_zeros();
        let mut r = p;
        while r != 0 && 63 - r.leading_zeros() >= dq {
            r ^= q << (63 - r.leading_zeros() - dq);
        }
        r == 0
    };
    (1u64 << t..1u64 << (t + 1))
        .filter(|p| p & 1 == 1) // x does not divide it
        .find(|&p| (2u64..1 << (t / 2 + 1)).all(|q| !divides(p, q)))
        .expect("an irreducible polynomial exists in every degree")
}

/// The m × m alternating matrix A_a over GF(2) (row i as a bit mask) on
/// F ⊕ GF(2), F = GF(2^(m−1)) with basis 1, x, …, x^(t−1); the extra
/// coordinate is the last one.
fn alternating_form(f: &Field, a: u32) -> Vec<u32> {
    let t = f.t as usize;
    let c = f.sqrt(a);
    let lin: Vec<u32> = (0..t).map(|i| f.trace(f.mul(c, 1 << i))).collect();
    let mut rows = vec![0u32; t + 1];
    for i in 0..t {
        for j in 0..t {
            let v = f.trace(f.mul(a, f.mul(1 << i, 1 << j))) ^ (lin[i] & lin[j]);
            rows[i] |= v << j;
        }
        rows[i] |= lin[i] << t;
        rows[t] |= lin[i] << i;
    }
    rows
}

/// q(x) = Σ_{i<j} A_ij·x_i·x_j for every x ∈ GF(2)^m, as bits. Built by
/// doubling: for x < 2^k, q(x + e_k) = q(x) + Σ_{j<k} A_kj·x_j.
fn quadratic_table(rows: &[u32], m: u32) -> Vec<u64> {
    let dim = 1usize << m;
    let mut q = vec![0u64; dim.div_ceil(64)];
    for (k, &row) in rows.iter().enumerate().take(m as usize) {
        let low = row & ((1u32 << k) - 1);
        for x in 0..1usize << k {
            let v = bit(&q, x) ^ ((low as usize & x).count_ones() & 1 == 1);
            let y = x | 1 << k;
            q[y / 64] |= (v as u64) << (y % 64);
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank over GF(2) of rows given as bit masks.
    fn rank2(mut rows: Vec<u32>) -> usize {
        let mut rank = 0;
        for col in 0..32 {
            let Some(p) = (rank..rows.len()).find(|&i| rows[i] >> col & 1 == 1) else {
                continue;
            };
            rows.swap(rank, p);
            for i in 0..rows.len() {
                if i != rank && rows[i] >> col & 1 == 1 {
                    rows[i] ^= rows[rank];
                }
            }
            rank += 1;
        }
        rank
    }

    #[test]
    fn field_arithmetic() {
        for t in [1u32, 3, 5, 7, 9, 11] {
            let f = Field::new(t);
            let q = 1u32 << t;
            // Every nonzero element has an inverse (the polynomial is irreducible),
            // the square root squares back, and the trace is linear and balanced.
            let step = (q / 97).max(1) as usize;
            for a in (1..q).step_by(step) {
                assert!(
                    (1..q).any(|b| f.mul(a, b) == 1),
                    "t={t} a={a} has no inverse"
                );
                let r = f.sqrt(a);
                assert_eq!(f.mul(r, r), a, "t={t} √{a}");
            }
            let ones = (0..q).filter(|&z| f.trace(z) == 1).count();
            assert_eq!(ones as u32, q / 2, "t={t}: trace not balanced");
        }
    }

    #[test]
    fn forms_are_a_kerdock_set() {
        for m in [2u32, 4, 6, 8] {
            let f = Field::new(m - 1);
            let forms: Vec<Vec<u32>> = (0..1u32 << (m - 1))
                .map(|a| alternating_form(&f, a))
                .collect();
            for (a, fa) in forms.iter().enumerate() {
                for i in 0..m as usize {
                    assert_eq!(fa[i] >> i & 1, 0, "m={m} a={a}: diagonal");
                    for j in 0..m as usize {
                        assert_eq!(fa[i] >> j & 1, fa[j] >> i & 1, "m={m} a={a}: symmetric");
                    }
                }
                for fb in &forms[a + 1..] {
                    let sum: Vec<u32> = fa.iter().zip(fb).map(|(x, y)| x ^ y).collect();
                    assert_eq!(rank2(sum), m as usize, "m={m}: a singular difference");
                }
            }
        }
    }

    /// All off-diagonal |cos| of the rows, by plain f64 dot products.
    fn abs_cos(b: &Basis) -> Vec<f64> {
        let mut out = Vec::new();
        for i in 0..b.n {
            for j in 0..i {
                let dot: f64 = b
                    .row(i)
                    .iter()
                    .zip(b.row(j))
                    .map(|(&x, &y)| x as f64 * y as f64)
                    .sum();
                out.push(dot.abs());
            }
        }
        out
    }

    #[test]
    fn full_sets_are_mutually_unbiased() {
        // D = 4, 16, 64 at full capacity: 12, 144, 2112 vectors.
        for d in [4usize, 16, 64] {
            let p = kerdock_plan(d).unwrap();
            assert_eq!((p.dim, p.capacity), (d, d * (d / 2 + 1)));
            let b = kerdock_basis(p.capacity, d, 7).unwrap();
            for i in 0..b.n {
                let norm: f64 = b.row(i).iter().map(|&x| x as f64 * x as f64).sum();
                assert!((norm - 1.0).abs() < 1e-6, "d={d} row {i} norm {norm}");
            }
            let mu = p.coherence;
            let cos = abs_cos(&b);
            let mut unbiased = 0usize;
            for &c in &cos {
                let zero = c < 1e-6;
                let at_mu = (c - mu).abs() < 1e-6;
                assert!(zero || at_mu, "d={d}: |cos| {c} is neither 0 nor 1/√D");
                unbiased += at_mu as usize;
            }
            // Pairs across bases are at 1/√D, pairs within a basis at 0.
            let n = p.capacity;
            assert_eq!(unbiased, (n * n - p.bases * d * d) / 2, "d={d}");
        }
    }

    #[test]
    fn embeds_in_larger_dims_and_depends_on_the_seed() {
        let b = kerdock_basis(300, 70, 1).unwrap();
        assert_eq!((b.n, b.d), (300, 70));
        let max = abs_cos(&b).into_iter().fold(0.0, f64::max);
        assert!((max - 0.125).abs() < 1e-6, "max {max}");
        // Six columns of 70 stay zero: the vectors live in R^64.
        let zero_cols = (0..70)
            .filter(|&c| (0..b.n).all(|r| b.row(r)[c] == 0.0))
            .count();
        assert_eq!(zero_cols, 6);
        assert_eq!(b, kerdock_basis(300, 70, 1).unwrap());
        assert_ne!(b, kerdock_basis(300, 70, 2).unwrap());
    }

    #[test]
    fn refuses_what_it_cannot_give() {
        assert!(kerdock_plan(3).is_none());
        let e = kerdock_basis(10, 3, 0).unwrap_err().to_string();
        assert!(e.contains("--init") && e.contains("at least 4"), "{e}");
        // R^16 holds 9 bases of 16.
        let e = kerdock_basis(145, 16, 0).unwrap_err().to_string();
        assert!(e.contains("at most 144"), "{e}");
        assert!(kerdock_basis(144, 16, 0).is_ok());
    }
}
