//! RGB8 HWC pixels to normalised f32 CHW: the last pass of every sample,
//! the one that writes the batch.
//!
//! Invariants:
//! - the result is bit-identical on every path (`v as f32 * scale + bias`,
//!   a multiply then an add, never fused), so batches do not depend on the
//!   CPU the loader runs on;
//! - `dst` is written exactly once, front to back per plane row.
//!
//! Why a SIMD path: this pass writes 4 bytes for every byte it reads and is
//! most of the loader's time on raw shards without augmentation. On x86-64
//! with AVX2 it converts 8 pixels at a time (shuffles de-interleave R, G, B,
//! reversed when flipped). Plain stores, not non-temporal ones: although a
//! batch (154 MB at 256 × 224²) outgrows the cache, streaming stores were
//! 25–30% slower here (`ebv-load --epochs 6`, raw shards, see
//! BENCHMARKS.md).

/// Convert a `w`×`h` RGB8 HWC image into normalised f32 CHW in `dst`
/// (3·w·h values), mirrored left–right when `flip`:
/// `dst[c][y][x'] = src[y][x][c] · scale[c] + bias[c]`, x' = w−1−x if flipped.
pub fn write_chw(
    src: &[u8],
    w: usize,
    h: usize,
    flip: bool,
    scale: [f32; 3],
    bias: [f32; 3],
    dst: &mut [f32],
) {
    let plane = w * h;
    assert!(
        src.len() >= plane * 3 && dst.len() >= plane * 3,
        "write_chw: {w}x{h} needs {} source bytes and {} values ({} and {} given)",
        plane * 3,
        plane * 3,
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if w >= 8 && simd::available() {
            // SAFETY: AVX2 is present (checked above) and the sizes were
            // checked against w and h.
            unsafe { simd::write_chw_avx2(src, w, h, flip, scale, bias, dst) };
            return;
        }
    }
    write_chw_scalar(src, w, h, flip, scale, bias, dst);
}

