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
                           std::vector<int64_t> grid_res, double dt, double fadescale, double fadeexp,
                           double termination) {
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
  TORCH_CHECK(tmpl.dim() == 6 && tmpl.size(2) == 4, "template must be (N, K, 4, D, D, D)");
  TORCH_CHECK(grid_res.size() == 3, "grid_res must be (Gx, Gy, Gz)");
  RaymarchParams p{};
  p.N = (int)raypos.size(0);
  p.H = (int)raypos.size(1);
  p.W = (int)raypos.size(2);
  p.K = (int)prim.size(1);
  p.D = (int)tmpl.size(5);
  TORCH_CHECK(p.D >= 2, "the voxel grids need D >= 2");
  TORCH_CHECK(tmpl.size(0) == p.N && tmpl.size(1) == p.K, "template does not match N, K");
  p.Gx = (int)grid_res[0];
  p.Gy = (int)grid_res[1];
  p.Gz = (int)grid_res[2];
  TORCH_CHECK(cell_start.numel() == (int64_t)p.N * p.Gx * p.Gy * p.Gz + 1, "cell_start has the wrong size");
  p.dt = (float)dt;
  p.termination = (float)termination;
  p.fadescale = (float)fadescale;
  p.fadeexp = (float)fadeexp;
  TORCH_CHECK(p.fadescale >= 0.f && p.fadeexp >= 1.f, "need fadescale >= 0 and fadeexp >= 1");
  p.raypos = raypos.data_ptr<float>();
  p.raydir = raydir.data_ptr<float>();
  p.tminmax = tminmax.data_ptr<float>();
  p.prim = reinterpret_cast<const float4*>(prim.data_ptr<float>());
  p.tmpl = tmpl.data_ptr<float>();
  p.warp = nullptr;
  if (warp.has_value() && warp->defined()) {
    check(*warp, "warp", torch::kFloat32);
    TORCH_CHECK(warp->dim() == 6 && warp->size(0) == p.N && warp->size(1) == p.K && warp->size(2) == 3 &&
                    warp->size(3) == p.D && warp->size(4) == p.D && warp->size(5) == p.D,
                "warp must be (N, K, 3, D, D, D)");
    p.warp = warp->data_ptr<float>();
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
                                   double fadescale, double fadeexp, double termination, int64_t stream,
                                   int64_t flags) {
  RaymarchParams p = make_params(raypos, raydir, tminmax, prim, tmpl, warp, gridinfo, cell_start, cell_prims,
                                 grid_res, dt, fadescale, fadeexp, termination);
  p.flags = (int)flags;
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
                                    double fadescale, double fadeexp, double termination,
                                    const torch::Tensor& aux, const torch::Tensor& grad_rgba, int64_t stream,
                                    int64_t flags) {
  RaymarchParams p = make_params(raypos, raydir, tminmax, prim, tmpl, warp, gridinfo, cell_start, cell_prims,
                                 grid_res, dt, fadescale, fadeexp, termination);
  p.flags = (int)flags;
  check(aux, "aux", torch::kFloat32);
  check(grad_rgba, "grad_rgba", torch::kFloat32);
  TORCH_CHECK(grad_rgba.sizes() == aux.sizes(), "grad_rgba must be (N, H, W, 4)");
  torch::Tensor grad_tmpl = torch::zeros_like(tmpl);
  torch::Tensor grad_prim = torch::zeros_like(prim);
  torch::Tensor grad_warp;
  p.aux = const_cast<float*>(aux.data_ptr<float>());
  p.grad_rgba = grad_rgba.data_ptr<float>();
  p.grad_tmpl = grad_tmpl.data_ptr<float>();
  p.grad_prim = grad_prim.data_ptr<float>();
  p.grad_warp = nullptr;
  if (p.warp != nullptr) {
    grad_warp = torch::zeros_like(*warp);
    p.grad_warp = grad_warp.data_ptr<float>();
  }
  cudaError_t err = raymarch_backward_cuda(p, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "raymarch backward launch failed: ", cudaGetErrorString(err));
  return {grad_tmpl, grad_warp, grad_prim};
}

std::vector<torch::Tensor> grid_entries(const torch::Tensor& clo, const torch::Tensor& chi,
                                        const torch::Tensor& offsets, int64_t total, std::vector<int64_t> grid_res,
                                        int64_t stream) {
  check(clo, "clo", torch::kInt32);
  check(chi, "chi", torch::kInt32);
  check(offsets, "offsets", torch::kInt64);
  TORCH_CHECK(clo.dim() == 3 && clo.size(2) == 3 && chi.sizes() == clo.sizes(), "clo/chi must be (N, K, 3)");
  TORCH_CHECK(offsets.numel() == clo.size(0) * clo.size(1), "offsets must have N*K entries");
  TORCH_CHECK(grid_res.size() == 3, "grid_res must be (Gx, Gy, Gz)");
  TORCH_CHECK(clo.size(0) * grid_res[0] * grid_res[1] * grid_res[2] < (int64_t(1) << 31), "grid too large");
  auto opts = clo.options();
  torch::Tensor cells = torch::empty({total}, opts);
  torch::Tensor prims = torch::empty({total}, opts);
  cudaError_t err = grid_entries_cuda(clo.data_ptr<int>(), chi.data_ptr<int>(), offsets.data_ptr<int64_t>(),
                                      (int)clo.size(0), (int)clo.size(1), (int)grid_res[0], (int)grid_res[1],
                                      (int)grid_res[2], cells.data_ptr<int>(), prims.data_ptr<int>(),
                                      reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "grid_entries launch failed: ", cudaGetErrorString(err));
  return {cells, prims};
}

torch::Tensor cell_starts(const torch::Tensor& sorted_cells, int64_t ncells, int64_t stream) {
  check(sorted_cells, "sorted_cells", torch::kInt32);
  torch::Tensor out = torch::empty({ncells + 1}, sorted_cells.options());
  cudaError_t err = cell_starts_cuda(sorted_cells.data_ptr<int>(), sorted_cells.numel(), ncells,
                                     out.data_ptr<int>(), reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "cell_starts launch failed: ", cudaGetErrorString(err));
  return out;
}

std::vector<torch::Tensor> prim_bounds(const torch::Tensor& pos, const torch::Tensor& rot,
                                       const torch::Tensor& scale, int64_t stream) {
  check(pos, "primpos", torch::kFloat32);
  check(rot, "primrot", torch::kFloat32);
  check(scale, "primscale", torch::kFloat32);
  const int64_t N = pos.size(0), K = pos.size(1);
  TORCH_CHECK(rot.numel() == N * K * 9 && scale.numel() == N * K * 3, "primitive shapes disagree");
  torch::Tensor bounds = torch::empty({N, K, 6}, pos.options());
  torch::Tensor stats = torch::empty({N, 8}, pos.options());
  cudaError_t err = prim_bounds_cuda(pos.data_ptr<float>(), rot.data_ptr<float>(), scale.data_ptr<float>(), (int)N,
                                     (int)K, bounds.data_ptr<float>(), stats.data_ptr<float>(),
                                     reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "prim_bounds launch failed: ", cudaGetErrorString(err));
  return {bounds, stats};
}

std::vector<torch::Tensor> cell_ranges(const torch::Tensor& bounds, const torch::Tensor& gridinfo,
                                       std::vector<int64_t> grid_res, int64_t stream) {
  check(bounds, "bounds", torch::kFloat32);
  check(gridinfo, "gridinfo", torch::kFloat32);
  TORCH_CHECK(grid_res.size() == 3, "grid_res must be (Gx, Gy, Gz)");
  const int64_t N = bounds.size(0), K = bounds.size(1);
  auto iopts = bounds.options().dtype(torch::kInt32);
  torch::Tensor clo = torch::empty({N, K, 3}, iopts);
  torch::Tensor chi = torch::empty({N, K, 3}, iopts);
  torch::Tensor cnt = torch::empty({N * K}, bounds.options().dtype(torch::kInt64));
  cudaError_t err = cell_ranges_cuda(bounds.data_ptr<float>(), gridinfo.data_ptr<float>(), (int)N, (int)K,
                                     (int)grid_res[0], (int)grid_res[1], (int)grid_res[2], clo.data_ptr<int>(),
                                     chi.data_ptr<int>(), cnt.data_ptr<int64_t>(),
                                     reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "cell_ranges launch failed: ", cudaGetErrorString(err));
  return {clo, chi, cnt};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "MVP raymarch forward (CUDA)", py::arg("raypos"), py::arg("raydir"),
        py::arg("tminmax"), py::arg("prim"), py::arg("tmpl"), py::arg("warp"), py::arg("gridinfo"),
        py::arg("cell_start"), py::arg("cell_prims"), py::arg("grid_res"), py::arg("dt"), py::arg("fadescale"),
        py::arg("fadeexp"), py::arg("termination"), py::arg("stream"), py::arg("flags") = 0);
  m.def("backward", &backward, "MVP raymarch backward (CUDA)", py::arg("raypos"), py::arg("raydir"),
        py::arg("tminmax"), py::arg("prim"), py::arg("tmpl"), py::arg("warp"), py::arg("gridinfo"),
        py::arg("cell_start"), py::arg("cell_prims"), py::arg("grid_res"), py::arg("dt"), py::arg("fadescale"),
        py::arg("fadeexp"), py::arg("termination"), py::arg("aux"), py::arg("grad_rgba"), py::arg("stream"),
        py::arg("flags") = 0);
  m.def("prim_bounds", &prim_bounds, "padded primitive bounds and per-image stats (CUDA)");
  m.def("cell_ranges", &cell_ranges, "primitive cell ranges and counts (CUDA)");
  m.def("cell_starts", &cell_starts, "cell offsets from sorted cell indices (CUDA)");
  m.def("grid_entries", &grid_entries, "(cell, k) pairs of the acceleration grid (CUDA)");
}
