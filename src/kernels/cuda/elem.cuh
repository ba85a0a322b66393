// Element types of this crate's CUDA kernels: f32, f64, bf16 and f16 storage, loaded into and stored from their
// arithmetic type (`Acc<T>::type`: f64 for f64, f32 otherwise).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__device__ __forceinline__ void st(float &d, float v) { d = v; }
__device__ __forceinline__ void st(double &d, double v) { d = v; }
__device__ __forceinline__ void st(__nv_bfloat16 &d, float v) { d = __float2bfloat16(v); }
__device__ __forceinline__ void st(__half &d, float v) { d = __float2half(v); }

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };
