// Train-mode BatchNorm (+ optional ReLU) over NCHW tensors on CUDA: the GPU side of `bn.rs`.
//
// Forward: per channel over M = N·H·W values, Σx and Σx² in f64 (split over blocks, then one pass per channel),
// μ, biased σ², invstd = 1/√(σ²+eps); then y = x·(γ·invstd) + (β − μ·γ·invstd), max(y, 0) with ReLU.
// Backward with g = dy (zeroed where y ≤ 0 with ReLU) and x̂ = (x − μ)·invstd: dβ = Σg, dγ = Σg·x̂,
// dx = k·(g − dβ/M) − k·invstd·(dγ/M)·(x − μ), k = γ·invstd.
//
// Two layouts: NCHW (one block per plane, or per channel and split) and channels-last NHWC (x as [N·H·W, C]; 32
// channels per block, coalesced across channels). The per-channel finishing kernels are shared.
//
// T is the storage type of x, y, dy, dx (f32, f64, bf16, f16); P the type of γ, β, the statistics and the
// arithmetic (f64 for f64 tensors, f32 otherwise), so bf16 activations normalise with f32 parameters and f32
// statistics, and sums are f64 whatever T. Index arithmetic is 32-bit within a plane and per block: one division
// per block or per element in 32 bits (64-bit division per element is what made candle's broadcast ops slow).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> struct Cvt;
template <> struct Cvt<float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <> struct Cvt<double> {
  __device__ static double load(double v) { return v; }
  __device__ static double store(double v) { return v; }
};
template <> struct Cvt<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16(v); }
};
template <> struct Cvt<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half(v); }
};

// Sum of two doubles over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
__device__ void block_sum2(double &a, double &b) {
  __shared__ double sa[32], sb[32];
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < warps ? sa[lane] : 0.0;
    b = lane < warps ? sb[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, o);
      b += __shfl_down_sync(0xffffffffu, b, o);
    }
  }
}

// Block (c, s) of grid (C, S) covers images [N·s/S, N·(s+1)/S) of channel c and writes (Σx, Σx²) to part[c·S + s].
template <typename T>
__device__ void stats_partial(const T *x, double2 *part, uint32_t n, uint32_t c, uint32_t plane) {
  const uint32_t ch = blockIdx.x, s = blockIdx.y, splits = gridDim.y;
  const uint32_t n0 = (uint32_t)((uint64_t)n * s / splits), n1 = (uint32_t)((uint64_t)n * (s + 1) / splits);
  const uint32_t count = (n1 - n0) * plane;
  double sum = 0.0, sq = 0.0;
  for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) {
    const uint32_t img = n0 + i / plane, p = i % plane;
    const double v = (double)Cvt<T>::load(x[((size_t)img * c + ch) * plane + p]);
    sum += v;
    sq += v * v;
  }
  block_sum2(sum, sq);
  if (threadIdx.x == 0) part[ch * splits + s] = make_double2(sum, sq);
}

// One thread per channel: stats = [mean | invstd | unbiased var] (3·C), coef = [scale | shift] (2·C).
template <typename P>
__device__ void stats_final(const double2 *part, uint32_t splits, uint32_t c, double m, double eps, const P *gamma,
                            const P *beta, P *stats, P *coef) {
  const uint32_t ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double sum = 0.0, sq = 0.0;
  for (uint32_t s = 0; s < splits; ++s) {
    const double2 v = part[ch * splits + s];
    sum += v.x;
    sq += v.y;
  }
  const double mean = sum / m;
  const double var = fmax(sq / m - mean * mean, 0.0);
  const double invstd = 1.0 / sqrt(var + eps);
  const double scale = (double)gamma[ch] * invstd;
  stats[ch] = (P)mean;
  stats[c + ch] = (P)invstd;
  stats[2 * c + ch] = (P)(m > 1.0 ? var * m / (m - 1.0) : var);
  coef[ch] = (P)scale;
  coef[c + ch] = (P)((double)beta[ch] - mean * scale);
}

// Block r of grid (N·C) normalises plane r (channel r mod C).
template <typename T, typename P>
__device__ void apply(const T *x, T *y, const P *coef, uint32_t c, uint32_t plane, int relu) {
  const size_t row = blockIdx.x;
  const uint32_t ch = (uint32_t)(row % c);
  const P scale = coef[ch], shift = coef[c + ch];
  const T *xp = x + row * plane;
  T *yp = y + row * plane;
  for (uint32_t i = threadIdx.x; i < plane; i += blockDim.x) {
    P v = (P)Cvt<T>::load(xp[i]) * scale + shift;
    if (relu && !(v > (P)0)) v = (P)0;
    yp[i] = Cvt<T>::store(v);
  }
}

