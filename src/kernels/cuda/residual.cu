// The end of a residual block on CUDA, relu(a + b), and its backward g·[y > 0] (both inputs get that gradient):
// the GPU side of `residual.rs`, one pass each way instead of candle's add, ReLU, comparison, cast and multiply.
// NaN becomes 0 in the forward, as in candle's ReLU. Flat grid-stride loops over contiguous tensors of under 2³¹
// elements.
#include "elem.cuh"

template <typename T>
__device__ void add_relu_fwd(const T *a, const T *b, T *y, uint32_t n) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const auto s = ld(a[i]) + ld(b[i]);
    st(y[i], s > 0 ? s : 0);
  }
}

template <typename T>
__device__ void relu_grad(const T *y, const T *g, T *dx, uint32_t n) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    st(dx[i], ld(y[i]) > 0 ? ld(g[i]) : 0);
  }
}

#define RESIDUAL_OPS(NAME, T)                                                                                       \
  extern "C" __global__ void add_relu_fwd_##NAME(const T *a, const T *b, T *y, uint32_t n) {                       \
    add_relu_fwd<T>(a, b, y, n);                                                                                    \
  }                                                                                                                 \
  extern "C" __global__ void relu_grad_##NAME(const T *y, const T *g, T *dx, uint32_t n) {                         \
    relu_grad<T>(y, g, dx, n);                                                                                      \
  }

RESIDUAL_OPS(f32, float)
RESIDUAL_OPS(f64, double)
RESIDUAL_OPS(bf16, __nv_bfloat16)
RESIDUAL_OPS(f16, __half)
