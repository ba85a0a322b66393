//! A structured start: Steiner equiangular tight frames (Fickus, Mixon and
//! Tremain, 2012), whose vectors sit exactly on the Welch bound.
//!
//! Why: for N ≈ 5·d the optimisers stop at 1.24–1.27 × Welch and a Kerdock
//! start needs d to be a power of 4 (1.118 × at N = 5·d). The lines of
//! AG(3, 5) give 4000 vectors in R^775 at max |cos| 1/31, the Welch bound
//! itself; any 3875 of them (N/d = 5) are at 1.004 × Welch.
//!
//! Construction, checked in the tests rather than trusted:
//! - A 2-(v, k, 1) design: v points, b blocks of k points, every pair of
//!   points in exactly one block, so every point lies in r = (v−1)/(k−1)
//!   blocks. The b blocks are the coordinates.
//! - A real Hadamard matrix H of order r + 1 (Sylvester's, so r + 1 must be a
//!   power of two) with its all-ones first row removed: r rows, r + 1
//!   columns.
//! - Point p gives r + 1 vectors: column c of that matrix, scaled by 1/√r,
//!   written on the r coordinates of the blocks through p.
//! - Two vectors of one point: (r + 1)·δ − 1 over r, i.e. −1/r (columns of H
//!   are orthogonal; the removed row contributes 1·1). Two vectors of
//!   different points: the points share exactly one block, so ±1/r. Every
//!   |cos| is 1/r, and v·(r + 1) vectors in R^b at 1/r is the Welch bound for
//!   that shape.
//!
//! Designs: the lines of the affine and projective geometries AG(m, q) and
//! PG(m, q) over a prime field, kept when r + 1 = (q^m − 1)/(q − 1) + 1 is a
//! power of two. The search runs over (q, m) in code; what it finds is
//! AG(m, 2) (pairs: N = 4^m in R^(2^(m−1)·(2^m−1)), N/d ≈ 2), PG(m, 2)
//! (triples, N/d ≈ 3) and AG(3, 5), PG(3, 5) (r = 31: 4000 in R^775 and
//! 4992 in R^806, N/d ≈ 5.2 and 6.2). N/d is about the block size k, so
//! these help at a few shapes only; elsewhere use a Kerdock or random start.
//!
//! Invariants: rows are exactly unit length (r entries ±1/√r); the output
//! depends on (N, d, seed) only. When d > b the b coordinates go to a
//! seeded choice of the d columns (zeros elsewhere) with seeded signs, as
//! for Kerdock, and an optimiser started there stays in that subspace.

use rayon::prelude::*;

use super::error::BasisError;
use super::matrix::{Basis, Embedding};

/// Primes searched for q. Above 5 none gives r + 1 a power of two for a
/// design that fits in memory (the equation q^2 + q + 2 = 2^s, m = 3, has
/// q = 5 and q = 90 as its only solutions above 2), so this is ample.
const PRIMES: [u32; 18] = [
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61,
];

/// A 2-(v, k, 1) design: the lines of AG(m, q) or PG(m, q), q prime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Design {
    /// PG(m, q) when true, AG(m, q) otherwise.
    pub projective: bool,
    pub m: u32,
    pub q: u32,
    /// v: points.
    pub points: usize,
    /// k: points per line.
    pub block: usize,
    /// b: lines, i.e. the dimension the frame lives in.
    pub blocks: usize,
    /// r: lines through a point.
    pub replication: usize,
}

impl Design {
    /// The lines of AG(m, q) or PG(m, q); `None` on overflow.
    fn new(projective: bool, m: u32, q: u32) -> Option<Design> {
        let q = q as usize;
        let pow = |e: u32| q.checked_pow(e);
        // Points on a line through a fixed point: (q^m − 1)/(q − 1), affine or projective.
        let replication = (pow(m)? - 1) / (q - 1);
        let (points, block) = if projective {
            ((pow(m + 1)? - 1) / (q - 1), q + 1)
        } else {
            (pow(m)?, q)
        };
        let blocks = points.checked_mul(replication)? / block;
        Some(Design {
            projective,
            m,
            q: q as u32,
            points,
            block,
            blocks,
            replication,
        })
    }

    /// "lines of AG(3, 5)".
    pub fn name(&self) -> String {
        let g = if self.projective { 'P' } else { 'A' };
        format!("lines of {g}G({}, {})", self.m, self.q)
    }