// As stats_partial for the backward sums (Σg, Σg·(x − μ)).
template <typename T, typename P>
__device__ void grad_partial(const T *x, const T *y, const T *dy, const P *stats, double2 *part, uint32_t n,
                             uint32_t c, uint32_t plane, int relu) {
  const uint32_t ch = blockIdx.x, s = blockIdx.y, splits = gridDim.y;
  const uint32_t n0 = (uint32_t)((uint64_t)n * s / splits), n1 = (uint32_t)((uint64_t)n * (s + 1) / splits);
  const uint32_t count = (n1 - n0) * plane;
  const double mean = (double)stats[ch];
  double sg = 0.0, sgx = 0.0;
  for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) {
    const size_t at = ((size_t)(n0 + i / plane) * c + ch) * plane + i % plane;
    double g = (double)Cvt<T>::load(dy[at]);
    if (relu && !((double)Cvt<T>::load(y[at]) > 0.0)) g = 0.0;
    sg += g;
    sgx += g * ((double)Cvt<T>::load(x[at]) - mean);
  }
  block_sum2(sg, sgx);
  if (threadIdx.x == 0) part[ch * splits + s] = make_double2(sg, sgx);
}

// One thread per channel: grads = [dγ | dβ] (2·C), coef = [k | −k·invstd·dγ/M | −k·dβ/M | μ] (4·C).
template <typename P>
__device__ void grad_final(const double2 *part, uint32_t splits, uint32_t c, double m, const P *gamma,
                           const P *stats, P *grads, P *coef) {
  const uint32_t ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double sg = 0.0, sgx = 0.0;
  for (uint32_t s = 0; s < splits; ++s) {
    const double2 v = part[ch * splits + s];
    sg += v.x;
    sgx += v.y;
  }
  const double mean = (double)stats[ch], invstd = (double)stats[c + ch];
  const double dgamma = sgx * invstd, dbeta = sg;
  const double k = (double)gamma[ch] * invstd;
  grads[ch] = (P)dgamma;
  grads[c + ch] = (P)dbeta;
  coef[ch] = (P)k;
  coef[c + ch] = (P)(-k * invstd * dgamma / m);
  coef[2 * c + ch] = (P)(-k * dbeta / m);
  coef[3 * c + ch] = (P)mean;
}

template <typename T, typename P>
__device__ void grad_apply(const T *x, const T *y, const T *dy, T *dx, const P *coef, uint32_t c, uint32_t plane,
                           int relu) {
  const size_t row = blockIdx.x;
  const uint32_t ch = (uint32_t)(row % c);
  const P k = coef[ch], b = coef[c + ch], d = coef[2 * c + ch], mean = coef[3 * c + ch];
  const size_t base = row * plane;
  for (uint32_t i = threadIdx.x; i < plane; i += blockDim.x) {
    P g = (P)Cvt<T>::load(dy[base + i]);
    if (relu && !((P)Cvt<T>::load(y[base + i]) > (P)0)) g = (P)0;
    dx[base + i] = Cvt<T>::store(k * g + b * ((P)Cvt<T>::load(x[base + i]) - mean) + d);
  }
}

// Channels-last (NHWC): x is [M, C] with M = N·H·W rows. Block (t, s) of grid (⌈C/32⌉, S), 32×8 threads: lane x
// takes channel 32·t + x, the 8 rows of threads stride over rows [M·s/S, M·(s+1)/S), so each warp reads 32
// consecutive channels of one row. The 8 partial sums per channel meet in shared memory.
// Adds the 8 row-threads' (a, b) of each channel in shared memory and writes the channel's total to
// part[ch·S + s]: the end of both channels-last partial-sum kernels.
__device__ void column_sum2(double a, double b, double2 *part, uint32_t ch, uint32_t c) {
  __shared__ double2 acc[8][32];
  acc[threadIdx.y][threadIdx.x] = make_double2(a, b);
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    for (int k = 1; k < 8; ++k) {
      a += acc[k][threadIdx.x].x;
      b += acc[k][threadIdx.x].y;
    }
    part[ch * gridDim.y + blockIdx.y] = make_double2(a, b);
  }
}

template <typename T>
__device__ void stats_partial_nhwc(const T *x, double2 *part, uint32_t m, uint32_t c) {
  const uint32_t ch = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y, splits = gridDim.y;
  const uint32_t r0 = (uint32_t)((uint64_t)m * s / splits), r1 = (uint32_t)((uint64_t)m * (s + 1) / splits);
  double sum = 0.0, sq = 0.0;
  if (ch < c) {
    for (uint32_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const double v = (double)Cvt<T>::load(x[(size_t)r * c + ch]);
      sum += v;
      sq += v * v;
    }
  }
  column_sum2(sum, sq, part, ch, c);
}

template <typename T, typename P>
__device__ void apply_nhwc(const T *x, T *y, const P *coef, uint32_t c, uint32_t total, int relu) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const uint32_t ch = i % c;
    P v = (P)Cvt<T>::load(x[i]) * coef[ch] + coef[c + ch];
    if (relu && !(v > (P)0)) v = (P)0;
    y[i] = Cvt<T>::store(v);
  }
}

