//! Winograd F(2×2, 3×3) convolution on the CPU: the 3×3 stride-1 convolutions that carry most of a ResNet's work,
//! forward and both gradients, with 16 multiplications per 2×2 output tile where im2col needs 36.
//!
//! The output is cut into 2×2 tiles; tile (ty, tx) reads the 4×4 input patch at rows 2ty−p.., columns 2tx−p..
//! (zero outside the image). With the standard matrices (Lavin & Gray, 2016)
//!   U = G·w·Gᵀ (4×4 per filter pair (o, c)),  V = Bᵀ·d·B (4×4 per channel and tile),
//!   M = Σ_c U[o,c] ⊙ V[c]  (16 independent GEMMs [T, C]·[C, O] over T tiles),  Y = Aᵀ·M·A (2×2),
//! and the gradients are the exact adjoints of those linear maps, so they are the gradients of the convolution
//! itself (not an approximation of it):
//!   dM = A·dY·Aᵀ;  dV[k] = dM[k]·U[k] then dX += B·dV·Bᵀ added back onto the overlapping patches;
//!   dU[k] = Σ dM[k]ᵀ·V[k] then dW = Gᵀ·dU·G.
//!
//! The transforms run across channels: each image is first repacked channel-minor ([rows][cols][channels], zero
//! padded around the image and up to a multiple of `LANES` channels), so that one tile's 4×4 patch is 16 runs of
//! `LANES` contiguous channels and every step of a transform is the same add or subtract on `LANES` channels at once
//! (one vector instruction). Working along the rows of a plane instead gives runs of 2–16 tiles on ResNet's small
//! feature maps, where the loop overhead cost as much as the GEMMs.
//!
//! Invariants: the transformed matrices exist for a small group of images per task (thread-local scratch, layout
//! [16][tiles][channels padded to `LANES`], so each GEMM reads or writes one [T, C] block with rows `ld` apart; the
//! padding lanes carry unspecified values and are never read back into a result), never for the whole batch; every
//! output element is written by exactly one tile (tiles that stick out past an odd-sized output are clipped); only
//! 3×3, stride 1 and padding ≤ 2 come here ([`applies`]).
//!
//! The transforms only add, subtract and halve, so F(2×2, 3×3) loses little precision: in f32 the tests find it
//! within 1e-5 (relative to the largest value) of an f64 reference, and equal to the im2col kernels to 1e-13 in f64.

use std::ops::Range;

use candle_core::Result;

use super::conv::{for_each_group, sum_over_images, ConvGeom, Plan};
use super::{matmul_rs, zeroed, Float, MatRef};

/// Fewer channels than this on either side and the 16 GEMMs are too thin (K = C) to beat one im2col GEMM with
/// K = 9·C: ResNet stems (C = 3) stay on im2col.
const MIN_CHANNELS: usize = 16;

/// About this many tiles per GEMM: small images are grouped up to it (as for im2col's columns), large ones cut into
/// bands of tile rows down to it ([`Bands`]). The transformed matrices, 16·(C+O)·tiles values, should stay in the
/// core's cache between transform and GEMM, yet the GEMMs should not be thin. Forward + both gradients of the eight
/// 3×3 layer shapes of `examples/conv_algos.rs`, summed, best of 3 (ms): 32 tiles 328, 64 313, 128 307, 256 315 at
/// one thread; 230, 183, 178, 179 at two.
const MIN_TILES: usize = 128;

/// Channels handled together by one step of a transform: 8 f32 lanes fill an AVX2 register (two for f64).
const LANES: usize = 8;
const _: () = assert!(LANES == super::transpose::BLOCK, "packing moves 8×8 blocks");

/// Whether this convolution goes through Winograd.
pub(super) fn applies(g: &ConvGeom) -> bool {
    fits(g) && super::conv_algo() == super::ConvAlgo::Auto
}