    /// Vectors in the frame: v·(r + 1).
    pub fn capacity(&self) -> usize {
        self.points * (self.replication + 1)
    }

    /// Every off-diagonal |cos| of the frame: 1/r.
    pub fn coherence(&self) -> f64 {
        1.0 / self.replication as f64
    }
}

/// Every design of the families above with at most `max_blocks` lines, in
/// the order found.
pub fn steiner_designs(max_blocks: usize) -> Vec<Design> {
    let mut out = Vec::new();
    for q in PRIMES {
        for projective in [false, true] {
            for m in 2.. {
                // Lines grow with m: stop at the first one that is too big.
                match Design::new(projective, m, q) {
                    Some(des) if des.blocks <= max_blocks => {
                        if (des.replication + 1).is_power_of_two() {
                            out.push(des);
                        }
                    }
                    _ => break,
                }
            }
        }
    }
    out
}

/// The design with the lowest coherence that gives N vectors in R^d (the
/// fewest lines on a tie); `None` when none does.
pub fn steiner_plan(n: usize, d: usize) -> Option<Design> {
    steiner_designs(d)
        .into_iter()
        .filter(|des| des.capacity() >= n)
        .min_by_key(|des| (usize::MAX - des.replication, des.blocks))
}

/// [`steiner_plan`], or an error naming `--init` that lists what would fit.
pub fn steiner_fit(n: usize, d: usize) -> Result<Design, BasisError> {
    if let Some(des) = steiner_plan(n, d) {
        return Ok(des);
    }
    let fits = steiner_designs(d);
    let msg = if fits.is_empty() {
        format!("steiner needs --dim of at least 6 (the lines of AG(2, 2)), got {d}")
    } else {
        let mut big = fits;
        big.sort_by_key(|des| std::cmp::Reverse(des.capacity()));
        let list: Vec<String> = big
            .iter()
            .take(3)
            .map(|des| {
                format!(
                    "{} ({} vectors in R^{})",
                    des.name(),
                    des.capacity(),
                    des.blocks
                )
            })
            .collect();
        format!(
            "steiner gives at most {} vectors with --dim {d} ({}); --classes {n} needs a \
             larger --dim or another --init",
            big[0].capacity(),
            list.join(", ")
        )
    };
    Err(BasisError::arg("--init", msg))
}

/// N rows of the Steiner ETF of [`steiner_fit`] in R^d: rows in a seeded
/// order, the b coordinates on a seeded choice of columns with seeded signs.
pub fn steiner_basis(n: usize, d: usize, seed: u64) -> Result<Basis, BasisError> {
    let des = steiner_fit(n, d)?;
    let through = lines_through_points(&des);
    let r = des.replication;
    let place = Embedding::seeded(n, des.capacity(), des.blocks, d, seed);
    let scale = 1.0 / (r as f32).sqrt();
    let mut data = vec![0.0f32; n * d];
    data.par_chunks_mut(d)
        .zip(place.pick.par_iter())
        .for_each(|(row, &v)| {
            let (point, c) = (v / (r + 1), v % (r + 1));
            for (i, &line) in through[point].iter().enumerate() {
                // Row i + 1 of Sylvester's H (row 0, all ones, is the one removed).
                let odd = ((i + 1) & c).count_ones() & 1 == 1;
                let s = if odd { -scale } else { scale };
                row[place.cols[line]] = s * place.signs[line];
            }
        });
    Ok(Basis { n, d, data })
}

/// For each point, the indices of the r lines through it (ascending).
fn lines_through_points(des: &Design) -> Vec<Vec<usize>> {
    let mut through = vec![Vec::with_capacity(des.replication); des.points];
    for (l, line) in lines(des).iter().enumerate() {
        for &p in line {
            through[p].push(l);
        }
    }
    through
}

/// Points as coordinate vectors over GF(q): all of GF(q)^m (affine), or the
/// non-zero vectors of GF(q)^(m+1) whose last non-zero coordinate is 1
/// (projective: one representative per 1-dimensional subspace).
fn points(des: &Design) -> Vec<Vec<u32>> {
    let (q, len) = (des.q, des.m as usize + des.projective as usize);
    let total = (q as usize).pow(len as u32);
    (0..total)
        .map(|mut code| {
            (0..len)
                .map(|_| {
                    let x = (code % q as usize) as u32;
                    code /= q as usize;
                    x
                })
                .collect::<Vec<u32>>()
        })
        .filter(|x| !des.projective || x.iter().rev().find(|&&c| c != 0) == Some(&1))
        .collect()
}

