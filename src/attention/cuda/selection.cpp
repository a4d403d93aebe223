#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/selection.h"

#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <vector>

#include "attention/cuda/launch.h"
#include "attention/cuda/rounding_parts.h"
#include "block_select.h"

namespace st::cuda {
namespace kn = st::kernels;

namespace {

using torch::Tensor;

int64_t blocks_of(int64_t T, const SelectionKnobs& knobs) { return (T + knobs.block - 1) / knobs.block; }

// The kernels' inputs: q in `dtype`; k_cmp as its high part in `dtype` plus the residual.
struct Operands {
  Tensor q, k_hi, k_lo;
  Operands(const Tensor& q_in, const Tensor& k_cmp, torch::ScalarType dtype) : q(q_in.to(dtype).contiguous()) {
    const Tensor parts = rounding_parts(k_cmp, dtype, 2);
    k_hi = parts[0];
    k_lo = parts[1];
  }
};

// Scores of query rows t0 .. t0 + n of group (b, h) into scores[0 .. n).
void launch_scores(const Operands& in, const SelectionKnobs& knobs, int64_t b, int64_t h, int64_t t0, int64_t n,
                   Tensor& scores, kn::BsaPath path = kn::BsaPath::kAuto) {
  kn::BlockScoreArgs a{};
  a.q = in.q.data_ptr();
  a.fp16 = in.q.scalar_type() == torch::kHalf;
  a.k_hi = in.k_hi.data_ptr();
  a.k_lo = in.k_lo.data_ptr();
  a.scores = scores.data_ptr<float>();
  a.T = in.q.size(2); a.t_first = t0; a.n_rows = n; a.n_cmp = in.k_hi.size(2);
  a.b = b; a.hkv = h; a.Hq = in.q.size(1); a.Hkv = in.k_hi.size(1); a.d = in.q.size(3);
  a.length = static_cast<int>(knobs.length); a.stride = static_cast<int>(knobs.stride);
  a.block = static_cast<int>(knobs.block); a.n_blocks = static_cast<int>(blocks_of(in.q.size(2), knobs));
  a.pool = knobs.pool == Pool::Max ? kn::SelectPool::kMax : kn::SelectPool::kSum;
  a.path = path;
  check_launch(kn::block_scores(a, current_stream()), "block_scores");
}

// Top-k of scores rows [0, n) (queries t0 .. t0 + n) into counts[0 .. n); returns the entries.
Tensor launch_top_k(const Tensor& scores, const SelectionKnobs& knobs, int64_t t0, int64_t n, Tensor counts) {
  const int64_t n_blocks = scores.size(-1), cap = std::max<int64_t>(std::min(knobs.top_k, n_blocks), 1);
  auto ids = torch::empty({n, cap}, scores.options().dtype(torch::kInt32));
  kn::TopKArgs a{};
  a.scores = scores.data_ptr<float>();
  a.ids = ids.data_ptr<int32_t>();
  a.counts = counts.data_ptr<int64_t>();
  a.t_first = t0; a.n_rows = n;
  a.n_blocks = static_cast<int>(n_blocks); a.cap = static_cast<int>(cap); a.block = static_cast<int>(knobs.block);
  a.top_k = static_cast<int>(knobs.top_k); a.init_blocks = static_cast<int>(knobs.init_blocks);
  a.local_blocks = static_cast<int>(knobs.local_blocks);
  check_launch(kn::select_top_k(a, current_stream()), "select_top_k");
  auto slot = torch::arange(cap, counts.options()).view({1, cap});
  return ids.masked_select(slot < counts.view({n, 1}));
}

BlockRows rows_of(const Tensor& counts, const std::vector<Tensor>& entries) {
  return {row_ptr_from_counts(counts), torch::cat(entries), Tensor()};
}

}  // namespace

std::optional<torch::ScalarType> selection_kernel_dtype(const Tensor& q, const Tensor& k_cmp,
                                                        const SelectionKnobs& knobs) {
  if (!q.is_cuda() || !k_cmp.is_cuda() || q.dim() != 4 || k_cmp.dim() != 4) return std::nullopt;
  const int64_t Hq = q.size(1), Hkv = k_cmp.size(1), d = q.size(3);
  const SelectionKnobs& s = knobs;
  if ((d != 64 && d != 128) || Hkv == 0 || Hq % Hkv || Hq / Hkv > 64 || s.stride <= 0 || s.length <= 0 ||
      s.block % s.stride || s.block < s.stride || 64 % (s.block / s.stride) || (s.length - 1) / s.stride > 16 ||
      s.top_k > INT32_MAX)
    return std::nullopt;
  return half_precision_dtype({q});
}

BlockRows select_rows(const Tensor& q_in, const Tensor& k_cmp_in, const SelectionKnobs& knobs,
                      torch::ScalarType dtype, int64_t chunk_rows) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Operands in(q_in, k_cmp_in, dtype);
  const int64_t B = in.q.size(0), T = in.q.size(2), Hkv = in.k_hi.size(1), n_blocks = blocks_of(T, knobs);
  const int64_t chunk =
      std::clamp<int64_t>(chunk_rows > 0 ? chunk_rows : (int64_t(1) << 26) / n_blocks, 1, std::max<int64_t>(T, 1));
  auto scores = torch::empty({std::min(chunk, T), n_blocks}, in.q.options().dtype(torch::kFloat32));
  auto counts = torch::empty({B * Hkv * T}, in.q.options().dtype(torch::kInt64));
  std::vector<Tensor> entries;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t t0 = 0; t0 < T; t0 += chunk) {
        const int64_t n = std::min(chunk, T - t0);
        launch_scores(in, knobs, b, h, t0, n, scores);
        entries.push_back(launch_top_k(scores, knobs, t0, n, counts.narrow(0, (b * Hkv + h) * T + t0, n)));
      }
  return rows_of(counts, entries);
}

Tensor block_scores(const Tensor& q_in, const Tensor& k_cmp_in, const SelectionKnobs& knobs, torch::ScalarType dtype,
                    kn::BsaPath path) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Operands in(q_in, k_cmp_in, dtype);
  const int64_t B = in.q.size(0), T = in.q.size(2), Hkv = in.k_hi.size(1);
  auto scores = torch::empty({B, Hkv, T, blocks_of(T, knobs)}, in.q.options().dtype(torch::kFloat32));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h) {
      auto rows = scores[b][h];
      launch_scores(in, knobs, b, h, 0, T, rows, path);
    }
  return scores;
}

BlockRows rows_from_scores(const Tensor& scores_in, const SelectionKnobs& knobs) {
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const Tensor scores = scores_in.to(torch::kFloat32).contiguous();
  const int64_t B = scores.size(0), Hkv = scores.size(1), T = scores.size(2);
  auto counts = torch::empty({B * Hkv * T}, scores.options().dtype(torch::kInt64));
  std::vector<Tensor> entries;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      entries.push_back(launch_top_k(scores[b][h], knobs, 0, T, counts.narrow(0, (b * Hkv + h) * T, T)));
  return rows_of(counts, entries);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
