//! Coherence statistics of a stored matrix, computed blockwise.
//!
//! Rows are normalised by their f64 norms (the reported cosines are those of
//! the directions, whatever the stored norms), then C = A·Bᵀ is formed one
//! r × r block at a time over block pairs I ≤ J (upper triangle only), with r
//! chosen from the memory budget; nothing N × N is ever held. The GEMM runs
//! in f64 when N²·d is small enough to be cheap ([`F64_LIMIT`]) and in f32
//! otherwise (|cos| then carries ≈ 1e-6 of rounding); all sums are f64.
//! The histogram counts |cos| in fine bins of width 1e-4 and is re-binned for
//! display over [0, max].

use rayon::prelude::*;
use serde::Serialize;

use super::error::BasisError;
use super::gram::{matmul_nt, Scalar};
use super::io::MatrixFile;
use super::matrix::Basis;
use super::welch::{random_max_cos, welch_bound, RandomMaxCos};

/// Above this many multiply-adds (N²·d/2) the GEMM runs in f32.
pub const F64_LIMIT: f64 = 1e11;
/// Width of the fine histogram bins.
const FINE_WIDTH: f64 = 1e-4;
const FINE_BINS: usize = 10_001;

/// Anything that can hand out rows as f32.
pub trait RowSource: Sync {
    /// Rows.
    fn n(&self) -> usize;
    /// Columns.
    fn d(&self) -> usize;
    /// Rows `start..end` into `out`, row-major.
    fn read_rows(&self, start: usize, end: usize, out: &mut [f32]);
    /// The same rows in f64; sources that hold f64 override this so that an
    /// f64 check of an f64 file sees every bit.
    fn read_rows_f64(&self, start: usize, end: usize, out: &mut [f64]) {
        let d = self.d();
        let mut tmp = vec![0.0f32; (end - start) * d];
        self.read_rows(start, end, &mut tmp);
        out.iter_mut().zip(&tmp).for_each(|(o, &x)| *o = x as f64);
    }
}

impl RowSource for MatrixFile {
    fn n(&self) -> usize {
        self.n
    }
    fn d(&self) -> usize {
        self.d
    }
    fn read_rows(&self, start: usize, end: usize, out: &mut [f32]) {
        MatrixFile::read_rows(self, start, end, out)
    }
    fn read_rows_f64(&self, start: usize, end: usize, out: &mut [f64]) {
        MatrixFile::read_rows_f64(self, start, end, out)
    }
}

impl RowSource for Basis {
    fn n(&self) -> usize {
        self.n
    }
    fn d(&self) -> usize {
        self.d
    }
    fn read_rows(&self, start: usize, end: usize, out: &mut [f32]) {
        out[..(end - start) * self.d].copy_from_slice(&self.data[start * self.d..end * self.d]);
    }
}

/// Options of [`check`].
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Budget for the blocks, bytes.
    pub mem_bytes: u64,
    /// Bins of the displayed histogram.
    pub bins: usize,
    /// Force f32 (`Some(false)`) or f64 (`Some(true)`) GEMM; `None` = by size.
    pub f64_gemm: Option<bool>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            mem_bytes: 1 << 30,
            bins: 20,
            f64_gemm: None,
        }
    }
}

/// One histogram bin: pairs with lo ≤ |cos| < hi.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistBin {
    pub lo: f64,
    pub hi: f64,
    pub count: u64,
}

/// What `check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub n: usize,
    pub d: usize,
    /// Smallest and largest stored row norm.
    pub norm_min: f64,
    pub norm_max: f64,
    /// Off-diagonal |cos| over the N(N−1)/2 pairs.
    pub max_abs_cos: f64,
    pub mean_abs_cos: f64,
    pub min_abs_cos: f64,
    /// A pair reaching `max_abs_cos`.
    pub argmax: [usize; 2],
    /// Signed extremes, and the angle range they give, in degrees.
    pub max_cos: f64,
    pub min_cos: f64,
    pub angle_min_deg: f64,
    pub angle_max_deg: f64,
    pub histogram: Vec<HistBin>,
    pub welch: f64,
    /// max |cos| / Welch (None for N ≤ d, where the bound is 0).
    pub ratio_to_welch: Option<f64>,
    pub random_max_cos: RandomMaxCos,
    pub pairs: u64,
    /// "f32" or "f64": the GEMM precision used.
    pub precision: &'static str,
}

