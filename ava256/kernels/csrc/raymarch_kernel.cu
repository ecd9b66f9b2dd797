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
// The sampled opacity is multiplied by the border fade exp(-fadescale * ((|y0|^e + |y1|^e) + |y2|^e)) of the
// pre-warp local y (e = fadeexp) before the dt multiply and the min(1 - A, .) clamp, as in MVP.
//
// Backward recomputes the forward march of each ray, and for every sample scatters gradients into the
// template/warp and the primitive transforms (atomics; the transforms' summed across the warp first), using the per-ray record of
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

// |v|^e of a local coordinate for the border fade: three squarings for the default e = 8, else powf.
__device__ __forceinline__ float fade_pow(float v, float e) {
  const float a = fabsf(v);
  if (e == 8.f) {
    const float a2 = a * a, a4 = a2 * a2;
    return a4 * a4;
  }
  return powf(a, e);
}

// d(|v|^e)/dv = e * |v|^(e-1) * sign(v) (0 at v = 0, as autograd's abs), for e >= 1.
__device__ __forceinline__ float fade_dpow(float v, float e) {
  if (e == 8.f) {
    const float v2 = v * v, v4 = v2 * v2;
    return 8.f * (v4 * v2 * v);
  }
  if (v == 0.f) return 0.f;
  return e * copysignf(powf(fabsf(v), e - 1.f), v);
}

// Add a sample's 15 transform gradients to its primitive. With `aggregate`, lanes of the warp that are adding
// to the same primitive at the same time first sum their values with shuffles (a tree over the group's ranks),
// and one lane per group issues the atomics: fewer same-address atomics when neighbouring rays hit a primitive
// together.
__device__ __forceinline__ void prim_grad_add(float* gp, float (&v)[15], int key, bool aggregate) {
  if (aggregate) {
    const unsigned active = __activemask();
    const unsigned peers = __match_any_sync(active, key);
    const int cnt = __popc(peers);
    if (cnt > 1) {
      const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
      const int rank = __popc(peers & ((1u << lane) - 1u));
      for (int off = 1; off < cnt; off <<= 1) {
        const bool has = rank + off < cnt;
        int src = lane;
        if (has) {
          unsigned m = peers;
          for (int i = 0; i < rank + off; ++i) m &= m - 1u;
          src = __ffs(m) - 1;
        }
#pragma unroll
        for (int j = 0; j < 15; ++j) {
          const float o = __shfl_sync(peers, v[j], src);
          if (has) v[j] += o;
        }
      }
      if (rank != 0) return;
    }
  }
#pragma unroll
  for (int j = 0; j < 15; ++j) atomicAdd(gp + j, v[j]);
}

// Channel-first sampling: the grid of one primitive is `nch` planes of D^3 voxels (channels r, g, b, a or
// the warp's x, y, z); missing channels read as 0.
template <int NCH>
__device__ __forceinline__ float4 sample_planes(const float* __restrict__ grid, int D3, const Trilerp& t,
                                                float4 v[8]) {
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const int idx = corner_index(t, c);
    v[c].x = __ldg(grid + idx);
    v[c].y = __ldg(grid + D3 + idx);
    v[c].z = __ldg(grid + 2 * D3 + idx);
    v[c].w = NCH > 3 ? __ldg(grid + 3 * D3 + idx) : 0.f;
  }
  float4 out = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int c = 0; c < 8; ++c) out = f4add(out, f4scale(v[c], corner_weight(t, c)));
  return out;
}

// OCC: ask the compiler for more resident blocks (fewer registers per thread; more rays in flight to hide the
// gather latency, at the risk of spills).
template <bool BACKWARD, bool WARP, bool OCC>
__global__ void __launch_bounds__(TILE_X* TILE_Y, OCC ? (BACKWARD ? (WARP ? 3 : 4) : 8) : 1) march_kernel(const RaymarchParams p) {
  const int px = blockIdx.x * blockDim.x + threadIdx.x;
  const int py = blockIdx.y * blockDim.y + threadIdx.y;
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
  const bool fading = p.fadescale != 0.f;
  const float fadescale = p.fadescale, fadeexp = p.fadeexp;

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
  bool alive = tmax > tmin && tenter <= texit && dt > 0.f;
  const float tlimit = texit + 1e-4f * (1.0f + fabsf(texit)) + dt;
  int i = 0;
  {
    const float s = floorf((tenter - tmin) / dt) - 1.0f;
    if (alive && s > 0.f) i = (int)fminf(s, 2.0e9f);
  }
  const int Gx = p.Gx, Gy = p.Gy, Gz = p.Gz;
  const float4* __restrict__ prims = p.prim + (int64_t)n * p.K * 4;
  const float* __restrict__ tmpl = p.tmpl + (int64_t)n * p.K * 4 * D3;
  const float* __restrict__ warp = WARP ? p.warp + (int64_t)n * p.K * 3 * D3 : nullptr;

  // Iterator state: sample i at point x; entries e..eend of its cell still to test (in_cell).
  float xx = 0.f, xy = 0.f, xz = 0.f;
  int e = 0, eend = 0;
  bool in_cell = false;

  while (true) {
    // ---- Find this ray's next (sample, primitive) pair with the point inside the primitive. This loop is
    // light and divergent; the heavy per-sample work below then runs with the warp's lanes together.
    bool found = false;
    int k = 0;
    float y0 = 0.f, y1 = 0.f, y2 = 0.f, l0 = 0.f, l1 = 0.f, l2 = 0.f, ddx = 0.f, ddy = 0.f, ddz = 0.f;
    float4 q0, q1, q2, q3;
    while (alive) {
      if (e < eend) {
        k = __ldg(p.cell_prims + e);
        ++e;
        q0 = __ldg(prims + (int64_t)k * 4 + 0);
        q1 = __ldg(prims + (int64_t)k * 4 + 1);
        q2 = __ldg(prims + (int64_t)k * 4 + 2);
        q3 = __ldg(prims + (int64_t)k * 4 + 3);
        // layout: pos(3) scale(3) rot row-major(9) pad; the reference's operation order, rounded per op
        ddx = __fsub_rn(xx, q0.x);
        ddy = __fsub_rn(xy, q0.y);
        ddz = __fsub_rn(xz, q0.z);
        l0 = __fadd_rn(__fadd_rn(__fmul_rn(q1.z, ddx), __fmul_rn(q1.w, ddy)), __fmul_rn(q2.x, ddz));
        l1 = __fadd_rn(__fadd_rn(__fmul_rn(q2.y, ddx), __fmul_rn(q2.z, ddy)), __fmul_rn(q2.w, ddz));
        l2 = __fadd_rn(__fadd_rn(__fmul_rn(q3.x, ddx), __fmul_rn(q3.y, ddy)), __fmul_rn(q3.z, ddz));
        y0 = __fmul_rn(l0, q0.w);
        y1 = __fmul_rn(l1, q1.x);
        y2 = __fmul_rn(l2, q1.y);
        if (fabsf(y0) <= 1.f && fabsf(y1) <= 1.f && fabsf(y2) <= 1.f) {
          found = true;
          break;
        }
        continue;
      }
      if (in_cell) {  // every primitive of this sample's cell was tested
        in_cell = false;
        ++i;
      }
      const float t = __fadd_rn(tmin, __fmul_rn((float)i, dt));
      if (!(t < tmax) || t > tlimit) {
        alive = false;
        break;
      }
      xx = __fadd_rn(ox, __fmul_rn(t, dx));
      xy = __fadd_rn(oy, __fmul_rn(t, dy));
      xz = __fadd_rn(oz, __fmul_rn(t, dz));
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
      e = start;
      eend = end;
      in_cell = true;
    }
    if (!found) break;

    // ---- One sample of primitive k at local coordinates y (optionally through the warp).
    float fade = 1.f;  // border fade of the opacity, of the pre-warp y
    if (fading) fade = expf(-fadescale * ((fade_pow(y0, fadeexp) + fade_pow(y1, fadeexp)) + fade_pow(y2, fadeexp)));
    float w0 = y0, w1 = y1, w2 = y2;
    Trilerp tw;
    float4 wv[8];
    float wr0 = 0.f, wr1 = 0.f, wr2 = 0.f;
    if (WARP) {
      tw = make_trilerp(y0, y1, y2, D);
      const float4 wr = sample_planes<3>(warp + (int64_t)k * 3 * D3, D3, tw, wv);
      wr0 = wr.x;
      wr1 = wr.y;
      wr2 = wr.z;
      w0 = fminf(fmaxf(wr0, -1.f), 1.f);
      w1 = fminf(fmaxf(wr1, -1.f), 1.f);
      w2 = fminf(fmaxf(wr2, -1.f), 1.f);
    }
    const Trilerp tt = make_trilerp(w0, w1, w2, D);
    float4 tv[8];
    const float4 rgba = sample_planes<4>(tmpl + (int64_t)k * 4 * D3, D3, tt, tv);

    const float alpha = rgba.w * fade;  // exact (= rgba.w) when not fading
    const float wgt = alpha * dt;
    const float rem = 1.0f - A;
    const bool clamped = wgt > rem;
    const float a = clamped ? rem : wgt;

    if (BACKWARD) {
      // dL/d(alpha*dt): direct term, minus the clamped last sample's dependence on this one (corr).
      const float ga_w = clamped ? 0.f : rgba.x * gcr + rgba.y * gcg + rgba.z * gcb + gA - corr;
      const float g_alpha = ga_w * dt;  // dL/d(faded alpha); the sampled alpha's gradient is this * fade
      const float4 g4 = make_float4(a * gcr, a * gcg, a * gcb, g_alpha * fade);
      float* gt = p.grad_tmpl + ((int64_t)n * p.K + k) * 4 * D3;
      float gu0 = 0.f, gu1 = 0.f, gu2 = 0.f;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float wc = corner_weight(tt, c);
        if (!(p.flags & FLAG_SKIP_TMPL_GRAD)) {
          const int idx = corner_index(tt, c);
          atomicAdd(gt + idx, g4.x * wc);
          atomicAdd(gt + D3 + idx, g4.y * wc);
          atomicAdd(gt + 2 * D3 + idx, g4.z * wc);
          atomicAdd(gt + 3 * D3 + idx, g4.w * wc);
        }
        float dw[3];
        corner_dweight(tt, c, dw);
        const float vg = tv[c].x * g4.x + tv[c].y * g4.y + tv[c].z * g4.z + tv[c].w * g4.w;
        gu0 += dw[0] * vg;
        gu1 += dw[1] * vg;
        gu2 += dw[2] * vg;
      }
      float gy0 = gu0 * half_span, gy1 = gu1 * half_span, gy2 = gu2 * half_span;
      if (WARP) {
        // through the clamp, then the warp's trilinear sample
        if (!(fabsf(wr0) <= 1.f)) gy0 = 0.f;
        if (!(fabsf(wr1) <= 1.f)) gy1 = 0.f;
        if (!(fabsf(wr2) <= 1.f)) gy2 = 0.f;
        float* gw = p.grad_warp + ((int64_t)n * p.K + k) * 3 * D3;
        float gv0 = 0.f, gv1 = 0.f, gv2 = 0.f;
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const float wc = corner_weight(tw, c);
          if (!(p.flags & FLAG_SKIP_TMPL_GRAD)) {
            const int idx = corner_index(tw, c);
            atomicAdd(gw + idx, gy0 * wc);
            atomicAdd(gw + D3 + idx, gy1 * wc);
            atomicAdd(gw + 2 * D3 + idx, gy2 * wc);
          }
          float dw[3];
          corner_dweight(tw, c, dw);
          const float vg = wv[c].x * gy0 + wv[c].y * gy1 + wv[c].z * gy2;
          gv0 += dw[0] * vg;
          gv1 += dw[1] * vg;
          gv2 += dw[2] * vg;
        }
        gy0 = gv0 * half_span;
        gy1 = gv1 * half_span;
        gy2 = gv2 * half_span;
      }
      if (fading && g_alpha != 0.f) {
        // through the fade: d(alpha * fade)/dy_j = alpha * fade * (-fadescale) * d(|y_j|^e)/dy_j, with y
        // recomputed from l and s (the same rounded values as y0..y2)
        const float gf = -fadescale * (g_alpha * alpha);
        gy0 += gf * fade_dpow(__fmul_rn(l0, q0.w), fadeexp);
        gy1 += gf * fade_dpow(__fmul_rn(l1, q1.x), fadeexp);
        gy2 += gf * fade_dpow(__fmul_rn(l2, q1.y), fadeexp);
      }
      // y_j = l_j * s_j, l_j = R_j . (x - pos)
      const float r00 = q1.z, r01 = q1.w, r02 = q2.x;
      const float r10 = q2.y, r11 = q2.z, r12 = q2.w;
      const float r20 = q3.x, r21 = q3.y, r22 = q3.z;
      const float gl0 = gy0 * q0.w, gl1 = gy1 * q1.x, gl2 = gy2 * q1.y;
      float gvals[15] = {-(gl0 * r00 + gl1 * r10 + gl2 * r20), -(gl0 * r01 + gl1 * r11 + gl2 * r21),
                         -(gl0 * r02 + gl1 * r12 + gl2 * r22), gy0 * l0, gy1 * l1, gy2 * l2,
                         gl0 * ddx, gl0 * ddy, gl0 * ddz, gl1 * ddx, gl1 * ddy, gl1 * ddz,
                         gl2 * ddx, gl2 * ddy, gl2 * ddz};
      if (!(p.flags & FLAG_SKIP_PRIM_GRAD)) {
        prim_grad_add(p.grad_prim + ((int64_t)n * p.K + k) * 16, gvals, k, (p.flags & FLAG_AGGREGATE) != 0);
      }
    }

    cr = cr + rgba.x * a;
    cg = cg + rgba.y * a;
    cb = cb + rgba.z * a;
    A = A + a;
    if (!BACKWARD && clamped) clamp_rec = make_float4(rgba.x, rgba.y, rgba.z, 1.f);
    if (A >= p.termination) alive = false;
  }
  if (!BACKWARD) {
    reinterpret_cast<float4*>(p.rgba)[ray] = make_float4(cr, cg, cb, A);
    reinterpret_cast<float4*>(p.aux)[ray] = clamp_rec;
  }
}

template <bool BACKWARD>
cudaError_t launch(const RaymarchParams& p, cudaStream_t stream) {
  const bool tall = (p.flags & FLAG_TILE_8X16) != 0;
  dim3 block(tall ? TILE_Y : TILE_X, tall ? TILE_X : TILE_Y);
  dim3 grid((p.W + block.x - 1) / block.x, (p.H + block.y - 1) / block.y, p.N);
  const bool occ = (p.flags & FLAG_OCCUPANCY) != 0;
  if (p.warp != nullptr) {
    if (occ) march_kernel<BACKWARD, true, true><<<grid, block, 0, stream>>>(p);
    else march_kernel<BACKWARD, true, false><<<grid, block, 0, stream>>>(p);
  } else {
    if (occ) march_kernel<BACKWARD, false, true><<<grid, block, 0, stream>>>(p);
    else march_kernel<BACKWARD, false, false><<<grid, block, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// One block per image: padded axis-aligned bounds of each primitive's box, (lo, hi) = (+inf, -inf) if not
// finite (same arithmetic as function._prim_bounds), and the image's statistics for sizing the grid:
// stats[n] = (min lo (3), max hi (3), sum of mean box edges, number of finite primitives).
__global__ void prim_bounds_kernel(const float* __restrict__ pos, const float* __restrict__ rot,
                                   const float* __restrict__ scale, int K, float* __restrict__ bounds,
                                   float* __restrict__ stats) {
  const int n = blockIdx.x;
  float mn[3] = {INFINITY, INFINITY, INFINITY}, mx[3] = {-INFINITY, -INFINITY, -INFINITY};
  float esum = 0.f, cnt = 0.f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const int64_t f = (int64_t)n * K + k;
    float is[3], lo[3], hi[3];
    for (int j = 0; j < 3; ++j) is[j] = 1.0f / fmaxf(fabsf(scale[f * 3 + j]), 1e-30f);
    bool ok = true;
    for (int i = 0; i < 3; ++i) {
      float half = 0.f;
      for (int j = 0; j < 3; ++j) half += fabsf(rot[f * 9 + j * 3 + i]) * is[j];
      const float pi = pos[f * 3 + i];
      const float pad = 1e-4f * half + 1e-5f * (fabsf(pi) + half) + 1e-12f;
      lo[i] = pi - half - pad;
      hi[i] = pi + half + pad;
      ok = ok && isfinite(lo[i]) && isfinite(hi[i]);
    }
    for (int i = 0; i < 3; ++i) {
      bounds[f * 6 + i] = ok ? lo[i] : INFINITY;
      bounds[f * 6 + 3 + i] = ok ? hi[i] : -INFINITY;
      if (ok) {
        mn[i] = fminf(mn[i], lo[i]);
        mx[i] = fmaxf(mx[i], hi[i]);
      }
    }
    if (ok) {
      esum += ((hi[0] - lo[0]) + (hi[1] - lo[1]) + (hi[2] - lo[2])) / 3.0f;
      cnt += 1.f;
    }
  }
  // block reduction: warps by shuffles, then the first warp over the warps' results
  __shared__ float red[32][8];
  float v[8] = {mn[0], mn[1], mn[2], mx[0], mx[1], mx[2], esum, cnt};
  for (int off = 16; off > 0; off >>= 1) {
    for (int j = 0; j < 3; ++j) v[j] = fminf(v[j], __shfl_down_sync(0xffffffffu, v[j], off));
    for (int j = 3; j < 6; ++j) v[j] = fmaxf(v[j], __shfl_down_sync(0xffffffffu, v[j], off));
    for (int j = 6; j < 8; ++j) v[j] += __shfl_down_sync(0xffffffffu, v[j], off);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  if (lane == 0)
    for (int j = 0; j < 8; ++j) red[warp][j] = v[j];
  __syncthreads();
  if (warp == 0) {
    for (int j = 0; j < 8; ++j) v[j] = lane < nwarps ? red[lane][j] : (j < 3 ? INFINITY : (j < 6 ? -INFINITY : 0.f));
    for (int off = 16; off > 0; off >>= 1) {
      for (int j = 0; j < 3; ++j) v[j] = fminf(v[j], __shfl_down_sync(0xffffffffu, v[j], off));
      for (int j = 3; j < 6; ++j) v[j] = fmaxf(v[j], __shfl_down_sync(0xffffffffu, v[j], off));
      for (int j = 6; j < 8; ++j) v[j] += __shfl_down_sync(0xffffffffu, v[j], off);
    }
    if (lane == 0)
      for (int j = 0; j < 8; ++j) stats[n * 8 + j] = v[j];
  }
}

// One thread per primitive: inclusive cell ranges of its bounds in its image's grid, and their cell count.
__global__ void cell_ranges_kernel(const float* __restrict__ bounds, const float* __restrict__ gridinfo, int NK,
                                   int K, int Gx, int Gy, int Gz, int* __restrict__ clo, int* __restrict__ chi,
                                   int64_t* __restrict__ cnt) {
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  if (f >= NK) return;
  const int n = f / K;
  const float* gi = gridinfo + (int64_t)n * 12;
  const int G[3] = {Gx, Gy, Gz};
  int64_t c = 1;
  for (int a = 0; a < 3; ++a) {
    const float lo = bounds[f * 6 + a], hi = bounds[f * 6 + 3 + a];
    if (!(lo <= hi)) {  // not finite: no cells
      c = 0;
      clo[f * 3 + a] = 0;
      chi[f * 3 + a] = -1;
      continue;
    }
    const float gmax = (float)(G[a] - 1);
    const float l = fminf(fmaxf(floorf(__fmul_rn(__fsub_rn(lo, gi[a]), gi[6 + a])), 0.f), gmax);
    const float h = fminf(fmaxf(floorf(__fmul_rn(__fsub_rn(hi, gi[a]), gi[6 + a])), 0.f), gmax);
    clo[f * 3 + a] = (int)l;
    chi[f * 3 + a] = (int)h;
    c *= (int64_t)((int)h - (int)l + 1);
  }
  cnt[f] = c;
}

// One thread per primitive: write the (cell, k) pairs of every grid cell its bounding box overlaps.
__global__ void grid_entries_kernel(const int* __restrict__ clo, const int* __restrict__ chi,
                                    const int64_t* __restrict__ offsets, int NK, int K, int Gx, int Gy, int Gz,
                                    int* __restrict__ cells, int* __restrict__ prims) {
  const int f = blockIdx.x * blockDim.x + threadIdx.x;
  if (f >= NK) return;
  const int n = f / K, k = f - n * K;
  const int x0 = clo[f * 3 + 0], y0 = clo[f * 3 + 1], z0 = clo[f * 3 + 2];
  const int x1 = chi[f * 3 + 0], y1 = chi[f * 3 + 1], z1 = chi[f * 3 + 2];
  int64_t o = offsets[f];
  for (int z = z0; z <= z1; ++z)
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) {
        cells[o] = ((n * Gz + z) * Gy + y) * Gx + x;
        prims[o] = k;
        ++o;
      }
}

// One thread per sorted entry: cell_start[c] = first entry of cell c (= next non-empty cell's first entry for
// empty cells), cell_start[ncells] = E.
__global__ void cell_starts_kernel(const int* __restrict__ sorted_cells, int64_t E, int64_t ncells,
                                   int* __restrict__ cell_start) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e > E) return;
  const int64_t prev = (e == 0) ? -1 : (int64_t)sorted_cells[e - 1];
  const int64_t cur = (e == E) ? ncells : (int64_t)sorted_cells[e];
  for (int64_t c = prev + 1; c <= cur; ++c) cell_start[c] = (int)e;
}

}  // namespace

cudaError_t cell_starts_cuda(const int* sorted_cells, int64_t E, int64_t ncells, int* cell_start,
                             cudaStream_t stream) {
  const int64_t threads = E + 1;
  cell_starts_kernel<<<(unsigned)((threads + 255) / 256), 256, 0, stream>>>(sorted_cells, E, ncells, cell_start);
  return cudaGetLastError();
}

cudaError_t prim_bounds_cuda(const float* pos, const float* rot, const float* scale, int N, int K, float* bounds,
                             float* stats, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  prim_bounds_kernel<<<N, 1024, 0, stream>>>(pos, rot, scale, K, bounds, stats);
  return cudaGetLastError();
}

cudaError_t cell_ranges_cuda(const float* bounds, const float* gridinfo, int N, int K, int Gx, int Gy, int Gz,
                             int* clo, int* chi, int64_t* cnt, cudaStream_t stream) {
  const int NK = N * K;
  if (NK == 0) return cudaSuccess;
  cell_ranges_kernel<<<(NK + 255) / 256, 256, 0, stream>>>(bounds, gridinfo, NK, K, Gx, Gy, Gz, clo, chi, cnt);
  return cudaGetLastError();
}

cudaError_t grid_entries_cuda(const int* clo, const int* chi, const int64_t* offsets, int N, int K, int Gx, int Gy,
                              int Gz, int* cells, int* prims, cudaStream_t stream) {
  const int NK = N * K;
  if (NK == 0) return cudaSuccess;
  grid_entries_kernel<<<(NK + 255) / 256, 256, 0, stream>>>(clo, chi, offsets, NK, K, Gx, Gy, Gz, cells, prims);
  return cudaGetLastError();
}

cudaError_t raymarch_forward_cuda(const RaymarchParams& p, cudaStream_t stream) { return launch<false>(p, stream); }

cudaError_t raymarch_backward_cuda(const RaymarchParams& p, cudaStream_t stream) { return launch<true>(p, stream); }
