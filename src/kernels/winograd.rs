//! Winograd F(2×2, 3×3) convolution on the CPU: the 3×3 stride-1 convolutions that carry most of a ResNet's work,
//! forward and both gradients, with 16 multiplications per 2×2 output tile where im2col needs 36.
//!
//! The output is cut into 2×2 tiles; tile (ty, tx) reads the 4×4 input patch at rows 2ty−p.., columns 2tx−p..
//! (zero outside the image). With the standard matrices (Lavin & Gray, 2016)
//!   U = G·w·Gᵀ (4×4 per filter pair (o, c)),  V = Bᵀ·d·B (4×4 per channel and tile),
//!   M = Σ_c U[o,c] ⊙ V[c]  (16 independent GEMMs [O, C]·[C, T] over T tiles),  Y = Aᵀ·M·A (2×2),
//! and the gradients are the exact adjoints of those linear maps, so they are the gradients of the convolution
//! itself (not an approximation of it):
//!   dM = A·dY·Aᵀ;  dV[k] = U[k]ᵀ·dM[k] then dX += B·dV·Bᵀ scattered back onto the overlapping patches;
//!   dU[k] = Σ dM[k]·V[k]ᵀ then dW = Gᵀ·dU·G.
//!
//! Invariants: the transformed matrices exist for a small group of images per task (thread-local scratch, layout
//! [16][rows][T] so each of the 16 GEMMs reads a contiguous [rows, T] block), never for the whole batch; every output
//! element is written by exactly one tile (tiles that stick out past an odd-sized output are clipped); only 3×3,
//! stride 1 and padding ≤ 2 come here ([`applies`]).
//!
//! The transforms only add, subtract and halve, so F(2×2, 3×3) loses little precision: in f32 the tests find it
//! within 1e-5 (relative to the largest value) of an f64 reference, and equal to the im2col kernels to 1e-13 in f64.

use candle_core::Result;

use super::conv::{for_each_group, sum_over_images, ConvGeom, Plan};
use super::{matmul, zeroed, Float, MatRef};

/// Fewer channels than this on either side and the 16 GEMMs are too thin (K = C) to beat one im2col GEMM with
/// K = 9·C: ResNet stems (C = 3) stay on im2col.
const MIN_CHANNELS: usize = 16;

/// At least this many tiles per GEMM when images are grouped (as for im2col's columns). Larger groups measured
/// slower (`examples/conv_algos.rs`, one thread: 64 beat 256 and 1024 on the 4×4 and 8×8 layers): the
/// transformed matrices, 16·(C+O)·tiles values, should stay in the core's cache between transform and GEMM.
const MIN_TILES: usize = 64;

/// Whether this convolution goes through Winograd.
pub(super) fn applies(g: &ConvGeom) -> bool {
    fits(g) && super::conv_algo() == super::ConvAlgo::Auto
}

/// 3×3, stride 1, padding ≤ 2, enough channels.
fn fits(g: &ConvGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.pad <= 2 && g.c >= MIN_CHANNELS && g.o >= MIN_CHANNELS
}

/// The tiling of one image's output.
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(g: &ConvGeom) -> Self {
        Self {
            th: g.ho.div_ceil(2),
            tw: g.wo.div_ceil(2),
        }
    }

    fn per_image(&self) -> usize {
        self.th * self.tw
    }

    /// Length of a padded input row: input columns −p .. 2·tw+2−p, enough for every patch of a tile row.
    fn row_len(&self) -> usize {
        2 * self.tw + 2
    }
}

/// The image groups of a pass: at least `MIN_TILES` tiles per GEMM, however the groups run.
fn plan(g: &ConvGeom, tiles: &Tiles) -> Plan {
    Plan::new(g.n, tiles.per_image(), MIN_TILES, g.n)
}

