// PyTorch binding of the raymarcher's CUDA kernels. Inputs are validated and prepared (contiguous float32,
// channel-last grids, acceleration grid) by ava256/kernels/function.py; this file checks shapes cheaply,
// allocates outputs and launches on the caller's CUDA stream (passed as an integer handle).
#include <torch/extension.h>

#include <vector>

#include "raymarch.h"

namespace {

void check(const torch::Tensor& t, const char* name, c10::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
}

RaymarchParams make_params(const torch::Tensor& raypos, const torch::Tensor& raydir, const torch::Tensor& tminmax,
                           const torch::Tensor& prim, const torch::Tensor& tmpl,
                           const c10::optional<torch::Tensor>& warp, const torch::Tensor& gridinfo,
                           const torch::Tensor& cell_start, const torch::Tensor& cell_prims,
                           std::vector<int64_t> grid_res, double dt, double termination) {
  check(raypos, "raypos", torch::kFloat32);
  check(raydir, "raydir", torch::kFloat32);
  check(tminmax, "tminmax", torch::kFloat32);
  check(prim, "prim", torch::kFloat32);
  check(tmpl, "template", torch::kFloat32);
  check(gridinfo, "gridinfo", torch::kFloat32);
  check(cell_start, "cell_start", torch::kInt32);
  check(cell_prims, "cell_prims", torch::kInt32);
  TORCH_CHECK(raypos.dim() == 4 && raypos.size(3) == 3, "raypos must be (N, H, W, 3)");
  TORCH_CHECK(prim.dim() == 3 && prim.size(2) == 16, "prim must be (N, K, 16)");
  TORCH_CHECK(tmpl.dim() == 6 && tmpl.size(5) == 4, "template must be (N, K, D, D, D, 4)");
  TORCH_CHECK(grid_res.size() == 3, "grid_res must be (Gx, Gy, Gz)");
  RaymarchParams p{};
  p.N = (int)raypos.size(0);
  p.H = (int)raypos.size(1);
  p.W = (int)raypos.size(2);
  p.K = (int)prim.size(1);
  p.D = (int)tmpl.size(2);
  TORCH_CHECK(p.D >= 2, "the voxel grids need D >= 2");
  TORCH_CHECK(tmpl.size(0) == p.N && tmpl.size(1) == p.K, "template does not match N, K");
  p.Gx = (int)grid_res[0];
  p.Gy = (int)grid_res[1];
  p.Gz = (int)grid_res[2];
  TORCH_CHECK(cell_start.numel() == (int64_t)p.N * p.Gx * p.Gy * p.Gz + 1, "cell_start has the wrong size");
  p.dt = (float)dt;
  p.termination = (float)termination;
  p.raypos = raypos.data_ptr<float>();
  p.raydir = raydir.data_ptr<float>();
  p.tminmax = tminmax.data_ptr<float>();
  p.prim = reinterpret_cast<const float4*>(prim.data_ptr<float>());
  p.tmpl = reinterpret_cast<const float4*>(tmpl.data_ptr<float>());
  p.warp = nullptr;
  if (warp.has_value() && warp->defined()) {
    check(*warp, "warp", torch::kFloat32);
    TORCH_CHECK(warp->sizes() == tmpl.sizes(), "warp must be (N, K, D, D, D, 4) like the template");
    p.warp = reinterpret_cast<const float4*>(warp->data_ptr<float>());
  }
  p.gridinfo = gridinfo.data_ptr<float>();
  p.cell_start = cell_start.data_ptr<int>();
  p.cell_prims = cell_prims.data_ptr<int>();
  return p;
}

std::vector<torch::Tensor> forward(const torch::Tensor& raypos, const torch::Tensor& raydir,
                                   const torch::Tensor& tminmax, const torch::Tensor& prim,
                                   const torch::Tensor& tmpl, const c10::optional<torch::Tensor>& warp,
                                   const torch::Tensor& gridinfo, const torch::Tensor& cell_start,
                                   const torch::Tensor& cell_prims, std::vector<int64_t> grid_res, double dt,
                                   double termination, int64_t stream) {
  RaymarchParams p = make_params(raypos, raydir, tminmax, prim, tmpl, warp, gridinfo, cell_start, cell_prims,
                                 grid_res, dt, termination);
  auto opts = raypos.options();
  torch::Tensor rgba = torch::empty({p.N, p.H, p.W, 4}, opts);
  torch::Tensor aux = torch::empty({p.N, p.H, p.W, 4}, opts);
  p.rgba = rgba.data_ptr<float>();
  p.aux = aux.data_ptr<float>();
  cudaError_t err = raymarch_forward_cuda(p, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "raymarch forward launch failed: ", cudaGetErrorString(err));
  return {rgba, aux};
}

std::vector<torch::Tensor> backward(const torch::Tensor& raypos, const torch::Tensor& raydir,
                                    const torch::Tensor& tminmax, const torch::Tensor& prim,
                                    const torch::Tensor& tmpl, const c10::optional<torch::Tensor>& warp,
                                    const torch::Tensor& gridinfo, const torch::Tensor& cell_start,
                                    const torch::Tensor& cell_prims, std::vector<int64_t> grid_res, double dt,
                                    double termination, const torch::Tensor& aux, const torch::Tensor& grad_rgba,
                                    int64_t stream) {
  RaymarchParams p = make_params(raypos, raydir, tminmax, prim, tmpl, warp, gridinfo, cell_start, cell_prims,
                                 grid_res, dt, termination);
  check(aux, "aux", torch::kFloat32);
  check(grad_rgba, "grad_rgba", torch::kFloat32);
  TORCH_CHECK(grad_rgba.sizes() == aux.sizes(), "grad_rgba must be (N, H, W, 4)");
  torch::Tensor grad_tmpl = torch::zeros_like(tmpl);
  torch::Tensor grad_prim = torch::zeros_like(prim);
  torch::Tensor grad_warp;
  p.aux = const_cast<float*>(aux.data_ptr<float>());
  p.grad_rgba = grad_rgba.data_ptr<float>();
  p.grad_tmpl = reinterpret_cast<float4*>(grad_tmpl.data_ptr<float>());
  p.grad_prim = grad_prim.data_ptr<float>();
  p.grad_warp = nullptr;
  if (p.warp != nullptr) {
    grad_warp = torch::zeros_like(tmpl);
    p.grad_warp = reinterpret_cast<float4*>(grad_warp.data_ptr<float>());
  }
  cudaError_t err = raymarch_backward_cuda(p, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "raymarch backward launch failed: ", cudaGetErrorString(err));
  return {grad_tmpl, grad_warp, grad_prim};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "MVP raymarch forward (CUDA)");
  m.def("backward", &backward, "MVP raymarch backward (CUDA)");
}
