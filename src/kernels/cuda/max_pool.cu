// 2-D max-pool over NCHW or channels-last (NHWC) tensors on CUDA, the GPU side of `pool.rs`, with the same
// semantics: −inf padding (windows clipped to the image), and all of an output's gradient goes to the first maximum
// of its window in row-major order (a NaN counts as a maximum, as in PyTorch).
//
// Forward: one thread per output. Backward: one thread per input element, which sums dy over the windows that cover
// it and whose argmax is that element: a gather, so no atomics and the result does not depend on scheduling. NCHW
// recomputes each window's argmax from x, as the CPU op does; channels-last (the model's layout on a GPU) keeps the
// forward's argmax, a u32 per output, because rescanning the windows made the backward 10× the forward. Indices are
// 32-bit within a plane; the caller keeps every tensor under 2³¹ elements.
#include "elem.cuh"

struct Geom {
  uint32_t h, w, k, stride, pad, ho, wo;
};

// The window of output o along an axis of `size`, clipped to [0, size).
__device__ __forceinline__ void window(const Geom &g, uint32_t o, uint32_t size, uint32_t &lo, uint32_t &hi) {
  const uint32_t start = o * g.stride;
  lo = start > g.pad ? start - g.pad : 0;
  const uint32_t end = start + g.k > g.pad ? start + g.k - g.pad : 0;
  hi = end < size ? end : size;
}

// The outputs [lo, hi) along an axis of `outs` whose windows cover input i: o·stride − pad ≤ i < o·stride − pad + k.
__device__ __forceinline__ void covering(const Geom &g, uint32_t i, uint32_t outs, uint32_t &lo, uint32_t &hi) {
  lo = i + g.pad + 1 > g.k ? (i + g.pad + 1 - g.k + g.stride - 1) / g.stride : 0;
  hi = min((i + g.pad) / g.stride + 1, outs);
}

// Index within the plane of the first maximum of output (oy, ox)'s window.
template <typename T>
__device__ __forceinline__ uint32_t argmax(const T *plane, const Geom &g, uint32_t oy, uint32_t ox) {
  uint32_t y0, y1, x0, x1;
  window(g, oy, g.h, y0, y1);
  window(g, ox, g.w, x0, x1);
  uint32_t best = y0 * g.w + x0;
  typename Acc<T>::type bv = -INFINITY;
  for (uint32_t iy = y0; iy < y1; ++iy) {
    for (uint32_t ix = x0; ix < x1; ++ix) {
      const typename Acc<T>::type v = ld(plane[iy * g.w + ix]);
      if (v > bv || v != v) {
        bv = v;
        best = iy * g.w + ix;
      }
    }
  }
  return best;
}

template <typename T>
__device__ void pool_fwd(const T *x, T *y, uint32_t planes, Geom g) {
  const uint32_t per = g.ho * g.wo;
  const uint32_t total = planes * per;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const uint32_t p = i / per, o = i % per;
    const T *plane = x + (size_t)p * g.h * g.w;
    y[i] = plane[argmax(plane, g, o / g.wo, o % g.wo)];
  }
}

template <typename T>
__device__ void pool_bwd(const T *x, const T *dy, T *dx, uint32_t planes, Geom g) {
  const uint32_t per = g.h * g.w;
  const uint32_t total = planes * per;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const uint32_t p = i / per, at = i % per;
    const uint32_t iy = at / g.w, ix = at % g.w;
    const T *plane = x + (size_t)p * per;
    const T *dplane = dy + (size_t)p * g.ho * g.wo;
    uint32_t ylo, yhi, xlo, xhi;
    covering(g, iy, g.ho, ylo, yhi);
    covering(g, ix, g.wo, xlo, xhi);
    typename Acc<T>::type acc = 0;
    for (uint32_t oy = ylo; oy < yhi; ++oy) {
      for (uint32_t ox = xlo; ox < xhi; ++ox) {
        if (argmax(plane, g, oy, ox) == at) acc += ld(dplane[oy * g.wo + ox]);
      }
    }
    st(dx[i], acc);
  }
}