/// U[k][o][c] = (G·w[o,c]·Gᵀ)[k] for every filter pair.
fn transform_weights<T: Float>(g: &ConvGeom, w: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let (o_n, c_n) = (g.o, g.c);
    let mut u = vec![T::ZERO; 16 * o_n * c_n];
    for (oc, f) in w.chunks_exact(9).enumerate().take(o_n * c_n) {
        // t = G·f (4×3), then u = t·Gᵀ (4×4).
        let mut t = [[T::ZERO; 3]; 4];
        for j in 0..3 {
            let (a, b, c) = (f[j], f[3 + j], f[6 + j]);
            t[0][j] = a;
            t[1][j] = half * (a + b + c);
            t[2][j] = half * (a - b + c);
            t[3][j] = c;
        }
        for (r, row) in t.iter().enumerate() {
            let (a, b, c) = (row[0], row[1], row[2]);
            let vals = [a, half * (a + b + c), half * (a - b + c), c];
            for (s, v) in vals.into_iter().enumerate() {
                u[(r * 4 + s) * o_n * c_n + oc] = v;
            }
        }
    }
    u
}

/// dW[o,c] = Gᵀ·dU[o,c]·G for every filter pair (the adjoint of [`transform_weights`]).
fn untransform_weight_grad<T: Float>(g: &ConvGeom, du: &[T]) -> Vec<T> {
    let half = T::from_f64(0.5);
    let oc_n = g.o * g.c;
    let mut dw = vec![T::ZERO; oc_n * 9];
    for (oc, out) in dw.chunks_exact_mut(9).enumerate() {
        let at = |k: usize| du[k * oc_n + oc];
        // q = dU·G (4×3), then dw = Gᵀ·q (3×3).
        let mut q = [[T::ZERO; 3]; 4];
        for (r, row) in q.iter_mut().enumerate() {
            let (a, b, c, d) = (at(r * 4), at(r * 4 + 1), at(r * 4 + 2), at(r * 4 + 3));
            *row = [a + half * (b + c), half * (b - c), half * (b + c) + d];
        }
        for j in 0..3 {
            let (a, b, c, d) = (q[0][j], q[1][j], q[2][j], q[3][j]);
            out[j] = a + half * (b + c);
            out[3 + j] = half * (b - c);
            out[6 + j] = half * (b + c) + d;
        }
    }
    dw
}

/// `dst[i] = f(a[i], b[i])`: the element-wise form every transform below is written in, so that the compiler turns
/// each step into vector instructions over a run of tiles (one lane per tile).
#[inline(always)]
fn map2<T: Copy>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

/// `dst[i] = f(a[i], b[i], c[i])`.
#[inline(always)]
fn map3<T: Copy>(dst: &mut [T], a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) {
    for (((d, &x), &y), &z) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d = f(x, y, z);
    }
}

