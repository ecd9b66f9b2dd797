// Parameters shared by the raymarcher's CUDA kernels (raymarch_kernel.cu) and their binding (raymarch.cpp).
#pragma once
#include <cuda_runtime.h>

struct RaymarchParams {
  int N, H, W, K, D;
  int Gx, Gy, Gz;            // acceleration grid resolution (same for every image)
  float dt, termination;
  float fadescale, fadeexp;  // opacity border fade exp(-fadescale * sum_j |y_j|^fadeexp); fadescale 0: off
  int flags;                 // FLAG_* below (variants and diagnostics)
  const float* raypos;       // (N, H, W, 3)
  const float* raydir;       // (N, H, W, 3)
  const float* tminmax;      // (N, H, W, 2)
  const float4* prim;        // (N, K, 16): pos(3) scale(3) rot row-major(9) pad
  const float* tmpl;         // (N, K, 4, D, D, D) RGBA planes (channel-first, as the contract)
  const float* warp;         // (N, K, 3, D, D, D) or nullptr
  const float* gridinfo;     // (N, 12): lo(3) hi(3) inv_cell(3) cell(3)
  const int* cell_start;     // (N * Gz * Gy * Gx + 1)
  const int* cell_prims;     // (E,) primitive index k, ascending within each cell
  float* rgba;               // (N, H, W, 4) forward output
  float* aux;                // (N, H, W, 4) forward: rgb of the clamped sample, w = 1 if one was clamped
  const float* grad_rgba;    // (N, H, W, 4) backward input
  float* grad_tmpl;          // (N, K, 4, D, D, D) backward output (accumulated, zero-initialised)
  float* grad_warp;          // (N, K, 3, D, D, D) or nullptr
  float* grad_prim;          // (N, K, 16)
};

constexpr int FLAG_SKIP_TMPL_GRAD = 1;  // diagnostics: leave out the template/warp gradient atomics
constexpr int FLAG_SKIP_PRIM_GRAD = 2;  // diagnostics: leave out the transform gradient atomics
constexpr int FLAG_AGGREGATE = 4;       // sum transform gradients across the warp before the atomics
constexpr int FLAG_TILE_8X16 = 8;       // launch 8x16-pixel blocks (warps of 8x4 rays) instead of 16x8
constexpr int FLAG_OCCUPANCY = 16;      // kernels compiled for more resident blocks (register cap)

cudaError_t raymarch_forward_cuda(const RaymarchParams& p, cudaStream_t stream);
cudaError_t raymarch_backward_cuda(const RaymarchParams& p, cudaStream_t stream);
// Acceleration grid entries: for each primitive f = n*K + k with inclusive cell ranges clo..chi (N*K, 3) int32,
// write offsets[f] .. offsets[f] + count(f) - 1 of cells (global cell index) and prims (k).
cudaError_t grid_entries_cuda(const int* clo, const int* chi, const int64_t* offsets, int N, int K, int Gx, int Gy,
                              int Gz, int* cells, int* prims, cudaStream_t stream);
// cell_start (ncells + 1) from the E entries' cell indices sorted ascending.
cudaError_t cell_starts_cuda(const int* sorted_cells, int64_t E, int64_t ncells, int* cell_start, cudaStream_t stream);
cudaError_t prim_bounds_cuda(const float* pos, const float* rot, const float* scale, int N, int K, float* bounds,
                             float* stats, cudaStream_t stream);
cudaError_t cell_ranges_cuda(const float* bounds, const float* gridinfo, int N, int K, int Gx, int Gy, int Gz,
                             int* clo, int* chi, int64_t* cnt, cudaStream_t stream);
