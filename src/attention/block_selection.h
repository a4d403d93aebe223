// Block selection shared by NSA (DESIGN §2.3) and InfLLMv2 (§2.4): both score key blocks
// through attention over compressed keys, pool those scores onto selection blocks, and keep
// the top-k per query and KV group with forced initial and local blocks.
#pragma once
#include <torch/types.h>

namespace st {

// Complete blocks of `length` positions starting every `stride`: x [B, H, T, d] ->
// [B, H, n, length, d] with n = (T - length) / stride + 1 (0 when T < length).
torch::Tensor compression_blocks(const torch::Tensor& x, int64_t length, int64_t stride);

// Attention probabilities of q [B, Hq, T, d] over compressed keys k_cmp [B, Hkv, n, d]
// (block i covers positions [i stride, i stride + length)): softmax of q . k / sqrt(d) over
// the blocks that lie wholly at or before the query. Returns [B, Hkv, G, T, n]; a query that
// sees no complete block gets a zero row.
torch::Tensor compressed_attention_probs(const torch::Tensor& q, const torch::Tensor& k_cmp, int64_t length,
                                         int64_t stride);

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
torch::Tensor select_blocks(const torch::Tensor& scores, int64_t block, int64_t top_k, int64_t init_blocks,
                            int64_t local_blocks);

}  // namespace st
