//! Per-sample random numbers derived from (seed, epoch, index, stream).
//!
//! Invariant: the numbers a sample sees depend only on those four values,
//! never on which worker thread handles it or when, so a run is
//! reproducible whatever `--workers` is. The generator is SplitMix64: tiny
//! state (one u64), fast, statistically fine for augmentation parameters,
//! and trivially seekable by construction (each sample gets its own stream
//! instead of sharing one advanced in an order that would depend on timing).

/// Independent streams, so the sampler's permutation, a sample's
/// augmentation and a batch's mixup never reuse the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// The epoch's permutation (global or buffer shuffle).
    Order = 1,
    /// A sample's crop, flip and erasing.
    Augment = 2,
    /// A batch's mixup / cutmix choice and λ.
    Batch = 3,
    /// The choice of a replacement for a sample that failed to load.
    Replace = 4,
}

/// SplitMix64 finaliser: a bijective mix of 64 bits.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SampleRng {
    state: u64,
}

impl SampleRng {
    /// The generator of `stream` for item `index` of `epoch` under `seed`.
    /// Each key component goes through the mixer separately so that, e.g.,
    /// (epoch 1, index 0) and (epoch 0, index 1) do not collide.
    pub fn new(seed: u64, epoch: u64, index: u64, stream: Stream) -> SampleRng {
        let mut s = mix64(seed ^ 0x9E37_79B9_7F4A_7C15);
        s = mix64(s ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
        s = mix64(s ^ index.wrapping_mul(0xABC9_8388_FB8D_AC8B));
        s = mix64(s ^ (stream as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7));
        SampleRng { state: s }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    #[inline]
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n); 0 when n is 0. Lemire's multiply-shift
    /// (the bias is below 2^-32 for the n used here).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A Gamma(shape, 1) draw (Marsaglia–Tsang; shape < 1 by boosting).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform().max(f64::MIN_POSITIVE);
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform();
            if u < 1.0 - 0.0331 * x * x * x * x || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// A standard normal draw (Box–Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A Beta(a, a) draw, as mixup and cutmix use for λ.
    pub fn beta_sym(&mut self, a: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(a);
        if x + y == 0.0 {
            0.5
        } else {
            x / (x + y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_keys_differ() {
        let a = SampleRng::new(1, 0, 1, Stream::Augment).next_u64();
        let b = SampleRng::new(1, 1, 0, Stream::Augment).next_u64();
        let c = SampleRng::new(1, 0, 1, Stream::Batch).next_u64();
        let d = SampleRng::new(1, 0, 1, Stream::Augment).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, d);
    }

    #[test]
    fn uniform_and_beta_moments() {
        let mut r = SampleRng::new(7, 0, 0, Stream::Batch);
        let n = 20_000;
        let mean_u: f64 = (0..n).map(|_| r.uniform()).sum::<f64>() / n as f64;
        assert!((mean_u - 0.5).abs() < 0.01, "{mean_u}");
        // Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)).
        for a in [0.2, 1.0] {
            let xs: Vec<f64> = (0..n).map(|_| r.beta_sym(a)).collect();
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
            let m = xs.iter().sum::<f64>() / n as f64;
            let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
            let want = 1.0 / (4.0 * (2.0 * a + 1.0));
            assert!((m - 0.5).abs() < 0.02, "a={a} mean {m}");
            assert!((v - want).abs() < 0.1 * want, "a={a} var {v} want {want}");
        }
        let below: Vec<u64> = (0..1000).map(|_| r.below(3)).collect();
        assert!(below.iter().all(|&b| b < 3) && (0..3).all(|k| below.contains(&k)));
    }
}