/// Splits a run of values into its even- and odd-indexed elements (a shorter `e`/`o` is filled as far as it goes;
/// a missing last odd element leaves `o` as it was).
#[inline(always)]
fn deinterleave<T: Copy>(src: &[T], e: &mut [T], o: &mut [T]) {
    let pairs = src.chunks_exact(2);
    let last = pairs.remainder().first().copied();
    let full = pairs.len();
    for ((pair, e), o) in pairs.zip(e.iter_mut()).zip(o.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    if let (Some(v), Some(e)) = (last, e.get_mut(full)) {
        *e = v;
    }
}

/// The inverse of [`deinterleave`] for a whole even-length `dst`.
#[inline(always)]
fn interleave<T: Copy>(e: &[T], o: &[T], dst: &mut [T]) {
    for ((pair, &e), &o) in dst.chunks_exact_mut(2).zip(e).zip(o) {
        pair[0] = e;
        pair[1] = o;
    }
}

/// Mutable runs of `n` elements at each of `starts` in `buf` (the starts must be `n` or more apart, in order).
fn runs_mut<'a, T, const K: usize>(
    buf: &'a mut [T],
    starts: [usize; K],
    n: usize,
) -> [&'a mut [T]; K] {
    let mut rest = buf;
    let mut consumed = 0;
    let mut out: [Option<&'a mut [T]>; K] = std::array::from_fn(|_| None);
    for (slot, s) in out.iter_mut().zip(starts) {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(s - consumed);
        let (run, tail) = tail.split_at_mut(n);
        *slot = Some(run);
        rest = tail;
        consumed = s + n;
    }
    out.map(|r| r.unwrap_or_default())
}

/// V[k][c][off + tile] = (Bᵀ·d·B)[k] for every channel and tile of one image `x` ([C, H, W]); `v` is [16][C][ld].
///
/// Per tile row: the 4 patch rows (padded, input columns −p..) split into even and odd columns, so that tile tx's
/// patch columns 2tx..2tx+3 are e[tx], o[tx], e[tx+1], o[tx+1] and every step is element-wise over tiles.
#[inline(always)]
fn transform_input_body<T: Float>(
    g: &ConvGeom,
    tl: &Tiles,
    x: &[T],
    v: &mut [T],
    ld: usize,
    off: usize,
) {
    let (n, n1) = (tl.tw, tl.tw + 1);
    let mut row = vec![T::ZERO; tl.row_len()];
    // d: the 4 patch rows as [e | o] pairs; t = Bᵀ·d likewise.
    let mut d = vec![T::ZERO; 8 * n1];
    let mut t = vec![T::ZERO; 8 * n1];
    let plane_stride = g.c * ld;
    for (c, xc) in x.chunks_exact(g.h * g.w).enumerate().take(g.c) {
        for ty in 0..tl.th {
            for (i, di) in d.chunks_exact_mut(2 * n1).enumerate() {
                row.fill(T::ZERO);
                let iy = (2 * ty + i) as isize - g.pad as isize;
                if iy >= 0 && (iy as usize) < g.h {
                    let iy = iy as usize;
                    row[g.pad..g.pad + g.w].copy_from_slice(&xc[iy * g.w..(iy + 1) * g.w]);
                }
                let (e, o) = di.split_at_mut(n1);
                deinterleave(&row, e, o);
            }
            let (d0, d1, d2, d3) = (
                &d[..2 * n1],
                &d[2 * n1..4 * n1],
                &d[4 * n1..6 * n1],
                &d[6 * n1..],
            );
            let [t0, t1, t2, t3] = runs_mut(&mut t, [0, 2 * n1, 4 * n1, 6 * n1], 2 * n1);
            map2(t0, d0, d2, |a, b| a - b);
            map2(t1, d1, d2, |a, b| a + b);
            map2(t2, d2, d1, |a, b| a - b);
            map2(t3, d1, d3, |a, b| a - b);
            let base = c * ld + off + ty * tl.tw;
            for (r, tr) in t.chunks_exact(2 * n1).enumerate() {
                let (e, o) = tr.split_at(n1);
                let (e0, e1, o0, o1) = (&e[..n], &e[1..], &o[..n], &o[1..]);
                let at = |s: usize| (4 * r + s) * plane_stride + base;
                let [v0, v1, v2, v3] = runs_mut(v, [at(0), at(1), at(2), at(3)], n);
                map2(v0, e0, e1, |a, b| a - b);
                map2(v1, o0, e1, |a, b| a + b);
                map2(v2, e1, o0, |a, b| a - b);
                map2(v3, o0, o1, |a, b| a - b);
            }
        }
    }
}

/// y[o] (one image, [O, Ho, Wo]) = Aᵀ·M·A for every output channel and tile; `m` is [16][O][ld].
#[inline(always)]
fn transform_output_body<T: Float>(
    g: &ConvGeom,
    tl: &Tiles,
    m: &[T],
    y: &mut [T],
    ld: usize,
    off: usize,
) {
    let n = tl.tw;
    let plane_stride = g.o * ld;
    // s = Aᵀ·M (2×4 runs), then the two output rows' even and odd columns.
    let mut s = vec![T::ZERO; 8 * n];
    let mut out = vec![T::ZERO; 4 * n];
    for (o, yo) in y.chunks_exact_mut(g.ho * g.wo).enumerate().take(g.o) {
        for ty in 0..tl.th {
            let base = o * ld + off + ty * tl.tw;
            let mk: [&[T]; 16] = std::array::from_fn(|k| &m[k * plane_stride + base..][..n]);
            for (q, sq) in s.chunks_exact_mut(2 * n).enumerate() {
                let (s0, s1) = sq.split_at_mut(n);
                map3(s0, mk[q], mk[4 + q], mk[8 + q], |a, b, c| a + b + c);
                map3(s1, mk[4 + q], mk[8 + q], mk[12 + q], |a, b, c| a - b - c);
            }
            // s[q] = [s0_q | s1_q]; row r of y: even = s_r0 + s_r1 + s_r2, odd = s_r1 − s_r2 − s_r3.
            for r in 0..2 {
                let sq = |q: usize| &s[q * 2 * n + r * n..][..n];
                let (ye, yodd) = out[2 * r * n..2 * (r + 1) * n].split_at_mut(n);
                map3(ye, sq(0), sq(1), sq(2), |a, b, c| a + b + c);
                map3(yodd, sq(1), sq(2), sq(3), |a, b, c| a - b - c);
            }
            for r in 0..2 {
                let oy = 2 * ty + r;
                if oy >= g.ho {
                    break;
                }
                let (ye, yodd) = out[2 * r * n..2 * (r + 1) * n].split_at(n);
                let row = &mut yo[oy * g.wo..(oy + 1) * g.wo];
                for ((pair, &e), &od) in row.chunks_mut(2).zip(ye).zip(yodd) {
                    pair[0] = e;
                    if let Some(p1) = pair.get_mut(1) {
                        *p1 = od;
                    }
                }
            }
        }
    }
}

/// dM[k][o][off + tile] = (A·dY·Aᵀ)[k] for one image's output gradient `dy` ([O, Ho, Wo]; zero past its edge).
#[inline(always)]
fn transform_output_grad_body<T: Float>(
    g: &ConvGeom,
    tl: &Tiles,
    dy: &[T],
    dm: &mut [T],
    ld: usize,
    off: usize,
) {
    let n = tl.tw;
    let plane_stride = g.o * ld;
    // The tile row's two dY rows as even/odd columns (zero past the edge), then q_r = dY[r]·Aᵀ (4 runs per row).
    let mut eo = vec![T::ZERO; 4 * n];
    let mut q = vec![T::ZERO; 8 * n];
    for (o, dyo) in dy.chunks_exact(g.ho * g.wo).enumerate().take(g.o) {
        for ty in 0..tl.th {
            eo.fill(T::ZERO);
            for (r, half) in eo.chunks_exact_mut(2 * n).enumerate() {
                let oy = 2 * ty + r;
                if oy < g.ho {
                    let (e, od) = half.split_at_mut(n);
                    deinterleave(&dyo[oy * g.wo..(oy + 1) * g.wo], e, od);
                }
            }
            for (r, qr) in q.chunks_exact_mut(4 * n).enumerate() {
                let (e, od) = eo[2 * r * n..2 * (r + 1) * n].split_at(n);
                let [q0, q1, q2, q3] = runs_mut(qr, [0, n, 2 * n, 3 * n], n);
                q0.copy_from_slice(e);
                map2(q1, e, od, |a, b| a + b);
                map2(q2, e, od, |a, b| a - b);
                map2(q3, e, od, |_, b| T::ZERO - b);
            }
            // dM rows: [q0, q0 + q1, q0 − q1, −q1] (q0, q1 the two dY rows' runs).
            let base = o * ld + off + ty * tl.tw;
            for j in 0..4 {
                let (qa, qb) = (&q[j * n..][..n], &q[4 * n + j * n..][..n]);
                let at = |i: usize| (4 * i + j) * plane_stride + base;
                let [m0, m1, m2, m3] = runs_mut(dm, [at(0), at(1), at(2), at(3)], n);
                m0.copy_from_slice(qa);
                map2(m1, qa, qb, |a, b| a + b);
                map2(m2, qa, qb, |a, b| a - b);
                map2(m3, qa, qb, |_, b| T::ZERO - b);
            }
        }
    }
}

/// dx (one image, [C, H, W], accumulated into) += B·dV·Bᵀ for every channel and tile, each 4×4 result added back
/// onto the patch it came from (the adjoint of [`transform_input`]); `dv` is [16][C][ld].
#[inline(always)]
fn transform_input_grad_body<T: Float>(
    g: &ConvGeom,
    tl: &Tiles,
    dv: &[T],
    dx: &mut [T],
    ld: usize,
    off: usize,
) {
    let n = tl.tw;
    let rl = tl.row_len();
    let plane_stride = g.c * ld;
    // p = dV·Bᵀ (16 runs, row-major [r][q]), dd = B·p likewise, then one padded row as even/odd columns.
    let mut p = vec![T::ZERO; 16 * n];
    let mut dd = vec![T::ZERO; 16 * n];
    let mut eo = vec![T::ZERO; 2 * (n + 1)];
    let mut row = vec![T::ZERO; rl];
    for (c, dxc) in dx.chunks_exact_mut(g.h * g.w).enumerate().take(g.c) {
        for ty in 0..tl.th {
            let base = c * ld + off + ty * tl.tw;
            let dk = |k: usize| &dv[k * plane_stride + base..][..n];
            for (r, pr) in p.chunks_exact_mut(4 * n).enumerate() {
                let [p0, p1, p2, p3] = runs_mut(pr, [0, n, 2 * n, 3 * n], n);
                let (a, b, cc, d) = (dk(4 * r), dk(4 * r + 1), dk(4 * r + 2), dk(4 * r + 3));
                p0.copy_from_slice(a);
                map3(p1, b, cc, d, |b, c, d| b - c + d);
                map3(p2, b, cc, a, |b, c, a| b + c - a);
                map2(p3, d, d, |_, d| T::ZERO - d);
            }
            let pr = |r: usize| &p[4 * r * n..][..4 * n];
            let [dd0, dd1, dd2, dd3] = runs_mut(&mut dd, [0, 4 * n, 8 * n, 12 * n], 4 * n);
            dd0.copy_from_slice(pr(0));
            map3(dd1, pr(1), pr(2), pr(3), |b, c, d| b - c + d);
            map3(dd2, pr(1), pr(2), pr(0), |b, c, a| b + c - a);
            map2(dd3, pr(3), pr(3), |_, d| T::ZERO - d);
            // Row i of the patches: tile t covers padded columns 2t..2t+3, so padded column 2m gets dd[i][0] of tile
            // m and dd[i][2] of tile m−1, column 2m+1 dd[i][1] of tile m and dd[i][3] of tile m−1.
            for (i, di) in dd.chunks_exact(4 * n).enumerate() {
                let iy = (2 * ty + i) as isize - g.pad as isize;
                if iy < 0 || iy as usize >= g.h {
                    continue;
                }
                let (e, od) = eo.split_at_mut(n + 1);
                e[n] = T::ZERO;
                od[n] = T::ZERO;
                e[..n].copy_from_slice(&di[..n]);
                od[..n].copy_from_slice(&di[n..2 * n]);
                for (x, &v) in e[1..].iter_mut().zip(&di[2 * n..3 * n]) {
                    *x += v;
                }
                for (x, &v) in od[1..].iter_mut().zip(&di[3 * n..]) {
                    *x += v;
                }
                interleave(e, od, &mut row);
                let iy = iy as usize;
                for (d, &v) in dxc[iy * g.w..(iy + 1) * g.w].iter_mut().zip(&row[g.pad..]) {
                    *d += v;
                }
            }
        }
    }
}

/// Defines `$name(g, tl, src, dst, ld, off)` running `$body` compiled for AVX2 when the CPU has it: the crate is
/// built for baseline x86-64, whose SSE2 gives the element-wise loops of the transforms 4 f32 lanes; AVX2 gives 8.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* $name:ident => $body:ident) => {
        $(#[$doc])*
        fn $name<T: Float>(g: &ConvGeom, tl: &Tiles, src: &[T], dst: &mut [T], ld: usize, off: usize) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<T: Float>(
                    g: &ConvGeom,
                    tl: &Tiles,
                    src: &[T],
                    dst: &mut [T],
                    ld: usize,
                    off: usize,
                ) {
                    $body(g, tl, src, dst, ld, off)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above); the body is safe code.
                    return unsafe { avx2(g, tl, src, dst, ld, off) };
                }
            }
            $body(g, tl, src, dst, ld, off)
        }
    };
}

