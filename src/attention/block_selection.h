// Block selection shared by NSA (DESIGN §2.3) and InfLLMv2 (§2.4): both score key blocks
// through attention over compressed keys, pool those scores onto selection blocks, and keep
// the top-k per query and KV group with forced initial and local blocks.
#pragma once
#include <torch/types.h>

#include <string>

#include "attention/block_sparse_dispatch.h"

namespace st {

// Complete blocks of `length` positions starting every `stride`: x [B, H, T, d] ->
// [B, H, n, length, d] with n = (T - length) / stride + 1 (0 when T < length).
torch::Tensor compression_blocks(const torch::Tensor& x, int64_t length, int64_t stride);

// Attention probabilities of q [B, Hq, T, d] over compressed keys k_cmp [B, Hkv, n, d]
// (block i covers positions [i stride, i stride + length)): softmax of q . k / sqrt(d) over
// the blocks that lie wholly at or before the query. Returns [B, Hkv, G, T, n]; a query that
// sees no complete block gets a zero row. q may hold only the rows of queries [t0, t0 + T).
torch::Tensor compressed_attention_probs(const torch::Tensor& q, const torch::Tensor& k_cmp, int64_t length,
                                         int64_t stride, int64_t t0 = 0);

// Query rows per tile so that a tile's [.., rows, per_row] fp32 scores stay near 2^26 elements
// (256 MB): the tiled functions below hold one tile's scores at a time, never [G, T, n].
int64_t query_tile_rows(int64_t per_row, int64_t T);

// The compression branch: softmax(q . k_cmp / sqrt(d)) v_cmp over the visible compressed blocks,
// [B, Hq, T, d] in the reference dtype, computed tile_rows queries at a time (0: by
// query_tile_rows); a tile works only on the blocks complete by its last query (the causal
// triangle) and the backward recomputes each tile's probabilities, so what stays alive is
// O(T d). Differentiable in q, k_cmp and v_cmp.
torch::Tensor compressed_attention(const torch::Tensor& q, const torch::Tensor& k_cmp, const torch::Tensor& v_cmp,
                                   int64_t length, int64_t stride, int64_t tile_rows = 0);

// compressed_attention under model.attention.impl: unless impl is `reference`, CUDA inputs
// whose q is 16-bit (or fp32 under CUDA autocast to 16 bits) run LibTorch SDPA in that dtype
// with the block-causal rule as a boolean mask, tile_rows queries at a time (0: masks of about
// 2^26 elements; few tiles, since each tile's backward adds a full-size gradient of the
// compressed keys) (the fused attention keeps S and dP in fp32 and rounds P and dS to 16 bits,
// as the core kernels do); else the reference above. Returns the reference dtype;
// differentiable in q, k_cmp and v_cmp.
torch::Tensor attend_compressed(const torch::Tensor& q, const torch::Tensor& k_cmp, const torch::Tensor& v_cmp,
                                int64_t length, int64_t stride, const std::string& impl, int64_t tile_rows = 0);

// Scores over compressed blocks [..., n] -> scores over n_blocks selection blocks of `block`
// positions [..., n_blocks]: each selection block pools the compressed blocks overlapping it,
// by sum (NSA) or max (InfLLMv2; for length 32, stride 16, block 64 this is MiniCPM4's max-pool
// with kernel 5, stride 4, padding 1). `block` must be a multiple of `stride`.
enum class Pool { Sum, Max };
torch::Tensor pool_to_blocks(const torch::Tensor& cmp_scores, int64_t length, int64_t stride, int64_t block,
                             int64_t n_blocks, Pool pool);

// Which blocks each query reads, from scores [B, Hkv, T, n_blocks] (one choice per KV group):
// the top_k causal blocks (block start <= query) by score, where the first init_blocks blocks
// and the local_blocks blocks ending with the query's own always count as chosen, inside
// top_k. Ties go to the earlier block. Returns bool [B, Hkv, T, n_blocks].
// scores may hold only the rows of queries [t0, t0 + T).
torch::Tensor select_blocks(const torch::Tensor& scores, int64_t block, int64_t top_k, int64_t init_blocks,
                            int64_t local_blocks, int64_t t0 = 0);

// NSA's and InfLLMv2's selection end to end, without gradient: compressed_attention_probs of q
// over k_cmp, summed over each group's heads, pool_to_blocks onto selection blocks of `block`,
// select_blocks; as the kernels' per-row lists (BlockRows, no bias): the blocks each query
// chose strictly before its own. Built one (batch, KV group, query tile of tile_rows queries;
// 0: by query_tile_rows) at a time, so nothing of size T x n_blocks exists (what 128K needs).
// The own block is left implicit: the lists' readers always read it, so this is the selection
// exactly when every query chooses its own block (local_blocks >= 1 within top_k) or a window
// covers it.
struct SelectionKnobs {
  int64_t length, stride, block, top_k, init_blocks, local_blocks;
  Pool pool;
};
BlockRows select_rows_from_compressed(const torch::Tensor& q, const torch::Tensor& k_cmp, const SelectionKnobs& knobs,
                                      int64_t tile_rows = 0);

// The same lists under model.attention.impl: the selection kernels (kernels/block_select.h)
// unless impl is `reference` or they cannot run the call (see cuda::selection_kernel_dtype),
// else select_rows_from_compressed. The kernels take q in 16 bits (under autocast, cast to its
// dtype) and the scores fp32-accurate, so their choice differs from the reference's only where
// two blocks' scores tie within fp32 rounding.
BlockRows select_rows(const torch::Tensor& q, const torch::Tensor& k_cmp, const SelectionKnobs& knobs,
                      const std::string& impl);

}  // namespace st