/// 3×3, stride 1, padding ≤ 2, enough channels.
fn fits(g: &ConvGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.pad <= 2 && g.c >= MIN_CHANNELS && g.o >= MIN_CHANNELS
}

/// The tiling of one image's output, and the padded channel counts of the transformed buffers.
#[derive(Clone, Copy)]
struct Tiles {
    th: usize,
    tw: usize,
    /// Input channels rounded up to `LANES`: the row stride of V and dV.
    cp: usize,
    /// Output channels rounded up to `LANES`: the row stride of M and dM.
    op: usize,
}

impl Tiles {
    fn new(g: &ConvGeom) -> Self {
        Self {
            th: g.ho.div_ceil(2),
            tw: g.wo.div_ceil(2),
            cp: g.c.next_multiple_of(LANES),
            op: g.o.next_multiple_of(LANES),
        }
    }

    fn per_image(&self) -> usize {
        self.th * self.tw
    }

    /// Rows and columns of the padded input plane, input rows/columns −p .. 2·t+2−p: every tile's patch lies in it.
    fn padded(&self) -> (usize, usize) {
        (2 * self.th + 2, 2 * self.tw + 2)
    }
}

/// Where one image's tiles of a band go in a transformed buffer [16][tiles][ld]: `plane` values per k, rows `ld`
/// apart, the image's first tile at row `off`.
#[derive(Clone, Copy)]
struct Slot {
    ld: usize,
    plane: usize,
    off: usize,
}

impl Slot {
    /// Index of lane 0 of channel block `c0` of tile `tile` (counted from the image's first tile in the band) in
    /// plane `k`.
    #[inline(always)]
    fn at(&self, k: usize, tile: usize, c0: usize) -> usize {
        k * self.plane + (self.off + tile) * self.ld + c0
    }

    /// Checks that `buf` holds the `tiles` rows of all 16 planes with at least `lanes` (a multiple of `LANES`)
    /// values each: then every `at(k < 16, tile < tiles, c0 < lanes)` has `LANES` values in `buf`.
    fn check<T>(&self, buf: &[T], tiles: usize, lanes: usize) {
        assert!(
            lanes.is_multiple_of(LANES)
                && lanes <= self.ld
                && self.plane >= (self.off + tiles) * self.ld
                && 15 * self.plane + (self.off + tiles) * self.ld <= buf.len(),
            "winograd: transformed buffer too small"
        );
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

/// `LANES` consecutive channels of one position.
type Lanes<T> = [T; LANES];

/// Reads `LANES` values at `at`.
///
/// # Safety
/// `at + LANES <= buf.len()`. Each transform checks the extent of what it touches once, up front, instead of once
/// per vector: per-vector checks cost as much as the arithmetic they guard.
#[inline(always)]
unsafe fn load<T: Float>(buf: &[T], at: usize) -> Lanes<T> {
    debug_assert!(at + LANES <= buf.len());
    // SAFETY: in bounds by the caller's contract; `Lanes<T>` is an array of T, so T's alignment suffices.
    unsafe { buf.as_ptr().add(at).cast::<Lanes<T>>().read() }
}

/// Writes `LANES` values at `at`.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn store<T: Float>(buf: &mut [T], at: usize, v: Lanes<T>) {
    debug_assert!(at + LANES <= buf.len());
    // SAFETY: in bounds by the caller's contract.
    unsafe { buf.as_mut_ptr().add(at).cast::<Lanes<T>>().write(v) }
}

/// Adds `LANES` values into `buf` at `at`.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn add_to<T: Float>(buf: &mut [T], at: usize, v: Lanes<T>) {
    // SAFETY: the caller's contract.
    unsafe { store(buf, at, add(load(buf, at), v)) }
}

#[inline(always)]
fn add<T: Float>(mut a: Lanes<T>, b: Lanes<T>) -> Lanes<T> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

#[inline(always)]
fn sub<T: Float>(mut a: Lanes<T>, b: Lanes<T>) -> Lanes<T> {
    for (x, y) in a.iter_mut().zip(b) {
        *x -= y;
    }
    a
}

