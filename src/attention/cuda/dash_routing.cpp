#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/dash_routing.h"

#include <c10/cuda/CUDAGuard.h>

#include "attention/cuda/launch.h"
#include "dash_route.h"

namespace st::cuda {
namespace kn = st::kernels;

namespace {

using torch::Tensor;

kn::DashRoutingArgs args(const Tensor& scores, const DashConfig& cfg, double scale, int64_t t0, int64_t n_chunks) {
  TORCH_CHECK(scores.is_cuda() && scores.scalar_type() == torch::kFloat32 && scores.dim() == 3 && scores.is_contiguous(),
              "dash routing: scores must be contiguous fp32 CUDA [G, n, n_seen]");
  kn::DashRoutingArgs a{};
  a.scores = scores.data_ptr<float>();
  a.G = scores.size(0); a.n = scores.size(1); a.n_seen = scores.size(2); a.n_chunks = n_chunks; a.t0 = t0;
  a.chunk = cfg.chunk; a.sink_chunks = cfg.sink_chunks; a.local_chunks = cfg.local_chunks;
  a.route_positions = cfg.route_positions;
  a.scale = static_cast<float>(scale);
  a.sigma = static_cast<float>(cfg.sigma);
  a.normalized = cfg.prior == "normalized";
  return a;
}

}  // namespace

bool dash_routing_runs(const DashConfig& cfg, const Tensor& q, int64_t group) {
  return cfg.alpha == 1.5 && q.is_cuda() && q.scalar_type() != torch::kFloat64 &&
         group * cfg.route_positions <= kn::kDashMaxRows && q.size(2) / cfg.chunk <= kn::kDashMaxSeen;
}

Tensor dash_routing_bias(const Tensor& scores, const DashConfig& cfg, double scale, int64_t t0, int64_t n_chunks) {
  const c10::cuda::CUDAGuard guard(scores.device());
  auto bias = torch::empty({scores.size(1), n_chunks}, scores.options());
  check_launch(kn::dash_routing_bias(args(scores, cfg, scale, t0, n_chunks), bias.data_ptr<float>(), current_stream()),
               "dash routing");
  return bias;
}

Tensor dash_routing_backward(const Tensor& scores, const Tensor& d_bias, const DashConfig& cfg, double scale,
                             int64_t t0) {
  const c10::cuda::CUDAGuard guard(scores.device());
  const Tensor g = d_bias.to(torch::kFloat32).contiguous();
  auto d_scores = torch::empty_like(scores);
  check_launch(kn::dash_routing_backward(args(scores, cfg, scale, t0, g.size(1)), g.data_ptr<float>(),
                                         d_scores.data_ptr<float>(), current_stream()),
               "dash routing backward");
  return d_scores;
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
