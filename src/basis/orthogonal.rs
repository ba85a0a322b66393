//! Orthonormal rows, the exact answer when there are no more classes than
//! dimensions (N ≤ d): max |cos| = 0, which no optimiser reaches from random
//! vectors (the paper's loop ends near 4e-3 at (50, 100) after 100,000 steps).
//!
//! The rows are a seeded Gaussian matrix orthonormalised by block classical
//! Gram–Schmidt with re-orthogonalisation (CGS2, which is as accurate as
//! Householder QR for a full-rank start), in f64 through the same GEMM as the
//! Gram kernel, so a 5000 × 5000 basis takes seconds. The rows are therefore
//! a uniformly random orthonormal set: dense, with no preferred coordinate.
//!
//! Invariant: the result has unit rows whose pairwise |cos| is zero up to the
//! final rounding to f32 (≈ 1e-7).

use super::error::BasisError;
use super::gram::{matmul_nt, matmul_scaled_acc_nn};
use super::matrix::Basis;

/// Rows orthonormalised together by one GEMM pair.
const BLOCK: usize = 64;

/// N orthonormal rows in R^d (N ≤ d) from the Gaussian matrix of `seed`.
pub fn orthonormal_basis(n: usize, d: usize, seed: u64) -> Result<Basis, BasisError> {
    if n > d {
        return Err(BasisError::arg(
            "--init",
            format!("orthonormal rows need N ≤ d, but N = {n} > d = {d}"),
        ));
    }
    let start = Basis::random(n, d, seed);
    let mut q: Vec<f64> = start.data.iter().map(|&x| x as f64).collect();
    let mut coef = vec![0.0f64; BLOCK * n];
    for j0 in (0..n).step_by(BLOCK) {
        let m = BLOCK.min(n - j0);
        let (done, rest) = q.split_at_mut(j0 * d);
        let block = &mut rest[..m * d];
        // Twice: one pass leaves an error proportional to the condition of the
        // start; the second brings it to rounding level (Kahan's "twice is enough").
        for _ in 0..2 {
            if j0 > 0 {
                matmul_nt(m, j0, d, block, d, done, d, &mut coef, j0);
                matmul_scaled_acc_nn(m, d, j0, -1.0, &coef, j0, done, d, block, d);
            }
            for i in 0..m {
                let (prev, cur) = block.split_at_mut(i * d);
                let row = &mut cur[..d];
                for p in prev.chunks_exact(d) {
                    let r: f64 = row.iter().zip(p).map(|(a, b)| a * b).sum();
                    row.iter_mut().zip(p).for_each(|(a, b)| *a -= r * b);
                }
                let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
                if norm.is_nan() || norm <= 1e-8 {
                    // Probability zero for Gaussian rows; a clear error rather
                    // than a NaN row if it ever happens.
                    return Err(BasisError::arg(
                        "--init",
                        format!("row {} became dependent while orthonormalising", j0 + i),
                    ));
                }
                row.iter_mut().for_each(|a| *a /= norm);
            }
        }
    }
    let data = q.iter().map(|&x| x as f32).collect();
    Ok(Basis { n, d, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max off-diagonal |cos| and max |‖row‖ − 1| by the direct O(N²·d) loop.
    fn direct(b: &Basis) -> (f64, f64) {
        let mut max_cos = 0.0f64;
        let mut max_norm_err = 0.0f64;
        for i in 0..b.n {
            let ri = b.row(i);
            let ni: f64 = ri.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            max_norm_err = max_norm_err.max((ni - 1.0).abs());
            for j in 0..i {
                let c: f64 = ri
                    .iter()
                    .zip(b.row(j))
                    .map(|(&x, &y)| x as f64 * y as f64)
                    .sum();
                max_cos = max_cos.max(c.abs());
            }
        }
        (max_cos, max_norm_err)
    }

    #[test]
    fn rows_are_orthonormal_across_and_within_blocks() {
        // 150 rows: two full blocks and a partial one; d not a multiple of anything.
        for (n, d) in [(150, 150), (150, 257), (1, 3), (64, 64)] {
            let b = orthonormal_basis(n, d, 7).unwrap();
            assert_eq!((b.n, b.d, b.data.len()), (n, d, n * d));
            let (max_cos, norm_err) = direct(&b);
            assert!(max_cos < 1e-6, "({n}, {d}): max |cos| {max_cos}");
            assert!(norm_err < 1e-6, "({n}, {d}): norm error {norm_err}");
        }
    }

    #[test]
    fn dense_seeded_and_refuses_more_rows_than_dimensions() {
        let a = orthonormal_basis(40, 50, 1).unwrap();
        assert_eq!(a, orthonormal_basis(40, 50, 1).unwrap());
        assert_ne!(a, orthonormal_basis(40, 50, 2).unwrap());
        // Not a permutation of the identity: every row spreads over the coordinates.
        let max_entry = a.data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(max_entry < 0.9, "{max_entry}");
        let err = orthonormal_basis(51, 50, 1).unwrap_err();
        assert!(err.to_string().contains("N ≤ d"), "{err}");
    }
}