#[inline(always)]
fn neg<T: Float>(mut a: Lanes<T>) -> Lanes<T> {
    for x in a.iter_mut() {
        *x = T::ZERO - *x;
    }
    a
}

/// A channel-minor image: [rows][cols][ld], channel c of pixel (y, x) of the source at row y + `at`, column x + `at`,
/// lane c (lanes from C up to `ld` and everything outside the source are zero or unused).
#[derive(Clone, Copy)]
struct Packed {
    cols: usize,
    ld: usize,
    at: usize,
}

/// The shape of one image's planes, [C, h, w] (NCHW without the batch).
#[derive(Clone, Copy)]
struct Planes {
    c: usize,
    h: usize,
    w: usize,
}

/// Repacks `planes` channel-minor into `dst` (zeroed first, so the border and the padding lanes are zero).
#[inline(always)]
fn pack_body<T: Float>(planes: &[T], shape: Planes, dst: &mut [T], p: Packed) {
    dst.fill(T::ZERO);
    let (h, w, hw) = (shape.h, shape.w, shape.h * shape.w);
    for c0 in (0..shape.c).step_by(LANES) {
        let lanes = LANES.min(shape.c - c0);
        for y in 0..h {
            let row = ((y + p.at) * p.cols + p.at) * p.ld + c0;
            let src = c0 * hw + y * w;
            let mut x = 0;
            if lanes == LANES {
                // 8×8 blocks: 8 channel rows of 8 pixels in, 8 pixels of 8 channels out.
                while x + LANES <= w {
                    T::transpose8(planes, src + x, hw, dst, row + x * p.ld, p.ld);
                    x += LANES;
                }
            }
            for x in x..w {
                let out = &mut dst[row + x * p.ld..][..lanes];
                for (l, d) in out.iter_mut().enumerate() {
                    *d = planes[src + l * hw + x];
                }
            }
        }
    }
}

/// The inverse of [`pack_body`] for rows `ys` of the planes, which are overwritten there.
#[inline(always)]
fn unpack_body<T: Float>(src: &[T], p: Packed, planes: &mut [T], shape: Planes, ys: Range<usize>) {
    let (w, hw) = (shape.w, shape.h * shape.w);
    for c0 in (0..shape.c).step_by(LANES) {
        let lanes = LANES.min(shape.c - c0);
        for y in ys.clone() {
            let row = ((y + p.at) * p.cols + p.at) * p.ld + c0;
            let dst = c0 * hw + y * w;
            let mut x = 0;
            if lanes == LANES {
                while x + LANES <= w {
                    T::transpose8(src, row + x * p.ld, p.ld, planes, dst + x, hw);
                    x += LANES;
                }
            }
            for x in x..w {
                let run = &src[row + x * p.ld..][..lanes];
                for (l, &v) in run.iter().enumerate() {
                    planes[dst + l * hw + x] = v;
                }
            }
        }
    }
}

/// Calls `f(tile, corner, c0)` for each tile of tile rows `rows` (tile numbered from the band's first) and each
/// block of `LANES` channels c0 < `ld`, `corner` being the index of the tile's top-left value in a packed image with
/// `cols` columns and rows `ld` apart ([`Packed`]).
#[inline(always)]
fn for_each_tile(
    tl: &Tiles,
    rows: Range<usize>,
    cols: usize,
    ld: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    for (band_row, ty) in rows.enumerate() {
        for tx in 0..tl.tw {
            let corner = (2 * ty * cols + 2 * tx) * ld;
            for c0 in (0..ld).step_by(LANES) {
                f(band_row * tl.tw + tx, corner, c0);
            }
        }
    }
}