/// The reference: one pixel at a time.
pub(crate) fn write_chw_scalar(
    src: &[u8],
    w: usize,
    h: usize,
    flip: bool,
    scale: [f32; 3],
    bias: [f32; 3],
    dst: &mut [f32],
) {
    let plane = w * h;
    let (r_plane, rest) = dst.split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        let r_out = &mut r_plane[y * w..(y + 1) * w];
        let g_out = &mut g_plane[y * w..(y + 1) * w];
        let b_out = &mut b_plane[y * w..(y + 1) * w];
        for (x, px) in row.chunks_exact(3).enumerate() {
            let o = if flip { w - 1 - x } else { x };
            r_out[o] = px[0] as f32 * scale[0] + bias[0];
            g_out[o] = px[1] as f32 * scale[1] + bias[1];
            b_out[o] = px[2] as f32 * scale[2] + bias[2];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        // std caches the CPUID answer: this is one relaxed load.
        is_x86_feature_detected!("avx2")
    }

    /// `pshufb` masks that gather channel `c` of 8 consecutive RGB8 pixels
    /// (24 bytes: `lo` = bytes 0..16, `hi` = bytes 16..24) into bytes 0..8,
    /// in reverse pixel order when `flip`. 0x80 zeroes a byte.
    const fn masks(c: usize, flip: bool) -> ([u8; 16], [u8; 16]) {
        let mut lo = [0x80u8; 16];
        let mut hi = [0x80u8; 16];
        let mut j = 0;
        while j < 8 {
            let px = if flip { 7 - j } else { j };
            let byte = 3 * px + c;
            if byte < 16 {
                lo[j] = byte as u8;
            } else {
                hi[j] = (byte - 16) as u8;
            }
            j += 1;
        }
        (lo, hi)
    }

    const MASKS: [[([u8; 16], [u8; 16]); 3]; 2] = [
        [masks(0, false), masks(1, false), masks(2, false)],
        [masks(0, true), masks(1, true), masks(2, true)],
    ];

    #[inline(always)]
    unsafe fn load_mask(m: &[u8; 16]) -> __m128i {
        _mm_loadu_si128(m.as_ptr() as *const __m128i)
    }

    /// # Safety
    /// AVX2 must be available; `src` holds ≥ 3·w·h bytes, `dst` ≥ 3·w·h
    /// values, `w ≥ 8`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn write_chw_avx2(
        src: &[u8],
        w: usize,
        h: usize,
        flip: bool,
        scale: [f32; 3],
        bias: [f32; 3],
        dst: &mut [f32],
    ) {
        let plane = w * h;
        let masks = &MASKS[usize::from(flip)];
        let m: [(__m128i, __m128i); 3] = [
            (load_mask(&masks[0].0), load_mask(&masks[0].1)),
            (load_mask(&masks[1].0), load_mask(&masks[1].1)),
            (load_mask(&masks[2].0), load_mask(&masks[2].1)),
        ];
        let sc = [
            _mm256_set1_ps(scale[0]),
            _mm256_set1_ps(scale[1]),
            _mm256_set1_ps(scale[2]),
        ];
        let bi = [
            _mm256_set1_ps(bias[0]),
            _mm256_set1_ps(bias[1]),
            _mm256_set1_ps(bias[2]),
        ];
        let body = w / 8 * 8;
        let sp = src.as_ptr();
        let dp = dst.as_mut_ptr();
        for y in 0..h {
            let row = sp.add(y * w * 3);
            let out = dp.add(y * w);
            let mut o = 0;
            while o < body {
                // Output pixels o..o+8 come from source pixels sx..sx+8
                // (reversed when flipped).
                let sx = if flip { w - 8 - o } else { o };
                let p = row.add(sx * 3);
                let lo = _mm_loadu_si128(p as *const __m128i);
                let hi = _mm_loadl_epi64(p.add(16) as *const __m128i);
                for c in 0..3 {
                    let bytes =
                        _mm_or_si128(_mm_shuffle_epi8(lo, m[c].0), _mm_shuffle_epi8(hi, m[c].1));
                    let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    let v = _mm256_add_ps(_mm256_mul_ps(f, sc[c]), bi[c]);
                    _mm256_storeu_ps(out.add(c * plane + o), v);
                }
                o += 8;
            }
            for o in body..w {
                let sx = if flip { w - 1 - o } else { o };
                for c in 0..3 {
                    let v = *row.add(sx * 3 + c) as f32 * scale[c] + bias[c];
                    *out.add(c * plane + o) = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, seed: u32) -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[test]
    fn simd_path_equals_scalar_bit_for_bit() {
        let scale = [
            1.0 / (255.0 * 0.229),
            1.0 / (255.0 * 0.224),
            1.0 / (255.0 * 0.225),
        ];
        let bias = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225];
        // Widths below, at and above the 8-pixel block, with tails, and
        // destinations at several alignments.
        for &(w, h) in &[(1, 1), (7, 3), (8, 2), (9, 5), (16, 1), (37, 11), (224, 3)] {
            let src = image(w, h, (w * h) as u32);
            for flip in [false, true] {
                for offset in [0usize, 1, 2, 4] {
                    let n = 3 * w * h;
                    let mut fast = vec![f32::NAN; n + offset];
                    let mut slow = vec![f32::NAN; n];
                    write_chw(&src, w, h, flip, scale, bias, &mut fast[offset..]);
                    write_chw_scalar(&src, w, h, flip, scale, bias, &mut slow);
                    let fast: Vec<u32> = fast[offset..].iter().map(|v| v.to_bits()).collect();
                    let slow: Vec<u32> = slow.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(fast, slow, "{w}x{h} flip {flip} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn scalar_matches_the_definition() {
        let (w, h) = (5, 2);
        let src = image(w, h, 7);
        let mut out = vec![0f32; 3 * w * h];
        write_chw_scalar(
            &src,
            w,
            h,
            true,
            [2.0, 3.0, 4.0],
            [1.0, -1.0, 0.5],
            &mut out,
        );
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = src[(y * w + x) * 3 + c] as f32;
                    let want = v * [2.0, 3.0, 4.0][c] + [1.0, -1.0, 0.5][c];
                    assert_eq!(out[c * w * h + y * w + (w - 1 - x)], want);
                }
            }
        }
    }
}
