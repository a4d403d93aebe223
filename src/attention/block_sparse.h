// The one attention computation every sparse variant reduces to (DESIGN §3's core op, here
// in plain ATen): causal softmax attention over selected key blocks with an additive
// per-(query, block) bias, shared by the query heads of a GQA group, optionally joined by a
// token-level sliding window. Plus the sparsity count of what it attended (DESIGN §2.5).
#pragma once
#include <torch/types.h>

namespace st {

// The reference computes in fp32 (fp64 when given fp64), whatever the activation dtype.
torch::ScalarType reference_dtype(const torch::Tensor& t);

// CUDA autocast off for a scope, restored after: selection scores stay in fp32 under
// training's bf16 autocast, in a forward and in the recomputation of its backward alike.
struct AutocastOff {
  AutocastOff();
  ~AutocastOff();
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;
  const bool was;
};

// q [B, Hq, T, d]; k, v [B, Hkv, T, d] with query head h reading kv head h / (Hq / Hkv).
// Keys are cut into blocks of `block` positions (the last one may be short). bias
// [B, Hkv, T, ceil(T / block)] selects: query i reads block c when bias[i, c] is finite, and
// adds it to the logits of that block's keys; -inf leaves the block out. An undefined bias
// selects nothing. Independently of the bias, query i also reads keys j with i - j < window
// (window 0: none). Always causal (j <= i). Returns [B, Hq, T, d] in q's dtype.
// Queries go in tiles of `query_tile` rows against the union of the blocks that tile needs;
// the backward recomputes each tile (flash-attention style), so what stays alive between
// forward and backward is O(T d) whatever the selection, and a tile's scores live only
// while it is computed.
torch::Tensor block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& bias, int64_t block, int64_t window,
                                     int64_t query_tile = 128);

}  // namespace st