/// V[k][tile][c] = (Bᵀ·d·B)[k] for the tiles of tile rows `rows` (numbered from the band's first) and every
/// channel, from one packed, padded image `xt` ([hp][wp][cp], [`Tiles::padded`]).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the 4×4 tiles are read by column as well as by row
fn tiles_input_body<T: Float>(tl: &Tiles, xt: &[T], rows: Range<usize>, v: &mut [T], s: Slot) {
    let (hp, wp) = tl.padded();
    let cp = tl.cp;
    let xt = &xt[..hp * wp * cp];
    s.check(v, rows.len() * tl.tw, cp);
    assert!(rows.end <= tl.th);
    // SAFETY (loads and stores below): `v` by the check above; in `xt`, with ty < th (asserted just above), the
    // last value read is ((2·th+1)·wp + 2·tw+1)·cp + cp − 1 = hp·wp·cp − 1.
    for_each_tile(tl, rows, wp, cp, |tile, corner, c0| {
        let d = |i: usize, j: usize| unsafe { load(xt, corner + (i * wp + j) * cp + c0) };
        // t = Bᵀ·d (rows), then each row of t times B.
        let mut t = [[[T::ZERO; LANES]; 4]; 4];
        for (j, tj) in t.iter_mut().enumerate() {
            let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
            *tj = [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)];
        }
        for r in 0..4 {
            let (a, b, c, e) = (t[0][r], t[1][r], t[2][r], t[3][r]);
            unsafe {
                store(v, s.at(4 * r, tile, c0), sub(a, c));
                store(v, s.at(4 * r + 1, tile, c0), add(b, c));
                store(v, s.at(4 * r + 2, tile, c0), sub(c, b));
                store(v, s.at(4 * r + 3, tile, c0), sub(b, e));
            }
        }
    });
}

/// The 2×2 outputs Aᵀ·M·A of the tiles of tile rows `rows` for every output channel, into the tiled
/// channel-minor output `yt` ([2·th][2·tw][op]).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the 4×4 tiles are read by column as well as by row
fn tiles_output_body<T: Float>(tl: &Tiles, m: &[T], rows: Range<usize>, yt: &mut [T], s: Slot) {
    let (wt, op) = (2 * tl.tw, tl.op);
    let yt = &mut yt[..2 * tl.th * wt * op];
    s.check(m, rows.len() * tl.tw, op);
    assert!(rows.end <= tl.th);
    // SAFETY (loads and stores below): `m` by the check above; in `yt` the last value written is
    // ((2·th−1)·wt + 2·tw−1)·op + op − 1 = 2·th·wt·op − 1.
    for_each_tile(tl, rows, wt, op, |tile, corner, o0| {
        let mk = |i: usize, j: usize| unsafe { load(m, s.at(4 * i + j, tile, o0)) };
        // s = Aᵀ·M (2×4), then y = s·A.
        let mut sa = [[[T::ZERO; LANES]; 4]; 2];
        for j in 0..4 {
            sa[0][j] = add(add(mk(0, j), mk(1, j)), mk(2, j));
            sa[1][j] = sub(sub(mk(1, j), mk(2, j)), mk(3, j));
        }
        for (r, row) in sa.iter().enumerate() {
            let at = corner + r * wt * op + o0;
            unsafe {
                store(yt, at, add(add(row[0], row[1]), row[2]));
                store(yt, at + op, sub(sub(row[1], row[2]), row[3]));
            }
        }
    });
}