with_avx2!(
    /// [`transform_input_body`]: (x of one image, V).
    transform_input => transform_input_body
);
with_avx2!(
    /// [`transform_output_body`]: (M, y of one image).
    transform_output => transform_output_body
);
with_avx2!(
    /// [`transform_output_grad_body`]: (dY of one image, dM).
    transform_output_grad => transform_output_grad_body
);
with_avx2!(
    /// [`transform_input_grad_body`]: (dV, dX of one image).
    transform_input_grad => transform_input_grad_body
);

/// A whole buffer of 16 equal blocks, each read as a matrix with these strides.
fn mat<T>(data: &[T], rs: usize, cs: usize) -> MatRef<'_, T> {
    MatRef { data, rs, cs }
}

/// The 16 independent GEMMs of a pass: block k of `dst` ([m, n], contiguous) = (`accumulate` ? itself : 0) +
/// block k of `lhs` · block k of `rhs`, where each buffer holds 16 equal blocks.
#[allow(clippy::too_many_arguments)] // a GEMM's shape, operands and options
fn gemm16<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    par: gemm::Parallelism,
) -> Result<()> {
    let (lb, rb) = (lhs.data.len() / 16, rhs.data.len() / 16);
    for (i, d) in dst.chunks_exact_mut(m * n).take(16).enumerate() {
        let l = mat(&lhs.data[i * lb..(i + 1) * lb], lhs.rs, lhs.cs);
        let r = mat(&rhs.data[i * rb..(i + 1) * rb], rhs.rs, rhs.cs);
        matmul(m, n, k, d, l, r, accumulate, par)?;
    }
    Ok(())
}

/// y = conv(x, w) for a 3×3 stride-1 convolution ([`applies`]).
pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Result<Vec<T>> {
    let tl = Tiles::new(g);
    let plan = plan(g, &tl);
    let u = transform_weights(g, w);
    let out_image = g.o * g.ho * g.wo;
    let mut y = zeroed::<T>(g.n * out_image);
    for_each_group(&mut y, out_image, &plan, |images, y_grp| {
        let cols = images.len() * tl.per_image();
        T::with_scratch(16 * (g.c + g.o) * cols, |buf| {
            let (v, m) = buf.split_at_mut(16 * g.c * cols);
            for (j, img) in images.clone().enumerate() {
                let x_n = &x[img * g.c * g.h * g.w..(img + 1) * g.c * g.h * g.w];
                transform_input(g, &tl, x_n, v, cols, j * tl.per_image());
            }
            let (u, v) = (mat(&u, g.c, 1), mat(v, cols, 1));
            gemm16(g.o, cols, g.c, m, u, v, false, plan.par)?;
            for (j, y_n) in y_grp.chunks_exact_mut(out_image).enumerate() {
                transform_output(g, &tl, m, y_n, cols, j * tl.per_image());
            }
            Ok(())
        })
    })?;
    Ok(y)
}

/// dX of a 3×3 stride-1 convolution from dY and W.
pub(super) fn grad_input<T: Float>(g: &ConvGeom, dy: &[T], w: &[T]) -> Result<Vec<T>> {
    let tl = Tiles::new(g);
    let plan = plan(g, &tl);
    let u = transform_weights(g, w);
    let (in_image, out_image) = (g.c * g.h * g.w, g.o * g.ho * g.wo);
    let mut dx = zeroed::<T>(g.n * in_image);
    for_each_group(&mut dx, in_image, &plan, |images, dx_grp| {
        let cols = images.len() * tl.per_image();
        T::with_scratch(16 * (g.c + g.o) * cols, |buf| {
            let (dv, dm) = buf.split_at_mut(16 * g.c * cols);
            for (j, img) in images.clone().enumerate() {
                let dy_n = &dy[img * out_image..(img + 1) * out_image];
                transform_output_grad(g, &tl, dy_n, dm, cols, j * tl.per_image());
            }
            // U[k]ᵀ, read in place.
            let (ut, dm) = (mat(&u, 1, g.c), mat(dm, cols, 1));
            gemm16(g.c, cols, g.o, dv, ut, dm, false, plan.par)?;
            for (j, dx_n) in dx_grp.chunks_exact_mut(in_image).enumerate() {
                transform_input_grad(g, &tl, dv, dx_n, cols, j * tl.per_image());
            }
            Ok(())
        })
    })?;
    Ok(dx)
}

