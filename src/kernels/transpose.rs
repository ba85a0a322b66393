//! 8×8 block transposes: how the Winograd kernels turn NCHW planes into channel-minor rows and back.
//!
//! `Float::transpose8` ([`transpose8_f32`], [`transpose8_scalar`] for f64) reads 8 rows of 8 values (row i at
//! `src[s0 + i·ss ..]`) and writes them as 8 columns (value j of row i to `dst[d0 + j·ds + i]`). For f32 on a CPU
//! with AVX2 it is 8 loads, 24 in-register shuffles and 8 stores; otherwise (f64, or no AVX2) a plain loop, which the
//! compiler does not turn into shuffles: 64 scalar moves, most of the repacking time of the Winograd transforms
//! before this existed.

/// Side of the blocks.
pub(super) const BLOCK: usize = 8;

/// The plain loop, for every element type. Panics when a row lies outside its slice.
#[inline(always)]
pub(super) fn transpose8_scalar<T: Copy>(
    src: &[T],
    s0: usize,
    ss: usize,
    dst: &mut [T],
    d0: usize,
    ds: usize,
) {
    for i in 0..BLOCK {
        let row = &src[s0 + i * ss..][..BLOCK];
        for (j, &v) in row.iter().enumerate() {
            dst[d0 + j * ds + i] = v;
        }
    }
}

/// The f32 version: AVX2 shuffles when the CPU has them. Panics when a row lies outside its slice.
#[inline]
pub(super) fn transpose8_f32(
    src: &[f32],
    s0: usize,
    ss: usize,
    dst: &mut [f32],
    d0: usize,
    ds: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        let last = |start: usize, stride: usize| start + (BLOCK - 1) * stride + BLOCK;
        assert!(
            last(s0, ss) <= src.len() && last(d0, ds) <= dst.len(),
            "transpose8: block outside its buffer"
        );
        // SAFETY: AVX2 is present and every row touched lies inside its slice (both checked just above).
        unsafe { avx2(src.as_ptr().add(s0), ss, dst.as_mut_ptr().add(d0), ds) };
        return;
    }
    transpose8_scalar(src, s0, ss, dst, d0, ds);
}

/// # Safety
/// AVX2 must be available; `src + i·ss` and `dst + i·ds` must be valid for 8 reads / writes for i in 0..8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the pointers are valid by the function's contract; unaligned loads and stores.
    unsafe {
        let r: [__m256; BLOCK] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        // Pairs of rows interleaved: a0 b0 a1 b1 | a4 b4 a5 b5, and the high halves.
        let lo01 = _mm256_unpacklo_ps(r[0], r[1]);
        let hi01 = _mm256_unpackhi_ps(r[0], r[1]);
        let lo23 = _mm256_unpacklo_ps(r[2], r[3]);
        let hi23 = _mm256_unpackhi_ps(r[2], r[3]);
        let lo45 = _mm256_unpacklo_ps(r[4], r[5]);
        let hi45 = _mm256_unpackhi_ps(r[4], r[5]);
        let lo67 = _mm256_unpacklo_ps(r[6], r[7]);
        let hi67 = _mm256_unpackhi_ps(r[6], r[7]);
        // Quads: column j of rows 0..4 in one 128-bit lane (j and j+4 in the two lanes).
        let c0 = _mm256_shuffle_ps::<0x44>(lo01, lo23);
        let c1 = _mm256_shuffle_ps::<0xEE>(lo01, lo23);
        let c2 = _mm256_shuffle_ps::<0x44>(hi01, hi23);
        let c3 = _mm256_shuffle_ps::<0xEE>(hi01, hi23);
        let c4 = _mm256_shuffle_ps::<0x44>(lo45, lo67);
        let c5 = _mm256_shuffle_ps::<0xEE>(lo45, lo67);
        let c6 = _mm256_shuffle_ps::<0x44>(hi45, hi67);
        let c7 = _mm256_shuffle_ps::<0xEE>(hi45, hi67);
        // Rows 0..4 and 4..8 of column j joined from the two quads.
        let out = [
            _mm256_permute2f128_ps::<0x20>(c0, c4),
            _mm256_permute2f128_ps::<0x20>(c1, c5),
            _mm256_permute2f128_ps::<0x20>(c2, c6),
            _mm256_permute2f128_ps::<0x20>(c3, c7),
            _mm256_permute2f128_ps::<0x31>(c0, c4),
            _mm256_permute2f128_ps::<0x31>(c1, c5),
            _mm256_permute2f128_ps::<0x31>(c2, c6),
            _mm256_permute2f128_ps::<0x31>(c3, c7),
        ];
        for (j, v) in out.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * ds), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Float;
    use super::*;

    /// Against the definition, in f32 (the AVX2 path where the CPU has it) and f64 (the loop), with strides
    /// larger than a row and offsets into the buffers; and twice is the identity.
    #[test]
    fn transposes_blocks() {
        let (ss, ds, s0, d0) = (11, 9, 3, 5);
        let src: Vec<f32> = (0..s0 + 7 * ss + 8).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut dst = vec![f32::NAN; d0 + 7 * ds + 8];
        f32::transpose8(&src, s0, ss, &mut dst, d0, ds);
        for i in 0..BLOCK {
            for j in 0..BLOCK {
                assert_eq!(dst[d0 + j * ds + i], src[s0 + i * ss + j], "({i}, {j})");
            }
        }
        let mut back = vec![0f32; src.len()];
        f32::transpose8(&dst, d0, ds, &mut back, s0, ss);
        for i in 0..BLOCK {
            assert_eq!(back[s0 + i * ss..][..BLOCK], src[s0 + i * ss..][..BLOCK]);
        }
        let src64: Vec<f64> = src.iter().map(|&v| f64::from(v)).collect();
        let mut dst64 = vec![f64::NAN; dst.len()];
        f64::transpose8(&src64, s0, ss, &mut dst64, d0, ds);
        for i in 0..BLOCK {
            for j in 0..BLOCK {
                assert_eq!(dst64[d0 + j * ds + i], f64::from(dst[d0 + j * ds + i]));
            }
        }
    }

    #[test]
    #[should_panic]
    fn refuses_a_block_past_the_end() {
        let src = vec![0f32; 63];
        let mut dst = vec![0f32; 64];
        f32::transpose8(&src, 0, 8, &mut dst, 0, 8);
    }
}