/// dM[k][tile][o] = (A·dY·Aᵀ)[k] for the tiles of tile rows `rows`, from the tiled channel-minor output gradient
/// `dyt` ([2·th][2·tw][op], zero past the output's edge).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the 4×4 tiles are read by column as well as by row
fn tiles_output_grad_body<T: Float>(
    tl: &Tiles,
    dyt: &[T],
    rows: Range<usize>,
    dm: &mut [T],
    s: Slot,
) {
    let (wt, op) = (2 * tl.tw, tl.op);
    let dyt = &dyt[..2 * tl.th * wt * op];
    s.check(dm, rows.len() * tl.tw, op);
    assert!(rows.end <= tl.th);
    // SAFETY (loads and stores below): `dm` by the check above; `dyt` as `yt` in [`tiles_output_body`].
    for_each_tile(tl, rows, wt, op, |tile, corner, o0| {
        // q_r = dY[r]·Aᵀ = [e, e + o, e − o, −o] for the row's two values (e, o).
        let mut q = [[[T::ZERO; LANES]; 4]; 2];
        for (r, qr) in q.iter_mut().enumerate() {
            let at = corner + r * wt * op + o0;
            let (e, od) = unsafe { (load(dyt, at), load(dyt, at + op)) };
            *qr = [e, add(e, od), sub(e, od), neg(od)];
        }
        // dM = A·q: rows q0, q0 + q1, q0 − q1, −q1.
        for j in 0..4 {
            let (a, b) = (q[0][j], q[1][j]);
            unsafe {
                store(dm, s.at(j, tile, o0), a);
                store(dm, s.at(4 + j, tile, o0), add(a, b));
                store(dm, s.at(8 + j, tile, o0), sub(a, b));
                store(dm, s.at(12 + j, tile, o0), neg(b));
            }
        }
    });
}

/// B·dV·Bᵀ of the tiles of tile rows `rows`, each 4×4 result added onto the patch it came from in the padded
/// channel-minor input gradient `dxt` ([hp][wp][cp]): the adjoint of [`tiles_input_body`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the 4×4 tiles are read by column as well as by row
fn tiles_input_grad_body<T: Float>(
    tl: &Tiles,
    dv: &[T],
    rows: Range<usize>,
    dxt: &mut [T],
    s: Slot,
) {
    let (hp, wp) = tl.padded();
    let cp = tl.cp;
    let dxt = &mut dxt[..hp * wp * cp];
    s.check(dv, rows.len() * tl.tw, cp);
    assert!(rows.end <= tl.th);
    // SAFETY (loads and stores below): `dv` by the check above; `dxt` as `xt` in [`tiles_input_body`].
    for_each_tile(tl, rows, wp, cp, |tile, corner, c0| {
        // p = dV·Bᵀ per row: [a, b − c + d, b + c − a, −d]; then the patch = B·p, row by row.
        let mut p = [[[T::ZERO; LANES]; 4]; 4];
        for (r, pr) in p.iter_mut().enumerate() {
            let dk = |j: usize| unsafe { load(dv, s.at(4 * r + j, tile, c0)) };
            let (a, b, c, d) = (dk(0), dk(1), dk(2), dk(3));
            *pr = [a, add(sub(b, c), d), sub(add(b, c), a), neg(d)];
        }
        for j in 0..4 {
            let (a, b, c, d) = (p[0][j], p[1][j], p[2][j], p[3][j]);
            let at = |i: usize| corner + (i * wp + j) * cp + c0;
            unsafe {
                add_to(dxt, at(0), a);
                add_to(dxt, at(1), add(sub(b, c), d));
                add_to(dxt, at(2), sub(add(b, c), a));
                add_to(dxt, at(3), neg(d));
            }
        }
    });
}

/// Defines `$name(args)` running `$body(args)` compiled for AVX2 when the CPU has it: the crate is built for
/// baseline x86-64, whose SSE2 gives the lane-wise steps of the transforms 4 f32 lanes; AVX2 gives 8.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* $name:ident => $body:ident($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        fn $name<T: Float>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<T: Float>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above); the body is safe to call.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