// Channels-last: x [N, H, W, C], y [N, Ho, Wo, C]; the thread for (n, oy, ox, ch) scans its window down channel ch,
// so a warp reads consecutive channels.
template <typename T>
__device__ __forceinline__ uint32_t argmax_nhwc(const T *img, const Geom &g, uint32_t c, uint32_t ch, uint32_t oy,
                                                uint32_t ox) {
  uint32_t y0, y1, x0, x1;
  window(g, oy, g.h, y0, y1);
  window(g, ox, g.w, x0, x1);
  uint32_t best = y0 * g.w + x0;
  typename Acc<T>::type bv = -INFINITY;
  for (uint32_t iy = y0; iy < y1; ++iy) {
    for (uint32_t ix = x0; ix < x1; ++ix) {
      const typename Acc<T>::type v = ld(img[(size_t)(iy * g.w + ix) * c + ch]);
      if (v > bv || v != v) {
        bv = v;
        best = iy * g.w + ix;
      }
    }
  }
  return best;
}

// Channels-last with the argmax kept: the forward also writes each output's argmax (index in its image's plane),
// so the backward reads one index per covering window (at most ⌈k/s⌉² of them) instead of rescanning each window.
template <typename T>
__device__ void pool_fwd_idx_nhwc(const T *x, T *y, uint32_t *idx, uint32_t n, uint32_t c, Geom g) {
  const uint32_t total = n * g.ho * g.wo * c;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const uint32_t ch = i % c, pix = i / c;
    const uint32_t ox = pix % g.wo, oy = (pix / g.wo) % g.ho, img = pix / (g.wo * g.ho);
    const T *base = x + (size_t)img * g.h * g.w * c;
    const uint32_t at = argmax_nhwc(base, g, c, ch, oy, ox);
    idx[i] = at;
    y[i] = base[(size_t)at * c + ch];
  }
}

template <typename T>
__device__ void pool_bwd_idx_nhwc(const uint32_t *idx, const T *dy, T *dx, uint32_t n, uint32_t c, Geom g) {
  const uint32_t total = n * g.h * g.w * c;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const uint32_t ch = i % c, pix = i / c;
    const uint32_t at = pix % (g.h * g.w), img = pix / (g.h * g.w);
    const uint32_t iy = at / g.w, ix = at % g.w;
    const size_t obase = (size_t)img * g.ho * g.wo * c + ch;
    uint32_t ylo, yhi, xlo, xhi;
    covering(g, iy, g.ho, ylo, yhi);
    covering(g, ix, g.wo, xlo, xhi);
    typename Acc<T>::type acc = 0;
    for (uint32_t oy = ylo; oy < yhi; ++oy) {
      for (uint32_t ox = xlo; ox < xhi; ++ox) {
        const size_t o = obase + (size_t)(oy * g.wo + ox) * c;
        if (idx[o] == at) acc += ld(dy[o]);
      }
    }
    st(dx[i], acc);
  }
}

#define POOL_OPS(NAME, T)                                                                                           \
  extern "C" __global__ void max_pool_fwd_##NAME(const T *x, T *y, uint32_t planes, Geom g) {                      \
    pool_fwd<T>(x, y, planes, g);                                                                                   \
  }                                                                                                                 \
  extern "C" __global__ void max_pool_bwd_##NAME(const T *x, const T *dy, T *dx, uint32_t planes, Geom g) {        \
    pool_bwd<T>(x, dy, dx, planes, g);                                                                              \
  }                                                                                                                 \
  extern "C" __global__ void max_pool_fwd_idx_nhwc_##NAME(const T *x, T *y, uint32_t *idx, uint32_t n, uint32_t c, \
                                                          Geom g) {                                                 \
    pool_fwd_idx_nhwc<T>(x, y, idx, n, c, g);                                                                       \
  }                                                                                                                 \
  extern "C" __global__ void max_pool_bwd_idx_nhwc_##NAME(const uint32_t *idx, const T *dy, T *dx, uint32_t n,     \
                                                          uint32_t c, Geom g) {                                     \
    pool_bwd_idx_nhwc<T>(idx, dy, dx, n, c, g);                                                                     \
  }

POOL_OPS(f32, float)
POOL_OPS(f64, double)
POOL_OPS(bf16, __nv_bfloat16)
POOL_OPS(f16, __half)