/// Running statistics over a set of pairs.
#[derive(Clone)]
struct Acc {
    max_abs: f64,
    argmax: [usize; 2],
    min_abs: f64,
    max_cos: f64,
    min_cos: f64,
    sum_abs: f64,
    count: u64,
    hist: Vec<u64>,
}

impl Acc {
    fn new() -> Self {
        Acc {
            max_abs: -1.0,
            argmax: [0, 0],
            min_abs: f64::INFINITY,
            max_cos: f64::NEG_INFINITY,
            min_cos: f64::INFINITY,
            sum_abs: 0.0,
            count: 0,
            hist: vec![0; FINE_BINS],
        }
    }

    #[inline]
    fn add(&mut self, c: f64, i: usize, j: usize) {
        let a = c.abs();
        if a > self.max_abs {
            self.max_abs = a;
            self.argmax = [i, j];
        }
        self.min_abs = self.min_abs.min(a);
        self.max_cos = self.max_cos.max(c);
        self.min_cos = self.min_cos.min(c);
        self.sum_abs += a;
        self.count += 1;
        self.hist[((a / FINE_WIDTH) as usize).min(FINE_BINS - 1)] += 1;
    }

    fn merge(mut self, o: Acc) -> Acc {
        if o.max_abs > self.max_abs {
            self.max_abs = o.max_abs;
            self.argmax = o.argmax;
        }
        self.min_abs = self.min_abs.min(o.min_abs);
        self.max_cos = self.max_cos.max(o.max_cos);
        self.min_cos = self.min_cos.min(o.min_cos);
        self.sum_abs += o.sum_abs;
        self.count += o.count;
        self.hist.iter_mut().zip(&o.hist).for_each(|(a, b)| *a += b);
        self
    }
}

