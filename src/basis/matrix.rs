//! The in-memory basis matrix: N rows of d f32, row-major, row k = class k.
//!
//! Invariant: `data.len() == n * d`. Rows are unit length after
//! [`Basis::normalize_rows`]; norms are accumulated in f64 so that
//! renormalising every step does not drift.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// A row-major N × d f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Basis {
    /// Number of rows (classes).
    pub n: usize,
    /// Row length (embedding dimension).
    pub d: usize,
    /// `n * d` values, row-major.
    pub data: Vec<f32>,
}

impl Basis {
    /// Wraps row-major data; `None` when the length is not `n * d`.
    pub fn from_vec(n: usize, d: usize, data: Vec<f32>) -> Option<Self> {
        (n.checked_mul(d) == Some(data.len())).then_some(Basis { n, d, data })
    }

    /// Rows drawn i.i.d. standard normal and L2-normalised.
    ///
    /// Row i uses ChaCha8 stream i of `seed`, so the result depends on the seed
    /// only, not on the number of threads.
    pub fn random(n: usize, d: usize, seed: u64) -> Self {
        let mut data = vec![0.0f32; n * d];
        if d > 0 {
            data.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i as u64);
                for x in row.iter_mut() {
                    *x = StandardNormal.sample(&mut rng);
                }
            });
        }
        let mut b = Basis { n, d, data };
        b.normalize_rows();
        b
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// Scales every row to unit L2 norm (a zero row is left as is).
    pub fn normalize_rows(&mut self) {
        normalize_rows(&mut self.data, self.d);
    }
}

/// Scales every `d`-long row of `data` to unit L2 norm (f64 accumulation).
pub(crate) fn normalize_rows(data: &mut [f32], d: usize) {
    if d == 0 {
        return;
    }
    data.par_chunks_mut(d).for_each(|row| {
        let s: f64 = row.iter().map(|&x| x as f64 * x as f64).sum();
        if s > 0.0 {
            let inv = (1.0 / s.sqrt()) as f32;
            row.iter_mut().for_each(|x| *x *= inv);
        }
    });
}
