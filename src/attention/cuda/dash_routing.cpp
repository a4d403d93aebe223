#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/dash_routing.h"

#include <c10/cuda/CUDAGuard.h>

#include "attention/cuda/launch.h"
#include "attention/cuda/rounding_parts.h"
#include "dash_route.h"
#include "dash_scores.h"

namespace st::cuda {
namespace kn = st::kernels;

namespace {

using torch::Tensor;

// [G, n, n_seen] fp32 with rows padded to 16 bytes: aligned rows for the scores kernel's
// paired stores.
Tensor padded_rows(int64_t G, int64_t n, int64_t n_seen, const torch::TensorOptions& options) {
  return torch::empty({G, n, (n_seen + 3) / 4 * 4}, options.dtype(torch::kFloat32)).narrow(2, 0, n_seen);
}

// [G, n, ceil(n_seen / 64)] fp32: the scores' tile maxima.
Tensor tile_maxima(int64_t G, int64_t n, int64_t n_seen, const torch::TensorOptions& options) {
  return torch::empty({G, n, (n_seen + kn::kDashTile - 1) / kn::kDashTile}, options.dtype(torch::kFloat32));
}

kn::DashRoutingArgs args(const DashConfig& cfg, int64_t G, int64_t n, int64_t n_seen, double scale, int64_t t0) {
  kn::DashRoutingArgs a{};
  a.G = G;
  a.n = n;
  a.n_seen = n_seen;
  a.t0 = t0;
  a.chunk = cfg.chunk; a.sink_chunks = cfg.sink_chunks; a.local_chunks = cfg.local_chunks;
  a.route_positions = cfg.route_positions;
  a.scale = static_cast<float>(scale);
  a.sigma = static_cast<float>(cfg.sigma);
  a.normalized = cfg.prior == "normalized";
  return a;
}

// Whether parts can be dash_score_parts of >= rows chunk summaries of width d: contiguous bf16
// [3, >= rows, d], as the scores kernel and the routing backward both read it.
bool is_score_parts(const Tensor& parts, int64_t rows, int64_t d) {
  return parts.dim() == 3 && parts.size(0) == kn::kDashScoreParts && parts.size(1) >= rows && parts.size(2) == d &&
         parts.scalar_type() == torch::kBFloat16 && parts.is_contiguous();
}

}  // namespace

kn::DashQType dash_q_type(const Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case torch::kBFloat16:
      return kn::DashQType::kBf16;
    case torch::kHalf:
      return kn::DashQType::kF16;
    case torch::kFloat32:
      return kn::DashQType::kF32;
    default:
      TORCH_CHECK(false, what, " must be bf16, fp16 or fp32, got ", t.scalar_type());
  }
}

bool dash_routing_runs(const DashConfig& cfg, const Tensor& q, int64_t group) {
  return cfg.alpha == 1.5 && q.is_cuda() && q.scalar_type() != torch::kFloat64 &&
         group * cfg.route_positions <= kn::kDashMaxRows && q.size(2) / cfg.chunk <= kn::kDashMaxSeen;
}

bool dash_scores_run(const Tensor& q_rows) {
  return q_rows.is_cuda() && q_rows.scalar_type() == torch::kBFloat16 &&
         (q_rows.size(-1) == 64 || q_rows.size(-1) == 128) && kn::dash_scores_runs_here();
}

Tensor dash_score_parts(const Tensor& kbar) {
  TORCH_CHECK(kbar.dim() >= 2 && kbar.scalar_type() == torch::kFloat32, "dash scores: kbar must be fp32 [..., n, d]");
  return rounding_parts(kbar, torch::kBFloat16, kn::kDashScoreParts).movedim(0, -3).contiguous();
}

RoutingScores dash_scores(const Tensor& q_rows, const Tensor& kbar_parts, const DashConfig& cfg, int64_t n_seen,
                          int64_t t0) {
  TORCH_CHECK(
      q_rows.dim() == 4 && q_rows.size(0) == 1 && q_rows.stride(3) == 1 && q_rows.scalar_type() == torch::kBFloat16,
      "dash scores: q rows must be bf16 [1, G, n, d] with unit stride over d");
  TORCH_CHECK(is_score_parts(kbar_parts, n_seen, q_rows.size(3)),
              "dash scores: kbar parts must be contiguous bf16 [3, rows >= n_seen, d] (dash_score_parts)");
  const c10::cuda::CUDAGuard guard(q_rows.device());
  const int64_t G = q_rows.size(1), n = q_rows.size(2);
  RoutingScores s{padded_rows(G, n, n_seen, q_rows.options()), tile_maxima(G, n, n_seen, q_rows.options())};
  kn::DashScoreArgs a{};
  a.q = q_rows.data_ptr();
  a.head_stride = q_rows.stride(1);
  a.row_stride = q_rows.stride(2);
  a.kbar_parts = kbar_parts.data_ptr();
  a.parts_rows = kbar_parts.size(1);
  a.scores = s.scores.data_ptr<float>();
  a.tile_max = s.tile_max.data_ptr<float>();
  a.G = G;
  a.n = n;
  a.n_seen = n_seen;
  a.scores_ld = s.scores.stride(1);
  a.tile_max_ld = s.tile_max.stride(1);
  a.t0 = t0;
  a.chunk = cfg.chunk;
  a.sink_chunks = cfg.sink_chunks;
  a.local_chunks = cfg.local_chunks;
  a.d = q_rows.size(3);
  check_launch(kn::dash_scores(a, current_stream()), "dash scores");
  return s;
}

