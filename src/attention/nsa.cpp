#include "attention/nsa.h"

#include <fmt/format.h>

#include <cmath>

#include "attention/block_selection.h"
#include "attention/block_sparse.h"
#include "attention/block_sparse_dispatch.h"
#include "config/recipe.h"
#include "model/rope.h"

namespace st {

using torch::Tensor;

BlockCompressorImpl::BlockCompressorImpl(int64_t length, int64_t head_dim) {
  position = register_parameter("position", torch::randn({length, head_dim}) * 0.02);
  hidden = register_module("hidden", torch::nn::Linear(length * head_dim, head_dim));
  out = register_module("out", torch::nn::Linear(head_dim, head_dim));
  // The MLP is a residual on the block mean with a zero output layer: a new compressor
  // starts as mean pooling, so attention over compressed keys starts as a coarse version of
  // the dense attention the checkpoint was trained with, and learns from there.
  torch::NoGradGuard no_grad;
  out->weight.zero_();
  out->bias.zero_();
}

Tensor BlockCompressorImpl::forward(const Tensor& blocks) {
  auto flat = (blocks + position).flatten(-2);  // [.., length * d]
  return blocks.mean(-2) + out(torch::silu(hidden(flat)));
}

NsaAttention::NsaAttention(const ModelConfig& cfg)
    : cfg_(cfg.attention.nsa),
      impl_(cfg.attention.impl),
      sparsity_offset_(cfg.attention.sparsity_offset),
      n_kv_heads_(cfg.n_kv_heads),
      head_dim_(cfg.head_dim_or_default()) {
  // The selection travels as per-row lists, whose readers (the kernels and the reference alike)
  // always read the query's own block: a forced local block must guarantee it.
  if (cfg_.local_blocks < 1)
    throw ConfigError(fmt::format("model.attention.nsa.local_blocks: expected >= 1, got {}: the selection branch "
                                  "always reads the query's own block",
                                  cfg_.local_blocks));
  if (cfg_.compressor == "mlp") {
    compress_k = register_module("compress_k", BlockCompressor(cfg_.cmp_block, head_dim_));
    compress_v = register_module("compress_v", BlockCompressor(cfg_.cmp_block, head_dim_));
  }
  gate = register_module("gate", torch::nn::Linear(cfg.dim, 3 * cfg.n_heads));
  // Gates start input-independent at g_slc = g_win = 1/2 and g_cmp = sigmoid(-3) ~ 0.05.
  // While the sequence fits in the window and the top_n blocks, the selection and window
  // branches are exactly dense attention, so a dense checkpoint starts at dense attention
  // plus 5% of its compressed version; the small g_cmp still passes gradient to the compressor.
  torch::NoGradGuard no_grad;
  gate->weight.zero_();
  gate->bias.zero_();
  gate->bias.narrow(0, 0, cfg.n_heads).fill_(-3.0);
  if (cfg_.kv == "separate") {
    // The paper's separate branch K/V, as zero-initialised corrections to the block's shared
    // projections (k_branch = k + RoPE(x W), v_branch = v + x W'): they start equal to the
    // dense checkpoint's K/V and each branch then learns its own. Selection keeps the shared
    // K/V, compression and window get their own.
    const int64_t width = 2 * n_kv_heads_ * head_dim_;
    cmp_kv = register_module("cmp_kv", torch::nn::Linear(torch::nn::LinearOptions(cfg.dim, width).bias(false)));
    win_kv = register_module("win_kv", torch::nn::Linear(torch::nn::LinearOptions(cfg.dim, width).bias(false)));
    cmp_kv->weight.zero_();
    win_kv->weight.zero_();
  }
}

NsaAttention::KV NsaAttention::branch_kv(const AttentionInputs& in, torch::nn::Linear& delta) const {
  if (!delta) return {in.k, in.v};
  const int64_t B = in.x.size(0), T = in.x.size(1);
  auto heads = [&](const Tensor& t) { return t.reshape({B, T, n_kv_heads_, head_dim_}).transpose(1, 2); };
  auto kv = delta(in.x).chunk(2, -1);
  return {in.k + apply_rope(heads(kv[0]), {in.cos, in.sin}).to(in.k.scalar_type()),
          in.v + heads(kv[1]).to(in.v.scalar_type())};
}

Tensor NsaAttention::compress(const Tensor& x, BlockCompressor& phi) const {
  // In the activation dtype, which is the parameters' dtype; the attention above upcasts.
  auto blocks = compression_blocks(x, cfg_.cmp_block, cfg_.cmp_stride);
  return (phi ? phi(blocks) : blocks.mean(-2)).to(reference_dtype(x));
}

BlockRows NsaAttention::select(const Tensor& q, const Tensor& k_cmp) const {
  // Importance of a selection block: the compression probabilities of the compressed blocks
  // overlapping it, summed over them and over the group's heads (one choice per group).
  return select_rows(q, k_cmp.detach(),
                     {cfg_.cmp_block, cfg_.cmp_stride, cfg_.sel_block, cfg_.top_n, cfg_.init_blocks, cfg_.local_blocks,
                      Pool::Sum},
                     impl_);
}

BlockRows NsaAttention::selection(const AttentionInputs& in) {
  torch::NoGradGuard no_grad;
  return select(in.q, compress(branch_kv(in, cmp_kv).k, compress_k));
}

Tensor NsaAttention::forward(const AttentionInputs& in) {
  const int64_t B = in.q.size(0), Hq = in.q.size(1), T = in.q.size(2);
  const auto dtype = reference_dtype(in.q);

  // Compression branch and selection each take the compressed attention one query tile at a
  // time (block_selection.h): its probabilities over all compressed blocks never exist whole.
  auto cmp = branch_kv(in, cmp_kv);
  auto k_cmp = compress(cmp.k, compress_k);
  auto o_cmp = attend_compressed(in.q, k_cmp, compress(cmp.v, compress_v), cfg_.cmp_block, cfg_.cmp_stride, impl_);

  auto selected = select(in.q, k_cmp);
  auto o_slc = attend_rows(in.q, in.k, in.v, selected, cfg_.sel_block, /*window=*/0, impl_).to(dtype);

  auto win = branch_kv(in, win_kv);
  auto o_win = attend_blocks(in.q, win.k, win.v, /*bias=*/{}, cfg_.sel_block, cfg_.window, impl_).to(dtype);

  auto g = torch::sigmoid(gate(in.x).to(dtype)).view({B, T, 3, Hq}).permute({2, 0, 3, 1}).unsqueeze(-1);
  if (record_stats) {
    // Attended: raw key positions whose own value reaches the query, through a selected block
    // or the window. The compression branch reads only block summaries and is not counted
    // (counting it would make every causal key "attended" and NSA's sparsity 0).
    stats = {attended_pairs(selected, T, cfg_.sel_block, cfg_.window, sparsity_offset_, Hq / in.k.size(1)),
             B * Hq * causal_pairs(T, sparsity_offset_)};
  }
  return (g[0] * o_cmp + g[1] * o_slc + g[2] * o_win).to(in.q.scalar_type());
}

}  // namespace st
