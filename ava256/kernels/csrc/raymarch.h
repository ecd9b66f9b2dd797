// Parameters shared by the raymarcher's CUDA kernels (raymarch_kernel.cu) and their binding (raymarch.cpp).
#pragma once
#include <cuda_runtime.h>

struct RaymarchParams {
  int N, H, W, K, D;
  int Gx, Gy, Gz;            // acceleration grid resolution (same for every image)
  float dt, termination;
  const float* raypos;       // (N, H, W, 3)
  const float* raydir;       // (N, H, W, 3)
  const float* tminmax;      // (N, H, W, 2)
  const float4* prim;        // (N, K, 16): pos(3) scale(3) rot row-major(9) pad
  const float4* tmpl;        // (N, K, D, D, D, 4) channel-last RGBA
  const float4* warp;        // (N, K, D, D, D, 4) channel-last xyz + pad, or nullptr
  const float* gridinfo;     // (N, 12): lo(3) hi(3) inv_cell(3) cell(3)
  const int* cell_start;     // (N * Gz * Gy * Gx + 1)
  const int* cell_prims;     // (E,) primitive index k, ascending within each cell
  float* rgba;               // (N, H, W, 4) forward output
  float* aux;                // (N, H, W, 4) forward: rgb of the clamped sample, w = 1 if one was clamped
  const float* grad_rgba;    // (N, H, W, 4) backward input
  float4* grad_tmpl;         // (N, K, D, D, D, 4) backward output (accumulated, zero-initialised)
  float4* grad_warp;         // (N, K, D, D, D, 4) or nullptr
  float* grad_prim;          // (N, K, 16)
};

cudaError_t raymarch_forward_cuda(const RaymarchParams& p, cudaStream_t stream);
cudaError_t raymarch_backward_cuda(const RaymarchParams& p, cudaStream_t stream);