with_avx2!(
    /// [`pack_body`].
    pack => pack_body(planes: &[T], shape: Planes, dst: &mut [T], p: Packed)
);
with_avx2!(
    /// [`unpack_body`].
    unpack => unpack_body(src: &[T], p: Packed, planes: &mut [T], shape: Planes, ys: Range<usize>)
);
with_avx2!(
    /// [`tiles_input_body`].
    tiles_input => tiles_input_body(tl: &Tiles, xt: &[T], rows: Range<usize>, v: &mut [T], s: Slot)
);
with_avx2!(
    /// [`tiles_output_body`].
    tiles_output => tiles_output_body(tl: &Tiles, m: &[T], rows: Range<usize>, yt: &mut [T], s: Slot)
);
with_avx2!(
    /// [`tiles_output_grad_body`].
    tiles_output_grad => tiles_output_grad_body(tl: &Tiles, dyt: &[T], rows: Range<usize>, dm: &mut [T], s: Slot)
);
with_avx2!(
    /// [`tiles_input_grad_body`].
    tiles_input_grad => tiles_input_grad_body(tl: &Tiles, dv: &[T], rows: Range<usize>, dxt: &mut [T], s: Slot)
);

/// A matrix view with these strides.
fn mat<T>(data: &[T], rs: usize, cs: usize) -> MatRef<'_, T> {
    MatRef { data, rs, cs }
}

/// The 16 independent GEMMs of a pass: block k of `dst` ([m, n], rows `dst_rs` apart) = (`accumulate` ? itself :
/// 0) + block k of `lhs` · block k of `rhs`, where each buffer holds 16 equal blocks.
fn gemm16<T: Float>(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&mut [T], usize),
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    par: gemm::Parallelism,
) -> Result<()> {
    let (db, lb, rb) = (dst.len() / 16, lhs.data.len() / 16, rhs.data.len() / 16);
    for (i, d) in dst.chunks_exact_mut(db).take(16).enumerate() {
        let l = mat(&lhs.data[i * lb..(i + 1) * lb], lhs.rs, lhs.cs);
        let r = mat(&rhs.data[i * rb..(i + 1) * rb], rhs.rs, rhs.cs);
        matmul_rs(m, n, k, d, dst_rs, l, r, accumulate, par)?;
    }
    Ok(())
}

/// How one group of images is cut into bands of tile rows: the whole images when the group has several, bands of
/// about `MIN_TILES` tiles when it is one large image, so that the transformed buffers stay in the core's cache
/// between transform and GEMM (a 56×56 ResNet-50 image is 784 tiles: 6 MB of V and M at 64 channels).
#[derive(Clone, Copy)]
struct Bands {
    tl: Tiles,
    images: usize,
    rows: usize,
}

impl Bands {
    fn new(tl: Tiles, images: usize) -> Self {
        let rows = if images > 1 {
            tl.th
        } else {
            MIN_TILES.div_ceil(tl.tw).clamp(1, tl.th)
        };
        Self { tl, images, rows }
    }

    /// The bands' tile rows, in order.
    fn iter(&self) -> impl Iterator<Item = Range<usize>> {
        let (th, rows) = (self.tl.th, self.rows);
        (0..th).step_by(rows).map(move |r| r..(r + rows).min(th))
    }

    /// Tiles of band `rows` over all the group's images: the GEMMs' row count.
    fn tiles(&self, rows: &Range<usize>) -> usize {
        self.images * rows.len() * self.tl.tw
    }

    /// Where image `j` of the group puts the tiles of band `rows` in a buffer with rows `ld` apart.
    fn slot(&self, rows: &Range<usize>, ld: usize, j: usize) -> Slot {
        Slot {
            ld,
            plane: self.tiles(rows) * ld,
            off: j * rows.len() * self.tl.tw,
        }
    }
}

/// A group's scratch: the two transformed buffers and the two packed images.
struct Scratch<'a, T> {
    /// [16][tiles][cp]: V or dV.
    vc: &'a mut [T],
    /// [16][tiles][op]: M or dM.
    vo: &'a mut [T],
    /// The packed input side: x or dx, padded ([hp][wp][cp]).
    xt: &'a mut [T],
    /// The packed output side: y or dy, tiled ([2·th][2·tw][op]).
    yt: &'a mut [T],
}

