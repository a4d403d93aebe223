#include "attention/block_sparse.h"

#include <cmath>
#include <limits>

namespace st {

using torch::Tensor;

torch::ScalarType reference_dtype(const Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

Tensor masked_softmax(const Tensor& logits, const Tensor& mask) {
  auto x = logits.masked_fill(~mask, -std::numeric_limits<double>::infinity());
  auto max = std::get<0>(x.max(-1, /*keepdim=*/true)).detach();
  auto e = (x - torch::where(torch::isfinite(max), max, torch::zeros_like(max))).exp();
  auto sum = e.sum(-1, /*keepdim=*/true);
  return e / torch::where(sum > 0, sum, torch::ones_like(sum));
}

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                              int64_t block, int64_t window, int64_t query_tile) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), Hkv = k.size(1), G = Hq / Hkv;
  const int64_t n_blocks = (T + block - 1) / block;
  const auto dtype = reference_dtype(q);
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
  // Keys as [B, Hkv, n_blocks, block, d]; the zero padding past T is never causal.
  auto as_blocks = [&](const Tensor& t) {
    return torch::constant_pad_nd(t.to(dtype), {0, 0, 0, n_blocks * block - T}).view({B, Hkv, n_blocks, block, d});
  };
  auto k_blocks = as_blocks(k), v_blocks = as_blocks(v);
  auto q_groups = q.to(dtype).view({B, Hkv, G, T, d});
  auto selected = bias.defined() ? torch::isfinite(bias)
                                 : torch::zeros({B, Hkv, T, n_blocks}, ints.dtype(torch::kBool));
  auto block_start = torch::arange(n_blocks, ints) * block;
  const double scale = 1.0 / std::sqrt(double(d));

  std::vector<Tensor> out;
  for (int64_t t0 = 0; t0 < T; t0 += query_tile) {
    const int64_t n = std::min(query_tile, T - t0);
    auto sel = selected.narrow(2, t0, n);  // [B, Hkv, n, n_blocks]
    // Blocks some row of the tile reads: selected ones, and those inside the tile's window span.
    auto needed = sel.any(2);
    if (window > 0)
      needed = needed | ((block_start + block > t0 - window + 1) & (block_start < t0 + n));
    // The needed blocks first, in position order (stable); any others filling the U slots of
    // a head that needs fewer are neither selected nor in a window, so the mask drops them
    // (and a tile needing none reads one such block and gets 0).
    const int64_t U = std::max<int64_t>(needed.sum(-1).max().item<int64_t>(), 1);
    auto idx = std::get<1>(needed.to(torch::kInt32).sort(/*stable=*/true, -1, /*descending=*/true)).narrow(-1, 0, U);
    auto gather_keys = [&](const Tensor& blocks) {
      return blocks.gather(2, idx.view({B, Hkv, U, 1, 1}).expand({B, Hkv, U, block, d})).view({B, Hkv, U * block, d});
    };
    auto k_tile = gather_keys(k_blocks), v_tile = gather_keys(v_blocks);
    auto key_pos = ((idx * block).unsqueeze(-1) + torch::arange(block, ints)).view({B, Hkv, 1, U * block});
    auto per_key = [&](const Tensor& per_block) {  // [B, Hkv, n, U] -> [B, Hkv, n, U * block]
      return per_block.unsqueeze(-1).expand({B, Hkv, n, U, block}).reshape({B, Hkv, n, U * block});
    };
    auto row_idx = idx.unsqueeze(2).expand({B, Hkv, n, U});
    auto key_selected = per_key(sel.gather(-1, row_idx));
    auto distance = torch::arange(t0, t0 + n, ints).view({1, 1, n, 1}) - key_pos;  // i - j
    auto mask = (distance >= 0) & (key_selected | (distance < window));
    auto logits = torch::matmul(q_groups.narrow(3, t0, n), k_tile.unsqueeze(2).transpose(-1, -2)) * scale;
    if (bias.defined()) {
      auto key_bias = per_key(bias.narrow(2, t0, n).to(dtype).gather(-1, row_idx));
      logits = logits + torch::where(key_selected, key_bias, torch::zeros_like(key_bias)).unsqueeze(2);
    }
    out.push_back(torch::matmul(masked_softmax(logits, mask.unsqueeze(2)), v_tile.unsqueeze(2)));
  }
  return torch::cat(out, 3).view({B, Hq, T, d}).to(q.scalar_type());
}

int64_t attended_pairs(const Tensor& selected, int64_t block, int64_t window, int64_t offset, int64_t group) {
  const int64_t T = selected.size(2), n_blocks = selected.size(3);
  if (offset >= T) return 0;
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(selected.device());
  auto i = torch::arange(offset, T, ints).view({-1, 1});
  auto first = torch::arange(n_blocks, ints).view({1, -1}) * block, last = first + block - 1;
  // Keys of block c that query i reads: all causal ones when selected, else those in its window.
  auto causal = (torch::minimum(i, last) - first + 1).clamp_min(0);
  auto in_window = (torch::minimum(i, last) - torch::maximum(first, i - window + 1) + 1).clamp_min(0);
  auto rows = selected.narrow(2, offset, T - offset);
  return torch::where(rows, causal, in_window).sum().item<int64_t>() * group;
}

}  // namespace st
