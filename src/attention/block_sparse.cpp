#include "attention/block_sparse.h"

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>

namespace st {

using torch::Tensor;

torch::ScalarType reference_dtype(const Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

AutocastOff::AutocastOff() : was(at::autocast::is_autocast_enabled(at::kCUDA)) {
  at::autocast::set_autocast_enabled(at::kCUDA, false);
}
AutocastOff::~AutocastOff() { at::autocast::set_autocast_enabled(at::kCUDA, was); }

namespace {

struct Shape {
  int64_t B, Hkv, G, T, d, block, n_blocks, window, query_tile;
};

// The keys one query tile [t0, t0 + n) reads, and how: the union of the blocks its rows need,
// gathered, with a per-(row, key) mask and bias. Built identically by the forward pass and
// the backward pass (which recomputes rather than stores the tile's probabilities).
struct TileKeys {
  Tensor blocks;    // [B, Hkv, U] block ids, the needed ones first
  Tensor row_ids;   // blocks expanded per row, [B, Hkv, n, U], for gathering from / scattering to bias
  Tensor mask;      // [B, Hkv, 1, n, U * block]: the row reads the key
  Tensor selected;  // [B, Hkv, 1, n, U * block]: ... through a selected block, so the bias applies
  Tensor bias;      // [B, Hkv, 1, n, U * block], 0 off the selected blocks; undefined without bias
};

TileKeys tile_keys(const Shape& s, const Tensor& selected, const Tensor& bias, int64_t t0, int64_t n) {
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(selected.device());
  auto sel = selected.narrow(2, t0, n);  // [B, Hkv, n, n_blocks]
  // Blocks some row of the tile reads: selected ones, and those inside the tile's window span.
  auto needed = sel.any(2);
  auto block_start = torch::arange(s.n_blocks, ints) * s.block;
  if (s.window > 0)
    needed = needed | ((block_start + s.block > t0 - s.window + 1) & (block_start < t0 + n));
  // The needed blocks first, in position order (stable); any others filling the U slots of a
  // head that needs fewer are neither selected nor in a window, so the mask drops them (and a
  // tile needing none reads one such block and gets 0).
  const int64_t U = std::max<int64_t>(needed.sum(-1).max().item<int64_t>(), 1);
  TileKeys t;
  t.blocks = std::get<1>(needed.to(torch::kInt32).sort(/*stable=*/true, -1, /*descending=*/true)).narrow(-1, 0, U);
  t.row_ids = t.blocks.unsqueeze(2).expand({s.B, s.Hkv, n, U});
  auto per_key = [&](const Tensor& per_block) {  // [B, Hkv, n, U] -> [B, Hkv, 1, n, U * block]
    return per_block.unsqueeze(-1).expand({s.B, s.Hkv, n, U, s.block}).reshape({s.B, s.Hkv, 1, n, U * s.block});
  };
  auto key_pos = ((t.blocks * s.block).unsqueeze(-1) + torch::arange(s.block, ints)).view({s.B, s.Hkv, 1, 1, U * s.block});
  auto distance = torch::arange(t0, t0 + n, ints).view({1, 1, 1, n, 1}) - key_pos;  // i - j
  t.selected = per_key(sel.gather(-1, t.row_ids));
  t.mask = (distance >= 0) & (t.selected | (distance < s.window));
  if (bias.defined()) {
    auto b = per_key(bias.narrow(2, t0, n).gather(-1, t.row_ids));
    t.bias = torch::where(t.selected, b, torch::zeros_like(b));
  }
  return t;
}

// x as blocks [B, Hkv, n_blocks, block, d] -> the listed blocks' rows [B, Hkv, U * block, d].
Tensor gather_blocks(const Tensor& x_blocks, const Tensor& ids) {
  const auto& sz = x_blocks.sizes();
  const int64_t U = ids.size(-1);
  return x_blocks.gather(2, ids.view({sz[0], sz[1], U, 1, 1}).expand({sz[0], sz[1], U, sz[3], sz[4]}))
      .view({sz[0], sz[1], U * sz[3], sz[4]});
}

// Probabilities of one tile: softmax of q . k * scale + bias over the read keys, given the
// rows' log-sum-exp; a row reading nothing (lse = -inf) is all 0.
Tensor tile_probs(const Tensor& logits, const Tensor& lse) {
  return torch::where(torch::isfinite(lse), (logits - lse).exp(), torch::zeros_like(logits));
}

Tensor tile_logits(const Tensor& q_tile, const Tensor& k_tile, const TileKeys& keys, double scale) {
  auto logits = torch::matmul(q_tile, k_tile.unsqueeze(2).transpose(-1, -2)) * scale;  // [B, Hkv, G, n, U * block]
  if (keys.bias.defined()) logits = logits + keys.bias;
  return logits.masked_fill(~keys.mask, -std::numeric_limits<double>::infinity());
}

// Flash-attention style: the forward keeps only the output and each row's log-sum-exp, the
// backward recomputes each tile's probabilities, so memory is O(T d) plus one tile's worth,
// whatever the selection. Backward per tile (DESIGN §2.2): dS = P * (dP - rowsum(dO * O)),
// dq = dS k scale, dk = dS^T q scale, dv = P^T dO, d bias[i, c] = sum of dS over block c's keys.
struct BlockSparseFunction : torch::autograd::Function<BlockSparseFunction> {
  static Shape shape_of(const Tensor& q, const Tensor& k, int64_t block, int64_t window, int64_t query_tile) {
    const int64_t T = q.size(2);
    return {q.size(0), k.size(1), q.size(1) / k.size(1), T, q.size(3), block, (T + block - 1) / block, window, query_tile};
  }
  static Tensor as_blocks(const Tensor& x, const Shape& s) {  // zero padding past T is never causal
    return torch::constant_pad_nd(x.to(reference_dtype(x)), {0, 0, 0, s.n_blocks * s.block - s.T})
        .view({s.B, s.Hkv, s.n_blocks, s.block, s.d});
  }
  // Autograd functions take no undefined inputs: "no bias" travels as an empty tensor.
  static Tensor bias_or_none(const Tensor& bias, torch::ScalarType dtype) {
    return bias.numel() > 0 ? bias.to(dtype) : Tensor();
  }
  static Tensor selection(const Tensor& bias, const Shape& s, const Tensor& like) {
    return bias.defined() ? torch::isfinite(bias) : torch::zeros({s.B, s.Hkv, s.T, s.n_blocks}, like.options().dtype(torch::kBool));
  }

  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& bias, int64_t block, int64_t window, int64_t query_tile) {
    const Shape s = shape_of(q, k, block, window, query_tile);
    const auto dtype = reference_dtype(q);
    const double scale = 1.0 / std::sqrt(double(s.d));
    auto k_blocks = as_blocks(k, s), v_blocks = as_blocks(v, s);
    auto q_groups = q.to(dtype).view({s.B, s.Hkv, s.G, s.T, s.d});
    auto bias_ref = bias_or_none(bias, dtype);
    auto selected = selection(bias_ref, s, q);
    std::vector<Tensor> out, lse;
    for (int64_t t0 = 0; t0 < s.T; t0 += s.query_tile) {
      const int64_t n = std::min(s.query_tile, s.T - t0);
      auto keys = tile_keys(s, selected, bias_ref, t0, n);
      auto logits = tile_logits(q_groups.narrow(3, t0, n), gather_blocks(k_blocks, keys.blocks), keys, scale);
      lse.push_back(torch::logsumexp(logits, -1, /*keepdim=*/true));
      out.push_back(torch::matmul(tile_probs(logits, lse.back()), gather_blocks(v_blocks, keys.blocks).unsqueeze(2)));
    }
    auto o = torch::cat(out, 3);  // [B, Hkv, G, T, d]
    ctx->save_for_backward({q, k, v, bias, o, torch::cat(lse, 3)});
    ctx->saved_data["block"] = block;
    ctx->saved_data["window"] = window;
    ctx->saved_data["query_tile"] = query_tile;
    return o.view({s.B, s.Hkv * s.G, s.T, s.d}).to(q.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &bias = saved[3], &o = saved[4], &lse = saved[5];
    const Shape s = shape_of(q, k, ctx->saved_data["block"].toInt(), ctx->saved_data["window"].toInt(),
                             ctx->saved_data["query_tile"].toInt());
    const auto dtype = reference_dtype(q);
    const double scale = 1.0 / std::sqrt(double(s.d));
    auto k_blocks = as_blocks(k, s), v_blocks = as_blocks(v, s);
    auto q_groups = q.to(dtype).view({s.B, s.Hkv, s.G, s.T, s.d});
    auto do_groups = grads[0].to(dtype).reshape({s.B, s.Hkv, s.G, s.T, s.d});
    auto bias_ref = bias_or_none(bias, dtype);
    auto selected = selection(bias_ref, s, q);
    auto dk_blocks = torch::zeros_like(k_blocks), dv_blocks = torch::zeros_like(v_blocks);
    auto dbias = bias_ref.defined() ? torch::zeros_like(bias_ref) : Tensor();
    std::vector<Tensor> dq;
    for (int64_t t0 = 0; t0 < s.T; t0 += s.query_tile) {
      const int64_t n = std::min(s.query_tile, s.T - t0);
      auto keys = tile_keys(s, selected, bias_ref, t0, n);
      auto k_tile = gather_blocks(k_blocks, keys.blocks), v_tile = gather_blocks(v_blocks, keys.blocks);
      auto q_tile = q_groups.narrow(3, t0, n), do_tile = do_groups.narrow(3, t0, n);
      auto p = tile_probs(tile_logits(q_tile, k_tile, keys, scale), lse.narrow(3, t0, n));
      auto dp = torch::matmul(do_tile, v_tile.unsqueeze(2).transpose(-1, -2));
      auto ds = p * (dp - (do_tile * o.narrow(3, t0, n)).sum(-1, /*keepdim=*/true));  // [B, Hkv, G, n, U * block]
      dq.push_back(torch::matmul(ds, k_tile.unsqueeze(2)) * scale);
      // Keys and values are shared by the group: sum over its heads, then back to their blocks.
      auto to_blocks = [&](const Tensor& per_key, Tensor& into) {
        const int64_t U = keys.blocks.size(-1);
        auto ids = keys.blocks.view({s.B, s.Hkv, U, 1, 1}).expand({s.B, s.Hkv, U, s.block, s.d});
        into.scatter_add_(2, ids, per_key.view({s.B, s.Hkv, U, s.block, s.d}));
      };
      to_blocks((torch::matmul(ds.transpose(-1, -2), q_tile) * scale).sum(2), dk_blocks);
      to_blocks(torch::matmul(p.transpose(-1, -2), do_tile).sum(2), dv_blocks);
      if (dbias.defined()) {
        const int64_t U = keys.blocks.size(-1);
        auto per_block = (ds * keys.selected).sum(2).view({s.B, s.Hkv, n, U, s.block}).sum(-1);
        dbias.narrow(2, t0, n).scatter_add_(-1, keys.row_ids, per_block);
      }
    }
    auto unblock = [&](const Tensor& blocks, const Tensor& like) {
      return blocks.view({s.B, s.Hkv, s.n_blocks * s.block, s.d}).narrow(2, 0, s.T).to(like.scalar_type());
    };
    return {torch::cat(dq, 3).view(q.sizes()).to(q.scalar_type()),
            unblock(dk_blocks, k),
            unblock(dv_blocks, v),
            dbias.defined() ? dbias.to(bias.scalar_type()) : Tensor(),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

}  // namespace

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, int64_t block,
                              int64_t window, int64_t query_tile) {
  auto bias_or_empty = bias.defined() ? bias : torch::empty({0}, q.options());
  return BlockSparseFunction::apply(q, k, v, bias_or_empty, block, window, query_tile);
}

}  // namespace st
