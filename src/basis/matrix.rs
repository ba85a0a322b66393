//! The in-memory basis matrix: N rows of d f32, row-major, row k = class k.
//!
//! Invariant: `data.len() == n * d`. Rows are unit length after
//! [`Basis::normalize_rows`]; norms are accumulated in f64 so that
//! renormalising every step does not drift.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
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
        add_gaussian(&mut data, d, seed, 1.0);
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

/// Adds `scale`·z to every entry, z i.i.d. standard normal; row i draws from
/// ChaCha8 stream i of `seed`, so the result does not depend on the number
/// of threads.
pub(crate) fn add_gaussian(data: &mut [f32], d: usize, seed: u64, scale: f32) {
    if d == 0 {
        return;
    }
    data.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        for x in row.iter_mut() {
            let z: f32 = StandardNormal.sample(&mut rng);
            *x += scale * z;
        }
    });
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

/// Where a construction's rows and coordinates go in an N × d matrix: which
/// `n` of its `pool` vectors become rows (in a seeded order), and the column
/// and sign of each of its `dim` coordinates (a seeded choice of the d
/// columns). Shared by the structured starts so that they depend on the seed
/// the same way.
pub(crate) struct Embedding {
    /// Row k of the matrix is vector `pick[k]` of the construction.
    pub pick: Vec<usize>,
    /// Coordinate x of the construction goes to column `cols[x]`…
    pub cols: Vec<usize>,
    /// …multiplied by `signs[x]` (±1).
    pub signs: Vec<f32>,
}

impl Embedding {
    /// Requires `n ≤ pool` and `dim ≤ d`.
    pub fn seeded(n: usize, pool: usize, dim: usize, d: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pick: Vec<usize> = (0..pool).collect();
        pick.shuffle(&mut rng);
        pick.truncate(n);
        let mut cols: Vec<usize> = (0..d).collect();
        cols.shuffle(&mut rng);
        cols.truncate(dim);
        let signs = (0..dim)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        Embedding { pick, cols, signs }
    }
}