impl<T: Float> Scratch<'_, T> {
    /// Runs `f` on the thread's scratch, cut for the largest band of `bands`.
    fn with<R>(bands: &Bands, f: impl FnOnce(Scratch<'_, T>) -> R) -> R {
        let tl = &bands.tl;
        let tiles = bands.tiles(&(0..bands.rows));
        let (hp, wp) = tl.padded();
        let (v_len, m_len, x_len) = (16 * tiles * tl.cp, 16 * tiles * tl.op, hp * wp * tl.cp);
        let y_len = 4 * tl.th * tl.tw * tl.op;
        T::with_scratch(v_len + m_len + x_len + y_len, |buf| {
            let (vc, rest) = buf.split_at_mut(v_len);
            let (vo, rest) = rest.split_at_mut(m_len);
            let (xt, yt) = rest.split_at_mut(x_len);
            f(Scratch { vc, vo, xt, yt })
        })
    }
}

/// The packed layouts of one convolution: the input side padded by p, the output side tiled without a border.
fn packed(g: &ConvGeom, tl: &Tiles) -> (Packed, Packed) {
    (
        Packed {
            cols: tl.padded().1,
            ld: tl.cp,
            at: g.pad,
        },
        Packed {
            cols: 2 * tl.tw,
            ld: tl.op,
            at: 0,
        },
    )
}

/// The input and output shapes of one image.
fn shapes(g: &ConvGeom) -> (Planes, Planes) {
    (
        Planes {
            c: g.c,
            h: g.h,
            w: g.w,
        },
        Planes {
            c: g.o,
            h: g.ho,
            w: g.wo,
        },
    )
}