template <typename T, typename P>
__device__ void grad_partial_nhwc(const T *x, const T *y, const T *dy, const P *stats, double2 *part, uint32_t m,
                                  uint32_t c, int relu) {
  const uint32_t ch = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y, splits = gridDim.y;
  const uint32_t r0 = (uint32_t)((uint64_t)m * s / splits), r1 = (uint32_t)((uint64_t)m * (s + 1) / splits);
  double sg = 0.0, sgx = 0.0;
  if (ch < c) {
    const double mean = (double)stats[ch];
    for (uint32_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const size_t at = (size_t)r * c + ch;
      double g = (double)Cvt<T>::load(dy[at]);
      if (relu && !((double)Cvt<T>::load(y[at]) > 0.0)) g = 0.0;
      sg += g;
      sgx += g * ((double)Cvt<T>::load(x[at]) - mean);
    }
  }
  column_sum2(sg, sgx, part, ch, c);
}

template <typename T, typename P>
__device__ void grad_apply_nhwc(const T *x, const T *y, const T *dy, T *dx, const P *coef, uint32_t c,
                                uint32_t total, int relu) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const uint32_t ch = i % c;
    P g = (P)Cvt<T>::load(dy[i]);
    if (relu && !((P)Cvt<T>::load(y[i]) > (P)0)) g = (P)0;
    dx[i] = Cvt<T>::store(coef[ch] * g + coef[c + ch] * ((P)Cvt<T>::load(x[i]) - coef[3 * c + ch]) + coef[2 * c + ch]);
  }
}

#define BN_OPS(NAME, T, P)                                                                                          \
  extern "C" __global__ void bn_stats_partial_##NAME(const T *x, double2 *part, uint32_t n, uint32_t c,            \
                                                     uint32_t plane) {                                             \
    stats_partial<T>(x, part, n, c, plane);                                                                         \
  }                                                                                                                 \
  extern "C" __global__ void bn_apply_##NAME(const T *x, T *y, const P *coef, uint32_t c, uint32_t plane,          \
                                             int relu) {                                                            \
    apply<T, P>(x, y, coef, c, plane, relu);                                                                        \
  }                                                                                                                 \
  extern "C" __global__ void bn_grad_partial_##NAME(const T *x, const T *y, const T *dy, const P *stats,           \
                                                    double2 *part, uint32_t n, uint32_t c, uint32_t plane,          \
                                                    int relu) {                                                     \
    grad_partial<T, P>(x, y, dy, stats, part, n, c, plane, relu);                                                   \
  }                                                                                                                 \
  extern "C" __global__ void bn_grad_apply_##NAME(const T *x, const T *y, const T *dy, T *dx, const P *coef,       \
                                                  uint32_t c, uint32_t plane, int relu) {                           \
    grad_apply<T, P>(x, y, dy, dx, coef, c, plane, relu);                                                           \
  }                                                                                                                 \
  extern "C" __global__ void bn_stats_partial_nhwc_##NAME(const T *x, double2 *part, uint32_t m, uint32_t c) {     \
    stats_partial_nhwc<T>(x, part, m, c);                                                                           \
  }                                                                                                                 \
  extern "C" __global__ void bn_apply_nhwc_##NAME(const T *x, T *y, const P *coef, uint32_t c, uint32_t total,     \
                                                  int relu) {                                                       \
    apply_nhwc<T, P>(x, y, coef, c, total, relu);                                                                   \
  }                                                                                                                 \
  extern "C" __global__ void bn_grad_partial_nhwc_##NAME(const T *x, const T *y, const T *dy, const P *stats,      \
                                                         double2 *part, uint32_t m, uint32_t c, int relu) {         \
    grad_partial_nhwc<T, P>(x, y, dy, stats, part, m, c, relu);                                                     \
  }                                                                                                                 \
  extern "C" __global__ void bn_grad_apply_nhwc_##NAME(const T *x, const T *y, const T *dy, T *dx, const P *coef,  \
                                                       uint32_t c, uint32_t total, int relu) {                      \
    grad_apply_nhwc<T, P>(x, y, dy, dx, coef, c, total, relu);                                                      \
  }

BN_OPS(f32, float, float)
BN_OPS(f64, double, double)
BN_OPS(bf16, __nv_bfloat16, float)
BN_OPS(f16, __half, float)

extern "C" __global__ void bn_stats_final_f32(const double2 *part, uint32_t splits, uint32_t c, double m, double eps,
                                              const float *gamma, const float *beta, float *stats, float *coef) {
  stats_final<float>(part, splits, c, m, eps, gamma, beta, stats, coef);
}
extern "C" __global__ void bn_stats_final_f64(const double2 *part, uint32_t splits, uint32_t c, double m, double eps,
                                              const double *gamma, const double *beta, double *stats, double *coef) {
  stats_final<double>(part, splits, c, m, eps, gamma, beta, stats, coef);
}
extern "C" __global__ void bn_grad_final_f32(const double2 *part, uint32_t splits, uint32_t c, double m,
                                             const float *gamma, const float *stats, float *grads, float *coef) {
  grad_final<float>(part, splits, c, m, gamma, stats, grads, coef);
}
extern "C" __global__ void bn_grad_final_f64(const double2 *part, uint32_t splits, uint32_t c, double m,
                                             const double *gamma, const double *stats, double *grads, double *coef) {
  grad_final<double>(part, splits, c, m, gamma, stats, grads, coef);
}