/// dW of a 3×3 stride-1 convolution from X and dY.
pub(super) fn grad_weight<T: Float>(g: &ConvGeom, x: &[T], dy: &[T]) -> Result<Vec<T>> {
    let tl = Tiles::new(g);
    let plan = plan(g, &tl);
    let (in_image, out_image) = (g.c * g.h * g.w, g.o * g.ho * g.wo);
    let len = 16 * g.o * g.c;
    // dU summed over a range of images into one accumulator, `plan.group` images per set of GEMMs.
    let partial = |images: std::ops::Range<usize>| -> Result<Vec<T>> {
        let mut du = vec![T::ZERO; len];
        let mut first = images.start;
        while first < images.end {
            let cnt = plan.group.min(images.end - first);
            let cols = cnt * tl.per_image();
            T::with_scratch(16 * (g.c + g.o) * cols, |buf| {
                let (v, dm) = buf.split_at_mut(16 * g.c * cols);
                for (j, img) in (first..first + cnt).enumerate() {
                    let off = j * tl.per_image();
                    transform_input(
                        g,
                        &tl,
                        &x[img * in_image..(img + 1) * in_image],
                        v,
                        cols,
                        off,
                    );
                    transform_output_grad(
                        g,
                        &tl,
                        &dy[img * out_image..(img + 1) * out_image],
                        dm,
                        cols,
                        off,
                    );
                }
                // V[k]ᵀ, read in place.
                let (dm, vt) = (mat(dm, cols, 1), mat(v, 1, cols));
                let accumulate = first > images.start;
                gemm16(g.o, g.c, cols, &mut du, dm, vt, accumulate, plan.par)
            })?;
            first += cnt;
        }
        Ok(du)
    };
    let du = sum_over_images(&plan, g.n, len, partial)?;
    Ok(untransform_weight_grad(g, &du))
}

