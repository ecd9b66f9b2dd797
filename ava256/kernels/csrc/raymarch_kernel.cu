// MVP raymarcher (Lombardi et al. 2021): forward and backward CUDA kernels.
//
// One thread per ray; rays are assigned in 16x8 pixel tiles so that the lanes of a warp march neighbouring
// rays. Acceleration structure: a uniform grid over the primitives' bounding boxes (built by the caller in
// PyTorch, see ava256/kernels/function.py): cell c lists, in ascending k, every primitive whose padded
// axis-aligned bounding box overlaps c. At each sample t = tmin + i*dt the ray looks up the cell of its point
// and tests only that cell's primitives; empty cells are skipped in one jump to the sample before the cell's
// exit. The semantics are exactly those of the PyTorch reference (ava256/kernels/reference.py); the
// positions x and the local coordinates y are computed with explicitly rounded operations (no FMA
// contraction) in the reference's order, so the discrete "is x inside primitive k" decisions agree bit for bit.
//
// Backward recomputes the forward march of each ray, and for every sample scatters gradients into the
// template/warp (float4 atomics) and the primitive transforms (scalar atomics), using the per-ray record of
// the one sample whose opacity was clamped to 1 - A (if any), which couples all earlier samples of that ray.
//
// This file includes no PyTorch headers: raymarch.cpp binds it.

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "raymarch.h"

namespace {

constexpr int TILE_X = 16;
constexpr int TILE_Y = 8;

__device__ __forceinline__ float4 f4add(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 f4scale(float4 a, float s) {
  return make_float4(a.x * s, a.y * s, a.z * s, a.w * s);
}

__device__ __forceinline__ void atomic_add4(float4* addr, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(addr, v);
#else
  float* a = reinterpret_cast<float*>(addr);
  atomicAdd(a + 0, v.x);
  atomicAdd(a + 1, v.y);
  atomicAdd(a + 2, v.z);
  atomicAdd(a + 3, v.w);
#endif
}

// Trilinear interpolation weights (align_corners=True) of a D^3 grid indexed [z, y, x] at y in [-1, 1]^3.
struct Trilerp {
  int base;      // voxel index of corner (0, 0, 0)
  int step[3];   // index offsets to the +1 neighbour along x, y, z (0 at the clamped upper edge)
  float f[3];    // fractional offsets
};

__device__ __forceinline__ Trilerp make_trilerp(float y0, float y1, float y2, int D) {
  Trilerp t;
  const float scale = (float)(D - 1);
  const float ys[3] = {y0, y1, y2};
  int i0[3];
  for (int a = 0; a < 3; ++a) {
    float u = ((ys[a] + 1.0f) * 0.5f) * scale;
    float u0 = fminf(fmaxf(floorf(u), 0.0f), (float)max(D - 2, 0));
    t.f[a] = u - u0;
    i0[a] = (int)u0;
  }
  t.base = (i0[2] * D + i0[1]) * D + i0[0];
  t.step[0] = (i0[0] + 1 <= D - 1) ? 1 : 0;
  t.step[1] = (i0[1] + 1 <= D - 1) ? D : 0;
  t.step[2] = (i0[2] + 1 <= D - 1) ? D * D : 0;
  return t;
}

__device__ __forceinline__ int corner_index(const Trilerp& t, int c) {
  return t.base + ((c & 1) ? t.step[0] : 0) + ((c & 2) ? t.step[1] : 0) + ((c & 4) ? t.step[2] : 0);
}

__device__ __forceinline__ float corner_weight(const Trilerp& t, int c) {
  float wx = (c & 1) ? t.f[0] : 1.0f - t.f[0];
  float wy = (c & 2) ? t.f[1] : 1.0f - t.f[1];
  float wz = (c & 4) ? t.f[2] : 1.0f - t.f[2];
  return wz * wy * wx;
}

// d(weight)/d(f_axis)
__device__ __forceinline__ void corner_dweight(const Trilerp& t, int c, float out[3]) {
  float wx = (c & 1) ? t.f[0] : 1.0f - t.f[0];
  float wy = (c & 2) ? t.f[1] : 1.0f - t.f[1];
  float wz = (c & 4) ? t.f[2] : 1.0f - t.f[2];
  float sx = (c & 1) ? 1.0f : -1.0f;
  float sy = (c & 2) ? 1.0f : -1.0f;
  float sz = (c & 4) ? 1.0f : -1.0f;
  out[0] = wz * wy * sx;
  out[1] = wz * sy * wx;
  out[2] = sz * wy * wx;
}

__device__ __forceinline__ float4 sample4(const float4* __restrict__ grid, const Trilerp& t, float4 v[8]) {
#pragma unroll
  for (int c = 0; c < 8; ++c) v[c] = __ldg(grid + corner_index(t, c));
  float4 out = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int c = 0; c < 8; ++c) out = f4add(out, f4scale(v[c], corner_weight(t, c)));
  return out;
}

template <bool BACKWARD, bool WARP>
__global__ void __launch_bounds__(TILE_X* TILE_Y) march_kernel(const RaymarchParams p) {
  const int px = blockIdx.x * TILE_X + threadIdx.x;
  const int py = blockIdx.y * TILE_Y + threadIdx.y;
  const int n = blockIdx.z;
  if (px >= p.W || py >= p.H) return;
  const int64_t ray = ((int64_t)n * p.H + py) * p.W + px;

  const float ox = p.raypos[ray * 3 + 0], oy = p.raypos[ray * 3 + 1], oz = p.raypos[ray * 3 + 2];
  const float dx = p.raydir[ray * 3 + 0], dy = p.raydir[ray * 3 + 1], dz = p.raydir[ray * 3 + 2];
  const float tmin = p.tminmax[ray * 2 + 0], tmax = p.tminmax[ray * 2 + 1];
  const float dt = p.dt;
  const int D = p.D;
  const int D3 = D * D * D;
  const float half_span = 0.5f * (float)(D - 1);

  float cr = 0.f, cg = 0.f, cb = 0.f, A = 0.f;
  float4 clamp_rec = make_float4(0.f, 0.f, 0.f, 0.f);  // rgb of the clamped sample, w = 1 if any

  float gcr = 0.f, gcg = 0.f, gcb = 0.f, gA = 0.f, corr = 0.f;
  if (BACKWARD) {
    const float4 g = reinterpret_cast<const float4*>(p.grad_rgba)[ray];
    gcr = g.x;
    gcg = g.y;
    gcb = g.z;
    gA = g.w;
    const float4 rec = reinterpret_cast<const float4*>(p.aux)[ray];
    if (rec.w > 0.5f) corr = rec.x * gcr + rec.y * gcg + rec.z * gcb + gA;
  }

  const float* gi = p.gridinfo + (int64_t)n * 12;
  const float lox = gi[0], loy = gi[1], loz = gi[2];
  const float hix = gi[3], hiy = gi[4], hiz = gi[5];
  const float ivx = gi[6], ivy = gi[7], ivz = gi[8];
  const float csx = gi[9], csy = gi[10], csz = gi[11];

  // Clip the ray to the grid's box (slab test).
  const float rdx = 1.0f / dx, rdy = 1.0f / dy, rdz = 1.0f / dz;
  float t0 = -INFINITY, t1 = INFINITY;
  {
    float a = (lox - ox) * rdx, b = (hix - ox) * rdx;
    if (dx != 0.f) { t0 = fmaxf(t0, fminf(a, b)); t1 = fminf(t1, fmaxf(a, b)); }
    else if (ox < lox || ox > hix) t1 = -INFINITY;
    a = (loy - oy) * rdy; b = (hiy - oy) * rdy;
    if (dy != 0.f) { t0 = fmaxf(t0, fminf(a, b)); t1 = fminf(t1, fmaxf(a, b)); }
    else if (oy < loy || oy > hiy) t1 = -INFINITY;
    a = (loz - oz) * rdz; b = (hiz - oz) * rdz;
    if (dz != 0.f) { t0 = fmaxf(t0, fminf(a, b)); t1 = fminf(t1, fmaxf(a, b)); }
    else if (oz < loz || oz > hiz) t1 = -INFINITY;
  }
  const float tenter = fmaxf(tmin, t0);
  const float texit = fminf(tmax, t1);

  if (tmax > tmin && tenter <= texit && dt > 0.f) {
    const float tlimit = texit + 1e-4f * (1.0f + fabsf(texit)) + dt;
    int i = 0;
    {
      const float s = floorf((tenter - tmin) / dt) - 1.0f;
      if (s > 0.f) i = (int)fminf(s, 2.0e9f);
    }
    const int Gx = p.Gx, Gy = p.Gy, Gz = p.Gz;
    const float4* __restrict__ prims = p.prim + (int64_t)n * p.K * 4;
    const float4* __restrict__ tmpl = p.tmpl + (int64_t)n * p.K * D3;
    const float4* __restrict__ warp = WARP ? p.warp + (int64_t)n * p.K * D3 : nullptr;
    bool done = false;
    while (!done) {
      const float t = __fadd_rn(tmin, __fmul_rn((float)i, dt));
      if (!(t < tmax) || t > tlimit) break;
      const float xx = __fadd_rn(ox, __fmul_rn(t, dx));
      const float xy = __fadd_rn(oy, __fmul_rn(t, dy));
      const float xz = __fadd_rn(oz, __fmul_rn(t, dz));
      const float fx = floorf(__fmul_rn(__fsub_rn(xx, lox), ivx));
      const float fy = floorf(__fmul_rn(__fsub_rn(xy, loy), ivy));
      const float fz = floorf(__fmul_rn(__fsub_rn(xz, loz), ivz));
      if (!(fx >= 0.f && fy >= 0.f && fz >= 0.f && fx < (float)Gx && fy < (float)Gy && fz < (float)Gz)) {
        ++i;
        continue;
      }
      const int cx = (int)fx, cy = (int)fy, cz = (int)fz;
      const int64_t cell = (((int64_t)n * Gz + cz) * Gy + cy) * Gx + cx;
      const int start = __ldg(p.cell_start + cell), end = __ldg(p.cell_start + cell + 1);
      if (start == end) {
        // Jump over the empty cell: to the last sample at or before its exit (at least one step ahead).
        float te = INFINITY;
        if (dx > 0.f) te = fminf(te, (lox + (float)(cx + 1) * csx - ox) * rdx);
        if (dx < 0.f) te = fminf(te, (lox + (float)cx * csx - ox) * rdx);
        if (dy > 0.f) te = fminf(te, (loy + (float)(cy + 1) * csy - oy) * rdy);
        if (dy < 0.f) te = fminf(te, (loy + (float)cy * csy - oy) * rdy);
        if (dz > 0.f) te = fminf(te, (loz + (float)(cz + 1) * csz - oz) * rdz);
        if (dz < 0.f) te = fminf(te, (loz + (float)cz * csz - oz) * rdz);
        const float s = floorf((te - tmin) / dt);
        int inext = i + 1;
        if (s > (float)inext) inext = (int)fminf(s, 2.0e9f);
        i = inext;
        continue;
      }
      for (int e = start; e < end; ++e) {
        const int k = __ldg(p.cell_prims + e);
        const float4 q0 = __ldg(prims + (int64_t)k * 4 + 0);
        const float4 q1 = __ldg(prims + (int64_t)k * 4 + 1);
        const float4 q2 = __ldg(prims + (int64_t)k * 4 + 2);
        const float4 q3 = __ldg(prims + (int64_t)k * 4 + 3);
        // layout: pos(3) scale(3) rot row-major(9) pad
        const float ddx = __fsub_rn(xx, q0.x), ddy = __fsub_rn(xy, q0.y), ddz = __fsub_rn(xz, q0.z);
        const float r00 = q1.z, r01 = q1.w, r02 = q2.x;
        const float r10 = q2.y, r11 = q2.z, r12 = q2.w;
        const float r20 = q3.x, r21 = q3.y, r22 = q3.z;
        const float s0 = q0.w, s1 = q1.x, s2 = q1.y;
        const float l0 = __fadd_rn(__fadd_rn(__fmul_rn(r00, ddx), __fmul_rn(r01, ddy)), __fmul_rn(r02, ddz));
        const float l1 = __fadd_rn(__fadd_rn(__fmul_rn(r10, ddx), __fmul_rn(r11, ddy)), __fmul_rn(r12, ddz));
        const float l2 = __fadd_rn(__fadd_rn(__fmul_rn(r20, ddx), __fmul_rn(r21, ddy)), __fmul_rn(r22, ddz));
        const float y0 = __fmul_rn(l0, s0), y1 = __fmul_rn(l1, s1), y2 = __fmul_rn(l2, s2);
        if (!(fabsf(y0) <= 1.f && fabsf(y1) <= 1.f && fabsf(y2) <= 1.f)) continue;

        // Sample (optionally through the warp).
        float w0 = y0, w1 = y1, w2 = y2;
        Trilerp tw;
        float4 wv[8];
        if (WARP) {
          tw = make_trilerp(y0, y1, y2, D);
          const float4 wr = sample4(warp + (int64_t)k * D3, tw, wv);
          w0 = fminf(fmaxf(wr.x, -1.f), 1.f);
          w1 = fminf(fmaxf(wr.y, -1.f), 1.f);
          w2 = fminf(fmaxf(wr.z, -1.f), 1.f);
          if (BACKWARD) {
            // keep the unclamped values to mask the clamp's gradient
            wv[0].w = wr.x;  // stash (w channel of the warp grid is padding and unused)
            wv[1].w = wr.y;
            wv[2].w = wr.z;
          }
        }
        const Trilerp tt = make_trilerp(w0, w1, w2, D);
        float4 tv[8];
        const float4 rgba = sample4(tmpl + (int64_t)k * D3, tt, tv);

        const float wgt = rgba.w * dt;
        const float rem = 1.0f - A;
        const bool clamped = wgt > rem;
        const float a = clamped ? rem : wgt;

        if (BACKWARD) {
          float ga_w;  // dL/d(alpha*dt)
          if (clamped) {
            ga_w = 0.f;
          } else {
            ga_w = rgba.x * gcr + rgba.y * gcg + rgba.z * gcb + gA - corr;
          }
          const float4 g4 = make_float4(a * gcr, a * gcg, a * gcb, ga_w * dt);
          float4* gt = p.grad_tmpl + ((int64_t)n * p.K + k) * D3;
          float gu[3] = {0.f, 0.f, 0.f};
#pragma unroll
          for (int c = 0; c < 8; ++c) {
            const float wc = corner_weight(tt, c);
            atomic_add4(gt + corner_index(tt, c), f4scale(g4, wc));
            float dw[3];
            corner_dweight(tt, c, dw);
            const float vg = tv[c].x * g4.x + tv[c].y * g4.y + tv[c].z * g4.z + tv[c].w * g4.w;
            gu[0] += dw[0] * vg;
            gu[1] += dw[1] * vg;
            gu[2] += dw[2] * vg;
          }
          float gy0 = gu[0] * half_span, gy1 = gu[1] * half_span, gy2 = gu[2] * half_span;
          if (WARP) {
            // through the clamp, then the warp's trilinear sample
            if (!(fabsf(wv[0].w) <= 1.f)) gy0 = 0.f;
            if (!(fabsf(wv[1].w) <= 1.f)) gy1 = 0.f;
            if (!(fabsf(wv[2].w) <= 1.f)) gy2 = 0.f;
            float4* gw = p.grad_warp + ((int64_t)n * p.K + k) * D3;
            float gv[3] = {0.f, 0.f, 0.f};
#pragma unroll
            for (int c = 0; c < 8; ++c) {
              const float wc = corner_weight(tw, c);
              atomic_add4(gw + corner_index(tw, c), make_float4(gy0 * wc, gy1 * wc, gy2 * wc, 0.f));
              float dw[3];
              corner_dweight(tw, c, dw);
              // wv[c].w of corners 0..2 was overwritten above; only xyz are used here
              const float vg = wv[c].x * gy0 + wv[c].y * gy1 + wv[c].z * gy2;
              gv[0] += dw[0] * vg;
              gv[1] += dw[1] * vg;
              gv[2] += dw[2] * vg;
            }
            gy0 = gv[0] * half_span;
            gy1 = gv[1] * half_span;
            gy2 = gv[2] * half_span;
          }
          // y_j = l_j * s_j, l_j = R_j . (x - pos)
          float* gp = p.grad_prim + ((int64_t)n * p.K + k) * 16;
          const float gl0 = gy0 * s0, gl1 = gy1 * s1, gl2 = gy2 * s2;
          atomicAdd(gp + 0, -(gl0 * r00 + gl1 * r10 + gl2 * r20));
          atomicAdd(gp + 1, -(gl0 * r01 + gl1 * r11 + gl2 * r21));
          atomicAdd(gp + 2, -(gl0 * r02 + gl1 * r12 + gl2 * r22));
          atomicAdd(gp + 3, gy0 * l0);
          atomicAdd(gp + 4, gy1 * l1);
          atomicAdd(gp + 5, gy2 * l2);
          atomicAdd(gp + 6, gl0 * ddx);
          atomicAdd(gp + 7, gl0 * ddy);
          atomicAdd(gp + 8, gl0 * ddz);
          atomicAdd(gp + 9, gl1 * ddx);
          atomicAdd(gp + 10, gl1 * ddy);
          atomicAdd(gp + 11, gl1 * ddz);
          atomicAdd(gp + 12, gl2 * ddx);
          atomicAdd(gp + 13, gl2 * ddy);
          atomicAdd(gp + 14, gl2 * ddz);
        }

        cr = cr + rgba.x * a;
        cg = cg + rgba.y * a;
        cb = cb + rgba.z * a;
        A = A + a;
        if (!BACKWARD && clamped) clamp_rec = make_float4(rgba.x, rgba.y, rgba.z, 1.f);
        if (A >= p.termination) {
          done = true;
          break;
        }
      }
      ++i;
    }
  }
  if (!BACKWARD) {
    reinterpret_cast<float4*>(p.rgba)[ray] = make_float4(cr, cg, cb, A);
    reinterpret_cast<float4*>(p.aux)[ray] = clamp_rec;
  }
}

template <bool BACKWARD>
cudaError_t launch(const RaymarchParams& p, cudaStream_t stream) {
  dim3 block(TILE_X, TILE_Y);
  dim3 grid((p.W + TILE_X - 1) / TILE_X, (p.H + TILE_Y - 1) / TILE_Y, p.N);
  if (p.warp != nullptr) {
    march_kernel<BACKWARD, true><<<grid, block, 0, stream>>>(p);
  } else {
    march_kernel<BACKWARD, false><<<grid, block, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t raymarch_forward_cuda(const RaymarchParams& p, cudaStream_t stream) { return launch<false>(p, stream); }

cudaError_t raymarch_backward_cuda(const RaymarchParams& p, cudaStream_t stream) { return launch<true>(p, stream); }
