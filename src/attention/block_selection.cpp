#include "attention/block_selection.h"

#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/block_sparse.h"
#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/selection.h"
#endif

namespace st {

using torch::Tensor;

Tensor compression_blocks(const Tensor& x, int64_t length, int64_t stride) {
  if (x.size(2) < length) return x.new_zeros({x.size(0), x.size(1), 0, length, x.size(3)});
  return x.unfold(2, length, stride).transpose(-1, -2);  // unfold puts the window last
}

Tensor compressed_attention_probs(const Tensor& q, const Tensor& k_cmp, int64_t length, int64_t stride, int64_t t0) {
  const int64_t B = q.size(0), T = q.size(2), d = q.size(3), Hkv = k_cmp.size(1), n = k_cmp.size(2);
  const auto dtype = reference_dtype(q);
  // The scale goes on q, which is smaller than the logits [.., T, n].
  auto q_groups = q.to(dtype).view({B, Hkv, q.size(1) / Hkv, T, d}) / std::sqrt(double(d));
  auto logits = torch::matmul(q_groups, k_cmp.to(dtype).unsqueeze(2).transpose(-1, -2));
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
  auto block_end = torch::arange(n, ints) * stride + length - 1;
  auto visible = block_end.view({1, n}) <= torch::arange(t0, t0 + T, ints).view({T, 1});
  const double inf = std::numeric_limits<double>::infinity();
  if (t0 >= length - 1) return torch::softmax(logits.masked_fill_(~visible, -inf), -1);
  // Queries before the first complete block see none: their rows go through the softmax
  // unmasked (so finite) and come out 0, with gradient 0, instead of NaN.
  auto sees = visible.any(-1, /*keepdim=*/true);
  return torch::softmax(logits.masked_fill_(~(visible | ~sees), -inf), -1) * sees;
}

int64_t query_tile_rows(int64_t per_row, int64_t T) {
  return std::clamp<int64_t>((int64_t(1) << 26) / std::max<int64_t>(per_row, 1), 1, std::max<int64_t>(T, 1));
}

namespace {

// How many of the n compressed blocks a tile whose last query is `last` works on: those
// complete by then (the causal triangle; later ones get probability 0 in every row of the
// tile). At least one, so the softmax row is never empty: a tile that sees none still goes
// through compressed_attention_probs, which zeroes such rows.
int64_t blocks_complete_by(int64_t last, int64_t n, int64_t length, int64_t stride) {
  const int64_t complete = last < length - 1 ? 0 : (last - length + 1) / stride + 1;
  return std::min(n, std::max<int64_t>(complete, 1));
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Flash-attention style over the compressed keys: the forward keeps q, k_cmp and v_cmp only,
// the backward recomputes each tile's P and takes dS = P (dP - rowsum(P dP)).
struct CompressedAttentionFunction : torch::autograd::Function<CompressedAttentionFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp,
                        int64_t length, int64_t stride, int64_t tile_rows) {
    const AutocastOff fp32;
    const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3);
    auto v = v_cmp.to(reference_dtype(q)).unsqueeze(2);
    std::vector<Tensor> out;
    for (int64_t t0 = 0; t0 < T; t0 += tile_rows) {
      const int64_t n = std::min(tile_rows, T - t0);
      const int64_t seen = blocks_complete_by(t0 + n - 1, k_cmp.size(2), length, stride);
      auto p = compressed_attention_probs(q.narrow(2, t0, n), k_cmp.narrow(2, 0, seen), length, stride, t0);
      out.push_back(torch::matmul(p, v.narrow(3, 0, seen)));
    }
    ctx->save_for_backward({q, k_cmp, v_cmp});
    ctx->saved_data["length"] = length;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["tile_rows"] = tile_rows;
    return torch::cat(out, 3).view({B, Hq, T, d});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const AutocastOff fp32;
    const auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k_cmp = saved[1], &v_cmp = saved[2];
    const int64_t length = ctx->saved_data["length"].toInt(), stride = ctx->saved_data["stride"].toInt();
    const int64_t tile_rows = ctx->saved_data["tile_rows"].toInt();
    const int64_t B = q.size(0), T = q.size(2), d = q.size(3), Hkv = k_cmp.size(1), G = q.size(1) / Hkv;
    const auto dtype = reference_dtype(q);
    const double scale = 1.0 / std::sqrt(double(d));
    auto k = k_cmp.to(dtype).unsqueeze(2), v = v_cmp.to(dtype).unsqueeze(2);  // [B, Hkv, 1, n, d]
    auto q_groups = q.to(dtype).view({B, Hkv, G, T, d});
    auto do_groups = grads[0].to(dtype).reshape({B, Hkv, G, T, d});
    auto dk = torch::zeros_like(k_cmp, dtype), dv = torch::zeros_like(v_cmp, dtype);
    std::vector<Tensor> dq;
    for (int64_t t0 = 0; t0 < T; t0 += tile_rows) {
      const int64_t n = std::min(tile_rows, T - t0);
      const int64_t seen = blocks_complete_by(t0 + n - 1, k_cmp.size(2), length, stride);
      auto p = compressed_attention_probs(q.narrow(2, t0, n), k_cmp.narrow(2, 0, seen), length, stride,
                                          t0);  // [B, Hkv, G, n, seen]
      auto k_t = k.narrow(3, 0, seen), v_t = v.narrow(3, 0, seen);
      auto q_t = q_groups.narrow(3, t0, n), do_t = do_groups.narrow(3, t0, n);
      auto dp = torch::matmul(do_t, v_t.transpose(-1, -2));
      auto ds = p * (dp - (p * dp).sum(-1, /*keepdim=*/true));
      dq.push_back(torch::matmul(ds, k_t) * scale);
      dk.narrow(2, 0, seen) += (torch::matmul(ds.transpose(-1, -2), q_t) * scale).sum(2);
      dv.narrow(2, 0, seen) += torch::matmul(p.transpose(-1, -2), do_t).sum(2);
    }
    return {torch::cat(dq, 3).view(q.sizes()).to(q.scalar_type()), dk.to(k_cmp.scalar_type()),
            dv.to(v_cmp.scalar_type()), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor compressed_attention(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, int64_t length, int64_t stride,
                            int64_t tile_rows) {
  if (tile_rows <= 0) tile_rows = query_tile_rows(q.size(1) / k_cmp.size(1) * k_cmp.size(2), q.size(2));
  return CompressedAttentionFunction::apply(q, k_cmp, v_cmp, length, stride, tile_rows);
}

Tensor attend_compressed(const Tensor& q, const Tensor& k_cmp, const Tensor& v_cmp, int64_t length, int64_t stride,
                         const std::string& impl, int64_t tile_rows) {
  const auto dtype = half_precision_dtype({q});
  if (impl == "reference" || !q.is_cuda() || !dtype) return compressed_attention(q, k_cmp, v_cmp, length, stride);
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), Hkv = k_cmp.size(1), n = k_cmp.size(2);
  auto heads = [&](const Tensor& x) {  // [B, Hkv, n, d] -> [B, Hq, n, d], query head h reading KV head h / G
    return x.to(*dtype).unsqueeze(2).expand({B, Hkv, Hq / Hkv, n, d}).reshape({B, Hq, n, d});
  };
  const auto k = heads(k_cmp), v = heads(v_cmp), q16 = q.to(*dtype);
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
  // Queries before the first complete block see none: 0, as on the reference path.
  const int64_t first = std::min(T, length - 1);
  if (tile_rows <= 0) tile_rows = query_tile_rows(n, T);
  std::vector<Tensor> out{torch::zeros({B, Hq, first, d}, q.options().dtype(reference_dtype(q)))};
  for (int64_t t0 = first; t0 < T; t0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, T - t0), seen = blocks_complete_by(t0 + rows - 1, n, length, stride);
    auto visible = (torch::arange(seen, ints) * stride + length - 1).view({1, seen}) <=
                   torch::arange(t0, t0 + rows, ints).view({rows, 1});
    out.push_back(at::scaled_dot_product_attention(q16.narrow(2, t0, rows), k.narrow(2, 0, seen),
                                                   v.narrow(2, 0, seen), visible)
                      .to(reference_dtype(q)));
  }
  return torch::cat(out, 2);
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

Tensor select_blocks(const Tensor& scores, int64_t block, int64_t top_k, int64_t init_blocks, int64_t local_blocks,
                     int64_t t0) {
  const int64_t T = scores.size(2), n_blocks = scores.size(3);
  const double inf = std::numeric_limits<double>::infinity();
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(scores.device());
  auto own = torch::arange(t0, t0 + T, ints).div(block, "floor").view({T, 1});
  auto c = torch::arange(n_blocks, ints).view({1, n_blocks});
  auto causal = c <= own;
  auto forced = causal & ((c < init_blocks) | (c > own - local_blocks));
  auto ranked = torch::where(forced, inf, torch::where(causal, scores, -inf));
  auto order = std::get<1>(ranked.sort(/*stable=*/true, -1, /*descending=*/true));
  auto top = order.narrow(-1, 0, std::min(top_k, n_blocks));
  return torch::zeros_like(ranked, ranked.options().dtype(torch::kBool)).scatter(-1, top, true) & causal;
}

namespace {

// Blocks chosen by the queries of q_rows (positions t0 ..) over k_cmp: select_rows_from_compressed's
// work for one tile, bool [B, Hkv, n, n_blocks]. Only the compressed blocks complete by the tile's
// last query are scored (the causal triangle: about half the work over a sequence); the
// others' probabilities are 0, as pool_to_blocks' zero padding gives them.
Tensor select_tile(const Tensor& q_rows, const Tensor& k_cmp, const SelectionKnobs& kn, int64_t t0, int64_t n_blocks) {
  const int64_t n_seen = blocks_complete_by(t0 + q_rows.size(2) - 1, k_cmp.size(2), kn.length, kn.stride);
  auto probs = compressed_attention_probs(q_rows, k_cmp.narrow(2, 0, n_seen), kn.length, kn.stride, t0).sum(2);
  auto scores = pool_to_blocks(probs, kn.length, kn.stride, kn.block, n_blocks, kn.pool);
  return select_blocks(scores, kn.block, kn.top_k, kn.init_blocks, kn.local_blocks, t0);
}

}  // namespace

BlockRows select_rows_from_compressed(const Tensor& q, const Tensor& k_cmp, const SelectionKnobs& kn,
                                      int64_t tile_rows) {
  torch::NoGradGuard no_grad;
  const AutocastOff fp32;
  const int64_t B = q.size(0), Hkv = k_cmp.size(1), G = q.size(1) / Hkv, T = q.size(2);
  const int64_t n_blocks = (T + kn.block - 1) / kn.block;
  if (tile_rows <= 0) tile_rows = query_tile_rows(G * k_cmp.size(2), T);
  // Tiles in the lists' row order: batch, KV group, position.
  std::vector<Tensor> counts, blocks;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t t0 = 0; t0 < T; t0 += tile_rows) {
        const int64_t n = std::min(tile_rows, T - t0);
        auto q_rows = q.narrow(0, b, 1).narrow(1, h * G, G).narrow(2, t0, n);
        auto chosen = select_tile(q_rows, k_cmp.narrow(0, b, 1).narrow(1, h, 1), kn, t0, n_blocks).view({n, n_blocks});
        auto entries = list_entries(chosen, t0, kn.block);
        counts.push_back(entries.counts);
        blocks.push_back(entries.blocks);
      }
  return {row_ptr_from_counts(torch::cat(counts)), torch::cat(blocks), Tensor()};
}

BlockRows select_rows(const Tensor& q, const Tensor& k_cmp, const SelectionKnobs& knobs, const std::string& impl) {
#ifdef SPARSETRAIN_CUDA
  if (impl != "reference")
    if (auto dtype = cuda::selection_kernel_dtype(q, k_cmp, knobs)) return cuda::select_rows(q, k_cmp, knobs, *dtype);
#endif
  return select_rows_from_compressed(q, k_cmp, knobs);
}

}  // namespace st