RoutingPrior dash_routing_prior(const RoutingScores& s, const DashConfig& cfg, double scale, int64_t t0,
                                const Tensor& thresholds, const Tensor& counts) {
  const Tensor& scores = s.scores;
  const c10::cuda::CUDAGuard guard(scores.device());
  const int64_t G = scores.size(0), n = scores.size(1), routings = (n + cfg.route_positions - 1) / cfg.route_positions;
  TORCH_CHECK(scores.is_cuda() && scores.scalar_type() == torch::kFloat32 && scores.dim() == 3 &&
                  scores.stride(2) == 1 && scores.stride(1) >= scores.size(2) &&
                  scores.stride(0) == scores.size(1) * scores.stride(1),
              "dash routing: scores must be fp32 CUDA [G, n, n_seen], rows apart by a stride >= n_seen");
  TORCH_CHECK(thresholds.is_contiguous() && thresholds.numel() == 2 * G * n &&
                  thresholds.scalar_type() == torch::kFloat32 && counts.is_contiguous() && counts.numel() == n &&
                  counts.scalar_type() == torch::kInt64,
              "dash routing: thresholds must be contiguous fp32 [G, n, 2] and counts int64 [n]");
  kn::DashRoutingArgs a = args(cfg, G, n, scores.size(2), scale, t0);
  a.scores = scores.data_ptr<float>();
  a.scores_ld = scores.stride(1);
  const Tensor tile_max = s.tile_max.defined() ? s.tile_max : tile_maxima(G, n, a.n_seen, scores.options());
  TORCH_CHECK(tile_max.device() == scores.device() && tile_max.scalar_type() == torch::kFloat32 &&
                  tile_max.is_contiguous() &&
                  tile_max.sizes() == torch::IntArrayRef({G, n, (a.n_seen + kn::kDashTile - 1) / kn::kDashTile}),
              "dash routing: tile maxima must be contiguous fp32 [G, n, ceil(n_seen / 64)] on the scores' device");
  a.tile_max = tile_max.data_ptr<float>();
  a.tile_max_ld = tile_max.stride(1);
  if (!s.tile_max.defined())
    check_launch(kn::dash_routing_tile_max(a, tile_max.data_ptr<float>(), current_stream()), "dash tile maxima");
  const auto f32 = scores.options();
  RoutingPrior r{torch::empty({routings, a.n_seen}, f32), torch::empty({routings}, f32), G, n, t0, scale};
  check_launch(kn::dash_routing_prior(a, r.pbar.data_ptr<float>(), r.shift.data_ptr<float>(),
                                      thresholds.data_ptr<float>(), counts.data_ptr<int64_t>(), current_stream()),
               "dash routing");
  return r;
}

void dash_routing_lists(const RoutingPrior& prior, const DashConfig& cfg, const Tensor& row_ptr, const Tensor& blocks,
                        const Tensor& entries, const Tensor& entry_pbar) {
  TORCH_CHECK(
      row_ptr.is_contiguous() && row_ptr.numel() == prior.n + 1 && row_ptr.scalar_type() == torch::kInt64 &&
          blocks.is_contiguous() && blocks.scalar_type() == torch::kInt32 && entries.is_contiguous() &&
          entries.scalar_type() == torch::kFloat32 && entry_pbar.is_contiguous() &&
          entry_pbar.scalar_type() == torch::kFloat32,
      "dash routing lists: row_ptr must be int64 [n + 1]; blocks int32, entries and entry_pbar fp32, contiguous");
  const c10::cuda::CUDAGuard guard(row_ptr.device());
  const kn::DashRoutingArgs a = args(cfg, prior.G, prior.n, prior.pbar.size(1), prior.scale, prior.t0);
  check_launch(kn::dash_routing_lists(a, prior.pbar.data_ptr<float>(), prior.shift.data_ptr<float>(),
                                      row_ptr.data_ptr<int64_t>(), blocks.data_ptr<int32_t>(),
                                      entries.data_ptr<float>(), entry_pbar.data_ptr<float>(), current_stream()),
               "dash routing lists");
}