trait Elt: Scalar + Default {
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Rows `s..e` of `src` into `out` in this type.
    fn read(src: &dyn RowSource, s: usize, e: usize, out: &mut [Self]);
}
impl Elt for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn read(src: &dyn RowSource, s: usize, e: usize, out: &mut [Self]) {
        src.read_rows(s, e, out)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Elt for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn read(src: &dyn RowSource, s: usize, e: usize, out: &mut [Self]) {
        src.read_rows_f64(s, e, out)
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// The least `mem` that holds blocks of one row (f32 elements): below it
/// the budget cannot be honoured and blocks of one row are used anyway.
pub fn one_row_bytes(d: usize) -> u64 {
    4 * (1 + 2 * d as u64)
}

/// Rows per block so that two r × d blocks and one r × r block fit `mem` bytes.
fn block_rows(n: usize, d: usize, elem: usize, mem: u64) -> usize {
    let (d, elem) = (d as f64, elem as f64);
    // elem·(r² + 2rd) ≤ mem
    let r = (-d + (d * d + mem as f64 / elem).sqrt()).floor() as usize;
    r.clamp(1, n.max(1))
}

/// Coherence statistics of `src`. `on_progress(done, total)` follows the block pairs.
pub fn check(
    src: &dyn RowSource,
    path_for_errors: &std::path::Path,
    opts: &CheckOptions,
    on_progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport, BasisError> {
    let (n, d) = (src.n(), src.d());
    if n < 2 || d == 0 {
        return Err(BasisError::format(
            path_for_errors,
            format!("a {n} × {d} matrix has no pair of rows to compare"),
        ));
    }
    if opts.bins == 0 {
        return Err(BasisError::arg("--bins", "must be at least 1"));
    }
    let norms = row_norms(src, opts.mem_bytes);
    if let Some(k) = norms.iter().position(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(BasisError::format(
            path_for_errors,
            format!("row {k} has norm {}: no direction to compare", norms[k]),
        ));
    }
    let use_f64 = opts
        .f64_gemm
        .unwrap_or((n as f64) * (n as f64) * (d as f64) / 2.0 <= F64_LIMIT);
    let acc = if use_f64 {
        pairs_stats::<f64>(src, &norms, opts.mem_bytes, on_progress)
    } else {
        pairs_stats::<f32>(src, &norms, opts.mem_bytes, on_progress)
    };
    let welch = welch_bound(n, d);
    let pairs = acc.count;
    let to_deg = |c: f64| c.clamp(-1.0, 1.0).acos().to_degrees();
    Ok(CheckReport {
        n,
        d,
        norm_min: norms.iter().cloned().fold(f64::INFINITY, f64::min),
        norm_max: norms.iter().cloned().fold(0.0, f64::max),
        max_abs_cos: acc.max_abs,
        mean_abs_cos: acc.sum_abs / pairs as f64,
        min_abs_cos: acc.min_abs,
        argmax: acc.argmax,
        max_cos: acc.max_cos,
        min_cos: acc.min_cos,
        angle_min_deg: to_deg(acc.max_cos),
        angle_max_deg: to_deg(acc.min_cos),
        histogram: display_histogram(&acc.hist, acc.max_abs, opts.bins),
        welch,
        ratio_to_welch: (welch > 0.0).then(|| acc.max_abs / welch),
        random_max_cos: random_max_cos(n, d),
        pairs,
        precision: if use_f64 { "f64" } else { "f32" },
    })
}

fn row_norms(src: &dyn RowSource, mem: u64) -> Vec<f64> {
    let (n, d) = (src.n(), src.d());
    let rows = ((mem / 8 / d as u64).max(1) as usize).min(n);
    let mut buf = vec![0.0f64; rows * d];
    let mut norms = Vec::with_capacity(n);
    let mut s = 0;
    while s < n {
        let e = (s + rows).min(n);
        src.read_rows_f64(s, e, &mut buf[..(e - s) * d]);
        let part: Vec<f64> = buf[..(e - s) * d]
            .par_chunks(d)
            .map(|r| r.iter().map(|&x| x * x).sum::<f64>().sqrt())
            .collect();
        norms.extend(part);
        s = e;
    }
    norms
}

/// Rows `s..e` of `src`, scaled to unit length, into `out` (read in place:
/// no staging buffer beyond the two blocks `block_rows` budgets for).
fn load_unit<T: Elt>(src: &dyn RowSource, norms: &[f64], s: usize, e: usize, out: &mut [T]) {
    let d = src.d();
    let out = &mut out[..(e - s) * d];
    T::read(src, s, e, out);
    out.par_chunks_mut(d).enumerate().for_each(|(r, o)| {
        let inv = 1.0 / norms[s + r];
        o.iter_mut()
            .for_each(|x| *x = T::from_f64(x.to_f64() * inv));
    });
}

fn pairs_stats<T: Elt>(
    src: &dyn RowSource,
    norms: &[f64],
    mem: u64,
    on_progress: &mut dyn FnMut(u64, u64),
) -> Acc {
    let (n, d) = (src.n(), src.d());
    let r = block_rows(n, d, std::mem::size_of::<T>(), mem);
    let nb = n.div_ceil(r);
    let total = (nb * (nb + 1) / 2) as u64;
    let mut a = vec![T::default(); r * d];
    let mut b = vec![T::default(); r * d];
    let mut c = vec![T::default(); r * r];
    let mut acc = Acc::new();
    let mut done = 0u64;
    for bi in 0..nb {
        let (s, e) = (bi * r, ((bi + 1) * r).min(n));
        load_unit(src, norms, s, e, &mut a);
        for bj in bi..nb {
            let (t, f) = (bj * r, ((bj + 1) * r).min(n));
            let rhs: &[T] = if bj == bi {
                &a
            } else {
                load_unit(src, norms, t, f, &mut b);
                &b
            };
            let (rows, w) = (e - s, f - t);
            matmul_nt(rows, w, d, &a, d, rhs, d, &mut c, w);
            let diag = bj == bi;
            let part = c[..rows * w]
                .par_chunks(w)
                .enumerate()
                .fold(Acc::new, |mut acc, (ri, row)| {
                    let from = if diag { ri + 1 } else { 0 };
                    for (cj, &v) in row.iter().enumerate().skip(from) {
                        acc.add(v.to_f64(), s + ri, t + cj);
                    }
                    acc
                })
                .reduce(Acc::new, Acc::merge);
            acc = acc.merge(part);
            done += 1;
            on_progress(done, total);
        }
    }
    acc
}

/// Re-bins the fine histogram into `bins` equal bins covering [0, max].
fn display_histogram(fine: &[u64], max: f64, bins: usize) -> Vec<HistBin> {
    let last = ((max / FINE_WIDTH) as usize).min(FINE_BINS - 1);
    let per = (last + 1).div_ceil(bins).max(1);
    // Bins past the last fine one would all start above `max`: never
    // counted out one by one (`--bins` may be any number).
    (0..bins.min(last + 1))
        .map(|k| {
            let (lo, hi) = (k * per, ((k + 1) * per).min(FINE_BINS));
            HistBin {
                lo: lo as f64 * FINE_WIDTH,
                hi: hi as f64 * FINE_WIDTH,
                count: fine.get(lo..hi).map(|s| s.iter().sum()).unwrap_or(0),
            }
        })
        .filter(|b| b.lo <= max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_number_of_bins_is_cut_to_the_fine_ones() {
        // `--bins 18446744073709551615` counted its bins out one by one.
        let mut fine = vec![0u64; FINE_BINS];
        fine[0] = 3;
        fine[1234] = 4;
        let max = 1234.5 * FINE_WIDTH;
        for bins in [usize::MAX, 1 << 40, 1235, 1236] {
            let h = display_histogram(&fine, max, bins);
            assert_eq!(h.len(), 1235, "{bins} bins");
            assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 7, "{bins} bins");
        }
        let h = display_histogram(&fine, max, 2);
        assert_eq!(h.iter().map(|b| b.count).collect::<Vec<_>>(), [3, 4]);
    }

    fn direct(b: &Basis) -> (f64, f64, f64) {
        let (n, d) = (b.n, b.d);
        let norm = |i: usize| {
            b.row(i)
                .iter()
                .map(|&x| x as f64 * x as f64)
                .sum::<f64>()
                .sqrt()
        };
        let (mut mx, mut mn, mut sum) = (0.0f64, f64::INFINITY, 0.0);
        for i in 0..n {
            for j in i + 1..n {
                let dot: f64 = (0..d)
                    .map(|k| b.data[i * d + k] as f64 * b.data[j * d + k] as f64)
                    .sum();
                let c = (dot / (norm(i) * norm(j))).abs();
                mx = mx.max(c);
                mn = mn.min(c);
                sum += c;
            }
        }
        (mx, mn, sum / (n * (n - 1) / 2) as f64)
    }

    #[test]
    fn blockwise_matches_direct_in_both_precisions() {
        let mut b = Basis::random(157, 23, 9);
        // Uneven norms: check must compare directions.
        for (i, x) in b.data.iter_mut().enumerate() {
            *x *= 1.0 + (i / 23 % 5) as f32;
        }
        let (mx, mn, mean) = direct(&b);
        for f64_gemm in [true, false] {
            // A tiny budget forces many blocks, including ragged last ones.
            let opts = CheckOptions {
                mem_bytes: 8 * 40 * 40 * 3,
                bins: 10,
                f64_gemm: Some(f64_gemm),
            };
            let r = check(&b, std::path::Path::new("mem"), &opts, &mut |_, _| {}).unwrap();
            let tol = if f64_gemm { 1e-12 } else { 2e-6 };
            assert!(
                (r.max_abs_cos - mx).abs() < tol,
                "{} vs {mx}",
                r.max_abs_cos
            );
            assert!((r.min_abs_cos - mn).abs() < tol);
            assert!((r.mean_abs_cos - mean).abs() < tol);
            assert_eq!(r.pairs, 157 * 156 / 2);
            assert_eq!(r.histogram.iter().map(|h| h.count).sum::<u64>(), r.pairs);
            assert!((r.norm_max - 5.0).abs() < 1e-5 && (r.norm_min - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn block_rows_fits_budget() {
        let r = block_rows(100_000, 5000, 4, 2 << 30);
        assert!(4 * (r * r + 2 * r * 5000) as u64 <= 2 << 30);
        assert!(r > 10_000);
    }
}