/// The lines of the geometry as sorted point indices, each found once (from
/// the pair of its two lowest points).
fn lines(des: &Design) -> Vec<Vec<usize>> {
    let q = des.q;
    let pts = points(des);
    let code = |x: &[u32]| {
        x.iter()
            .rev()
            .fold(0usize, |a, &c| a * q as usize + c as usize)
    };
    let mut index = vec![usize::MAX; (q as usize).pow(pts[0].len() as u32)];
    for (i, x) in pts.iter().enumerate() {
        index[code(x)] = i;
    }
    let inv: Vec<u32> = (0..q)
        .map(|a| (1..q).find(|&b| a * b % q == 1).unwrap_or(0))
        .collect();
    let lookup = |x: &[u32]| -> usize {
        if !des.projective {
            return index[code(x)];
        }
        let last = x.iter().rev().find(|&&c| c != 0).copied().unwrap_or(1);
        let s = inv[last as usize];
        let y: Vec<u32> = x.iter().map(|&c| c * s % q).collect();
        index[code(&y)]
    };
    let mut out = Vec::with_capacity(des.blocks);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let (a, b) = (&pts[i], &pts[j]);
            let mut line: Vec<usize> = if des.projective {
                // a, and b + t·a for every t.
                std::iter::once(i)
                    .chain((0..q).map(|t| {
                        let y: Vec<u32> = a.iter().zip(b).map(|(&x, &z)| (z + t * x) % q).collect();
                        lookup(&y)
                    }))
                    .collect()
            } else {
                // a + t·(b − a) for every t.
                (0..q)
                    .map(|t| {
                        let y: Vec<u32> = a
                            .iter()
                            .zip(b)
                            .map(|(&x, &z)| (x + t * (z + q - x)) % q)
                            .collect();
                        lookup(&y)
                    })
                    .collect()
            };
            line.sort_unstable();
            if line[0] == i && line[1] == j {
                out.push(line);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::welch::welch_bound;
    use super::*;

    fn design(projective: bool, m: u32, q: u32) -> Design {
        Design::new(projective, m, q).unwrap()
    }

    #[test]
    fn finds_the_expected_families() {
        let found: Vec<(String, usize, usize)> = steiner_designs(1000)
            .iter()
            .map(|des| (des.name(), des.capacity(), des.blocks))
            .collect();
        let want = [
            ("lines of AG(2, 2)", 16, 6),
            ("lines of AG(3, 2)", 64, 28),
            ("lines of AG(4, 2)", 256, 120),
            ("lines of AG(5, 2)", 1024, 496),
            ("lines of PG(2, 2)", 28, 7),
            ("lines of PG(3, 2)", 120, 35),
            ("lines of PG(4, 2)", 496, 155),
            ("lines of PG(5, 2)", 2016, 651),
            ("lines of AG(3, 5)", 4000, 775),
            ("lines of PG(3, 5)", 4992, 806),
        ];
        let want: Vec<(String, usize, usize)> = want
            .iter()
            .map(|&(s, n, b)| (s.to_string(), n, b))
            .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn lines_form_a_steiner_system() {
        for des in steiner_designs(1000) {
            let ls = lines(&des);
            assert_eq!(ls.len(), des.blocks, "{}", des.name());
            let v = des.points;
            let mut pairs = vec![0u8; v * v];
            for l in &ls {
                assert_eq!(l.len(), des.block, "{}", des.name());
                for (a, &p) in l.iter().enumerate() {
                    for &s in &l[a + 1..] {
                        pairs[p * v + s] += 1;
                    }
                }
            }
            for p in 0..v {
                for s in p + 1..v {
                    assert_eq!(pairs[p * v + s], 1, "{}: points {p}, {s}", des.name());
                }
            }
            let through = lines_through_points(&des);
            assert!(through.iter().all(|t| t.len() == des.replication));
        }
    }

    /// Rows as (column, value) lists, for sparse dot products.
    fn sparse(b: &Basis) -> Vec<Vec<(usize, f64)>> {
        (0..b.n)
            .map(|i| {
                b.row(i)
                    .iter()
                    .enumerate()
                    .filter(|(_, &x)| x != 0.0)
                    .map(|(c, &x)| (c, x as f64))
                    .collect()
            })
            .collect()
    }

    fn dot(a: &[(usize, f64)], b: &[(usize, f64)]) -> f64 {
        let (mut i, mut j, mut s) = (0, 0, 0.0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    s += a[i].1 * b[j].1;
                    i += 1;
                    j += 1;
                }
            }
        }
        s
    }

    /// Checks rows `0..rows` against all others: unit norm, every |cos| = mu.
    fn assert_equiangular(b: &Basis, rows: usize, mu: f64, what: &str) {
        let sp = sparse(b);
        for i in 0..rows {
            assert!(
                (dot(&sp[i], &sp[i]) - 1.0).abs() < 1e-6,
                "{what}: row {i} norm"
            );
            for j in 0..b.n {
                if j != i {
                    let c = dot(&sp[i], &sp[j]).abs();
                    assert!(
                        (c - mu).abs() < 1e-6,
                        "{what}: |cos({i}, {j})| = {c}, not {mu}"
                    );
                }
            }
        }
    }

    #[test]
    fn full_frames_sit_on_the_welch_bound() {
        for des in steiner_designs(200) {
            let (n, d) = (des.capacity(), des.blocks);
            let b = steiner_basis(n, d, 3).unwrap();
            // The closed form of the bound, independent of the construction.
            let welch = welch_bound(n, d);
            assert!((des.coherence() - welch).abs() < 1e-12, "{}", des.name());
            assert_equiangular(&b, n, welch, &des.name());
        }
    }

    #[test]
    fn ag35_at_five_classes_per_dim() {
        // 3875 = 5 × 775 of the 4000 vectors; every row against the first 120.
        let b = steiner_basis(3875, 775, 11).unwrap();
        assert_equiangular(&b, 120, 1.0 / 31.0, "AG(3, 5)");
        let ratio = (1.0 / 31.0) / welch_bound(3875, 775);
        assert!(ratio < 1.005, "{ratio}");
        // And the whole frame is at the bound.
        assert!((1.0 / 31.0 - welch_bound(4000, 775)).abs() < 1e-12);
    }

    #[test]
    fn plan_prefers_low_coherence_then_few_lines() {
        // 3000 vectors in R^900: AG(3, 5) and PG(3, 5) both at 1/31; AG uses 775 lines.
        assert_eq!(steiner_plan(3000, 900), Some(design(false, 3, 5)));
        // 400 in R^200: AG(4, 2) is also at 1/15 but holds 256; PG(4, 2) holds 496.
        assert_eq!(steiner_plan(400, 200), Some(design(true, 4, 2)));
        // 4993 in R^10000: AG(7, 2) (16384 in R^8128, 1/127) beats PG(6, 2) (8128 in R^2667, 1/63).
        assert_eq!(steiner_plan(4993, 10_000), Some(design(false, 7, 2)));
        assert_eq!(steiner_plan(10, 5), None);
    }

    #[test]
    fn embeds_in_larger_dims_and_depends_on_the_seed() {
        let b = steiner_basis(100, 40, 1).unwrap(); // PG(3, 2): 120 in R^35
        assert_eq!((b.n, b.d), (100, 40));
        assert_equiangular(&b, 100, 1.0 / 7.0, "PG(3, 2) in R^40");
        let zero_cols = (0..40)
            .filter(|&c| (0..b.n).all(|r| b.row(r)[c] == 0.0))
            .count();
        assert_eq!(zero_cols, 5);
        assert_eq!(b, steiner_basis(100, 40, 1).unwrap());
        assert_ne!(b, steiner_basis(100, 40, 2).unwrap());
    }

    #[test]
    fn refuses_what_it_cannot_give() {
        let e = steiner_basis(10, 5, 0).unwrap_err().to_string();
        assert!(e.contains("--init") && e.contains("at least 6"), "{e}");
        let e = steiner_basis(5000, 800, 0).unwrap_err().to_string();
        assert!(
            e.contains("at most 4000") && e.contains("lines of AG(3, 5) (4000 vectors in R^775)"),
            "{e}"
        );
    }
}
