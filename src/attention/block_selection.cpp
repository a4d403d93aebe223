#include "attention/block_selection.h"

#include <cmath>
#include <limits>

#include "attention/block_sparse.h"

namespace st {

using torch::Tensor;

namespace {

// Softmax over the last dim restricted to `mask`. A row with nothing allowed (a query before
// the first complete compressed block) gives 0, with gradient 0, instead of NaN.
Tensor masked_softmax(const Tensor& logits, const Tensor& mask) {
  auto x = logits.masked_fill(~mask, -std::numeric_limits<double>::infinity());
  auto max = std::get<0>(x.max(-1, /*keepdim=*/true)).detach();
  auto e = (x - torch::where(torch::isfinite(max), max, torch::zeros_like(max))).exp();
  auto sum = e.sum(-1, /*keepdim=*/true);
  return e / torch::where(sum > 0, sum, torch::ones_like(sum));
}

}  // namespace

Tensor compression_blocks(const Tensor& x, int64_t length, int64_t stride) {
  if (x.size(2) < length) return x.new_zeros({x.size(0), x.size(1), 0, length, x.size(3)});
  return x.unfold(2, length, stride).transpose(-1, -2);  // unfold puts the window last
}

Tensor compressed_attention_probs(const Tensor& q, const Tensor& k_cmp, int64_t length, int64_t stride) {
  const int64_t B = q.size(0), T = q.size(2), d = q.size(3), Hkv = k_cmp.size(1), n = k_cmp.size(2);
  const auto dtype = reference_dtype(q);
  auto q_groups = q.to(dtype).view({B, Hkv, q.size(1) / Hkv, T, d});
  auto logits = torch::matmul(q_groups, k_cmp.to(dtype).unsqueeze(2).transpose(-1, -2)) / std::sqrt(double(d));
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
  auto block_end = torch::arange(n, ints) * stride + length - 1;
  auto visible = block_end.view({1, n}) <= torch::arange(T, ints).view({T, 1});
  return masked_softmax(logits, visible);
}

Tensor pool_to_blocks(const Tensor& cmp_scores, int64_t length, int64_t stride, int64_t block, int64_t n_blocks,
                      Pool pool) {
  // Selection block j covers [j block, (j+1) block); compressed block i covers
  // [i stride, i stride + length). With block = m stride they overlap exactly for
  // i in [j m - lead, j m + m - 1], lead = (length - 1) / stride: a pooling window of
  // m + lead compressed blocks every m, after padding lead zeros in front (scores are >= 0,
  // so a zero pad never wins a max nor changes a sum).
  const int64_t m = block / stride, lead = (length - 1) / stride, kernel = m + lead;
  const int64_t n = cmp_scores.size(-1), padded_len = (n_blocks - 1) * m + kernel;
  auto rows = cmp_scores.flatten(0, -2).unsqueeze(1);  // [rows, 1, n]
  auto padded = torch::constant_pad_nd(rows, {lead, padded_len - lead - n});  // a negative pad trims
  auto pooled = pool == Pool::Max ? torch::max_pool1d(padded, {kernel}, {m})
                                  : torch::avg_pool1d(padded, {kernel}, {m}) * double(kernel);
  auto shape = cmp_scores.sizes().vec();
  shape.back() = n_blocks;
  return pooled.view(shape);
}

Tensor select_blocks(const Tensor& scores, int64_t block, int64_t top_k, int64_t init_blocks, int64_t local_blocks) {
  const int64_t T = scores.size(2), n_blocks = scores.size(3);
  const double inf = std::numeric_limits<double>::infinity();
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(scores.device());
  auto own = torch::arange(T, ints).div(block, "floor").view({T, 1});
  auto c = torch::arange(n_blocks, ints).view({1, n_blocks});
  auto causal = c <= own;
  auto forced = causal & ((c < init_blocks) | (c > own - local_blocks));
  auto ranked = torch::where(forced, inf, torch::where(causal, scores, -inf));
  auto order = std::get<1>(ranked.sort(/*stable=*/true, -1, /*descending=*/true));
  auto top = order.narrow(-1, 0, std::min(top_k, n_blocks));
  return torch::zeros_like(ranked, ranked.options().dtype(torch::kBool)).scatter(-1, top, true) & causal;
}

}  // namespace st