#[cfg(test)]
mod tests {
    use super::super::conv::{self, ConvGeom};
    use super::super::test_util::Rng;
    use super::*;

    fn rand_vec(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| 2.0 * rng.uniform() - 1.0).collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// (n, c, h, w, o, pad): odd and even sizes, every padding Winograd takes, batch 1 and batches that group.
    const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (1, 16, 8, 8, 16, 1),
        (2, 17, 7, 9, 19, 1),
        (3, 16, 5, 6, 18, 0),
        (2, 16, 4, 3, 16, 2),
        (5, 20, 6, 5, 16, 1),
        (1, 16, 3, 3, 16, 0),
        (9, 16, 2, 2, 17, 1),
    ];

    /// The three passes against the im2col kernels (a different algorithm: 36 products per 2×2 tile, no
    /// transforms) in f64, at 1, 2 and 3 threads (per-group tasks, grouped images, GEMMs parallel inside).
    #[test]
    fn matches_im2col_in_f64() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                for (i, &(n, c, h, w, o, pad)) in SHAPES.iter().enumerate() {
                    let g = ConvGeom::new(&[n, c, h, w], &[o, c, 3, 3], 1, pad).expect("geom");
                    assert!(g.k == 3 && g.c >= MIN_CHANNELS && g.o >= MIN_CHANNELS);
                    let seed = 10 * i as u64;
                    let x = rand_vec(n * c * h * w, seed);
                    let wt = rand_vec(o * c * 9, seed + 1);
                    let dy = rand_vec(n * o * g.ho * g.wo, seed + 2);
                    let pairs = [
                        (
                            "y",
                            forward(&g, &x, &wt).expect("wino"),
                            conv::forward(&g, &x, &wt).expect("im2col"),
                        ),
                        (
                            "dx",
                            grad_input(&g, &dy, &wt).expect("wino"),
                            conv::grad_input(&g, &dy, &wt).expect("im2col"),
                        ),
                        (
                            "dw",
                            grad_weight(&g, &x, &dy).expect("wino"),
                            conv::grad_weight(&g, &x, &dy).expect("im2col"),
                        ),
                    ];
                    for (what, a, b) in pairs {
                        let d = max_diff(&a, &b);
                        assert!(
                            d < 1e-13,
                            "{what} differs by {d:e} for {:?} at {threads} threads",
                            SHAPES[i]
                        );
                    }
                }
            });
        }
    }

    /// The same in f32, where the transforms' rounding shows: within 1e-5 of the largest value.
    #[test]
    fn f32_error_is_small() {
        let (n, c, h, w, o, pad) = (4, 64, 9, 10, 32, 1);
        let g = ConvGeom::new(&[n, c, h, w], &[o, c, 3, 3], 1, pad).expect("geom");
        let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
        let x = to32(rand_vec(n * c * h * w, 1));
        let wt = to32(rand_vec(o * c * 9, 2));
        let dy = to32(rand_vec(n * o * g.ho * g.wo, 3));
        // The reference: im2col in f64 on the same (rounded) inputs.
        let (x64, w64, dy64) = (to64(x.clone()), to64(wt.clone()), to64(dy.clone()));
        let checks = [
            (
                "y",
                to64(forward(&g, &x, &wt).expect("y")),
                conv::forward(&g, &x64, &w64).expect("y64"),
            ),
            (
                "dx",
                to64(grad_input(&g, &dy, &wt).expect("dx")),
                conv::grad_input(&g, &dy64, &w64).expect("dx64"),
            ),
            (
                "dw",
                to64(grad_weight(&g, &x, &dy).expect("dw")),
                conv::grad_weight(&g, &x64, &dy64).expect("dw64"),
            ),
        ];
        for (what, a, b) in checks {
            let d = max_diff(&a, &b);
            assert!(d < 1e-5, "{what}: f32 error {d:e}");
        }
    }

    /// Through candle's autograd (the custom ops and their backward): against candle's own conv2d in f32 and
    /// against central finite differences in f64, on shapes that take the Winograd path.
    #[test]
    fn autograd_matches_candle_and_finite_differences() {
        use super::super::test_util::{fd_check, max_rel_diff, rand_tensor};
        use super::super::{conv2d, KernelImpl};
        use candle_core::{DType, Tensor, Var};

        for &(n, c, h, w, o, pad) in &[(2, 16, 7, 6, 17, 1), (1, 16, 5, 5, 16, 0)] {
            let g = ConvGeom::new(&[n, c, h, w], &[o, c, 3, 3], 1, pad).expect("geom");
            assert!(fits(&g));
            let grads = |imp: KernelImpl| {
                let x = Var::from_tensor(&rand_tensor(&[n, c, h, w], 1, DType::F32)).expect("x");
                let wt = Var::from_tensor(&rand_tensor(&[o, c, 3, 3], 2, DType::F32)).expect("w");
                let r = rand_tensor(&[n, o, g.ho, g.wo], 3, DType::F32);
                let y = conv2d(x.as_tensor(), wt.as_tensor(), 1, pad, imp).expect("conv");
                let gs = (&y * &r)
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.backward())
                    .expect("backward");
                let dx = gs.get(x.as_tensor()).expect("dx").clone();
                let dw = gs.get(wt.as_tensor()).expect("dw").clone();
                [y, dx, dw]
            };
            for (a, b) in grads(KernelImpl::Ebv)
                .iter()
                .zip(grads(KernelImpl::Candle).iter())
            {
                let d = max_rel_diff(a, b);
                assert!(
                    d < 1e-5,
                    "differs from candle by {d:e} for {:?}",
                    (n, c, h, w, o, pad)
                );
            }
            let x = rand_tensor(&[n, c, h, w], 4, DType::F64);
            let wt = rand_tensor(&[o, c, 3, 3], 5, DType::F64);
            let r = rand_tensor(&[n, o, g.ho, g.wo], 6, DType::F64);
            let loss =
                |t: &[Tensor]| (conv2d(&t[0], &t[1], 1, pad, KernelImpl::Ebv)? * &r)?.sum_all();
            let worst = fd_check(loss, &[x, wt], 12).expect("fd check");
            assert!(worst < 1e-7, "finite differences disagree by {worst:e}");
        }
    }

    #[test]
    fn fits_only_3x3_stride_1_with_enough_channels() {
        let geom = |c, o, k, s, p| ConvGeom::new(&[1, c, 8, 8], &[o, c, k, k], s, p).expect("geom");
        assert!(fits(&geom(16, 16, 3, 1, 1)));
        assert!(!fits(&geom(3, 16, 3, 1, 1)));
        assert!(!fits(&geom(16, 8, 3, 1, 1)));
        assert!(!fits(&geom(16, 16, 3, 2, 1)));
        assert!(!fits(&geom(16, 16, 1, 1, 0)));
        assert!(!fits(&geom(16, 16, 7, 1, 3)));
    }
}