/// y = conv(x, w) for a 3×3 stride-1 convolution ([`applies`]).
pub(super) fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T]) -> Result<Vec<T>> {
    let tl = Tiles::new(g);
    let plan = plan(g, &tl);
    let u = transform_weights(g, w);
    let ((sin, sout), (pin, pout)) = (shapes(g), packed(g, &tl));
    let (in_image, out_image) = (g.c * g.h * g.w, g.o * g.ho * g.wo);
    let mut y = zeroed::<T>(g.n * out_image);
    for_each_group(&mut y, out_image, &plan, |images, y_grp| {
        let bands = Bands::new(tl, images.len());
        Scratch::with(&bands, |s: Scratch<'_, T>| {
            for rows in bands.iter() {
                for (j, img) in images.clone().enumerate() {
                    // With several images there is one band: each image is packed just before its tiles are read.
                    if rows.start == 0 {
                        pack(&x[img * in_image..(img + 1) * in_image], sin, s.xt, pin);
                    }
                    tiles_input(&tl, s.xt, rows.clone(), s.vc, bands.slot(&rows, tl.cp, j));
                }
                // M[k] [T, O] = V[k] [T, C] · U[k]ᵀ (U[k] is [O, C], read transposed in place).
                let t = bands.tiles(&rows);
                let v = mat(&s.vc[..16 * t * tl.cp], tl.cp, 1);
                let ut = mat(&u, 1, g.c);
                let m = &mut s.vo[..16 * t * tl.op];
                gemm16((t, g.o, g.c), (m, tl.op), v, ut, false, plan.par)?;
                for (j, y_n) in y_grp.chunks_exact_mut(out_image).enumerate() {
                    tiles_output(&tl, s.vo, rows.clone(), s.yt, bands.slot(&rows, tl.op, j));
                    unpack(
                        s.yt,
                        pout,
                        y_n,
                        sout,
                        2 * rows.start..(2 * rows.end).min(g.ho),
                    );
                }
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
    let ((sin, sout), (pin, pout)) = (shapes(g), packed(g, &tl));
    let (in_image, out_image) = (g.c * g.h * g.w, g.o * g.ho * g.wo);
    let mut dx = zeroed::<T>(g.n * in_image);
    for_each_group(&mut dx, in_image, &plan, |images, dx_grp| {
        let bands = Bands::new(tl, images.len());
        Scratch::with(&bands, |s: Scratch<'_, T>| {
            for rows in bands.iter() {
                for (j, img) in images.clone().enumerate() {
                    if rows.start == 0 {
                        pack(
                            &dy[img * out_image..(img + 1) * out_image],
                            sout,
                            s.yt,
                            pout,
                        );
                    }
                    tiles_output_grad(&tl, s.yt, rows.clone(), s.vo, bands.slot(&rows, tl.op, j));
                }
                // dV[k] [T, C] = dM[k] [T, O] · U[k] [O, C].
                let t = bands.tiles(&rows);
                let dm = mat(&s.vo[..16 * t * tl.op], tl.op, 1);
                let um = mat(&u, g.c, 1);
                let dv = &mut s.vc[..16 * t * tl.cp];
                gemm16((t, g.c, g.o), (dv, tl.cp), dm, um, false, plan.par)?;
                // Neighbouring bands' patches overlap by two rows: the packed gradient is only complete, and
                // unpacked, after the last band (with several images there is one band).
                let last = rows.end == tl.th;
                for (j, dx_n) in dx_grp.chunks_exact_mut(in_image).enumerate() {
                    if rows.start == 0 {
                        s.xt.fill(T::ZERO);
                    }
                    tiles_input_grad(&tl, s.vc, rows.clone(), s.xt, bands.slot(&rows, tl.cp, j));
                    if last {
                        unpack(s.xt, pin, dx_n, sin, 0..g.h);
                    }
                }
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
    let ((sin, sout), (pin, pout)) = (shapes(g), packed(g, &tl));
    let (in_image, out_image) = (g.c * g.h * g.w, g.o * g.ho * g.wo);
    let len = 16 * g.o * g.c;
    // dU summed over a range of images into one accumulator, `plan.group` images (or one image's bands) per set
    // of GEMMs.
    let partial = |images: Range<usize>| -> Result<Vec<T>> {
        let mut du = vec![T::ZERO; len];
        let mut first = images.start;
        while first < images.end {
            let cnt = plan.group.min(images.end - first);
            let bands = Bands::new(tl, cnt);
            Scratch::with(&bands, |s: Scratch<'_, T>| {
                for rows in bands.iter() {
                    for (j, img) in (first..first + cnt).enumerate() {
                        if rows.start == 0 {
                            pack(&x[img * in_image..(img + 1) * in_image], sin, s.xt, pin);
                            pack(
                                &dy[img * out_image..(img + 1) * out_image],
                                sout,
                                s.yt,
                                pout,
                            );
                        }
                        tiles_input(&tl, s.xt, rows.clone(), s.vc, bands.slot(&rows, tl.cp, j));
                        tiles_output_grad(
                            &tl,
                            s.yt,
                            rows.clone(),
                            s.vo,
                            bands.slot(&rows, tl.op, j),
                        );
                    }
                    // dU[k] [O, C] += dM[k]ᵀ [O, T] · V[k] [T, C] (dM read transposed in place).
                    let t = bands.tiles(&rows);
                    let dmt = mat(&s.vo[..16 * t * tl.op], 1, tl.op);
                    let v = mat(&s.vc[..16 * t * tl.cp], tl.cp, 1);
                    let accumulate = first > images.start || rows.start > 0;
                    gemm16((g.o, g.c, t), (&mut du, g.c), dmt, v, accumulate, plan.par)?;
                }
                Ok::<(), candle_core::Error>(())
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

    /// (n, c, h, w, o, pad): odd and even sizes, every padding Winograd takes, batch 1 and batches that group,
    /// channel counts that are not a multiple of `LANES`, and images large enough (> `MIN_TILES` tiles) to be cut
    /// into bands of tile rows, with a short last band.
    const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (1, 16, 8, 8, 16, 1),
        (2, 16, 25, 21, 17, 1),
        (1, 19, 26, 19, 16, 2),
        (3, 16, 20, 30, 24, 0),
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