void dash_routing_backward(const Tensor& q_rows, const Tensor& kbar, const Tensor& kbar_parts, const Tensor& thresholds,
                           const Tensor& row_ptr, const Tensor& blocks, const Tensor& entry_pbar,
                           const Tensor& d_entries, const DashConfig& cfg, double scale, int64_t t0,
                           const Tensor& dq_rows, const Tensor& dkbar) {
  const int64_t G = q_rows.size(1), n = q_rows.size(2), d = q_rows.size(3);
  TORCH_CHECK(q_rows.dim() == 4 && q_rows.size(0) == 1 && q_rows.stride(3) == 1 && dq_rows.sizes() == q_rows.sizes() &&
                  dq_rows.stride(3) == 1 && dq_rows.scalar_type() == q_rows.scalar_type() && q_rows.is_cuda(),
              "dash routing backward: q rows and their gradient must be CUDA [1, G, n, d] of one type, unit stride "
              "over d");
  TORCH_CHECK(kbar.dim() == 2 && kbar.size(1) == d && kbar.is_contiguous() && kbar.scalar_type() == torch::kFloat32 &&
                  dkbar.sizes() == kbar.sizes() && dkbar.is_contiguous() && dkbar.scalar_type() == torch::kFloat32,
              "dash routing backward: kbar and its gradient must be contiguous fp32 [n_seen, d]");
  TORCH_CHECK(thresholds.is_contiguous() && thresholds.numel() == 2 * G * n,
              "dash routing backward: thresholds must be the forward's [G, n, 2]");
  TORCH_CHECK(row_ptr.scalar_type() == torch::kInt64 && row_ptr.numel() == n + 1 &&
                  blocks.scalar_type() == torch::kInt32 && entry_pbar.scalar_type() == torch::kFloat32 &&
                  blocks.numel() == d_entries.numel() && entry_pbar.numel() == d_entries.numel(),
              "dash routing backward: row_ptr [n + 1] int64; blocks int32, entry_pbar fp32, as many as d_entries");
  TORCH_CHECK(q_rows.stride(1) == dq_rows.stride(1) && q_rows.stride(2) == dq_rows.stride(2),
              "dash routing backward: q rows and their gradient must have the same strides");
  const int64_t q_bytes = q_rows.element_size();
  TORCH_CHECK(reinterpret_cast<uintptr_t>(q_rows.data_ptr()) % 16 == 0 && q_rows.stride(1) * q_bytes % 16 == 0 &&
                  q_rows.stride(2) * q_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(kbar.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(dkbar.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(dq_rows.data_ptr()) % 16 == 0,
              "dash routing backward: q rows (data, head and row strides), their gradient, kbar and d kbar must be "
              "16-byte aligned");
  const bool bf16 = q_rows.scalar_type() == torch::kBFloat16;
  TORCH_CHECK(!bf16 || (is_score_parts(kbar_parts, kbar.size(0), d) && kbar_parts.device() == q_rows.device() &&
                        reinterpret_cast<uintptr_t>(kbar_parts.data_ptr()) % 16 == 0),
              "dash routing backward: bf16 q needs kbar's parts, contiguous bf16 [3, rows >= n_seen, d] on q's device "
              "(dash_score_parts)");
  const c10::cuda::CUDAGuard guard(q_rows.device());
  const Tensor starts = row_ptr.contiguous(), ids = blocks.contiguous(), pbar = entry_pbar.contiguous(),
               g = d_entries.to(torch::kFloat32).contiguous();
  const kn::DashRoutingArgs a = args(cfg, G, n, kbar.size(0), scale, t0);
  kn::DashRoutingGrad gr{};
  gr.q = q_rows.data_ptr();
  gr.dq = dq_rows.data_ptr();
  gr.head_stride = q_rows.stride(1);
  gr.row_stride = q_rows.stride(2);
  gr.d = d;
  gr.dtype = dash_q_type(q_rows, "dash routing: q");
  gr.kbar = kbar.data_ptr<float>();
  gr.dkbar = dkbar.data_ptr<float>();
  if (bf16) {
    gr.kbar_parts = kbar_parts.data_ptr();
    gr.parts_rows = kbar_parts.size(1);
  }
  // The routings' routed entries with their d p, and each entmax row's s = sqrt p on them.
  auto scratch = torch::empty({kn::dash_routing_backward_scratch(a, ids.numel())}, g.options());
  check_launch(kn::dash_routing_backward(a, gr, thresholds.data_ptr<float>(), starts.data_ptr<int64_t>(),
                                         ids.data_ptr<int32_t>(), pbar.data_ptr<float>(), g.data_ptr<float>(),
                                         ids.numel(), scratch.data_ptr<float>(), current_stream()),
               "dash routing backward");
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
