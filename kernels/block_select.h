// NSA's and InfLLMv2's block selection in two kernels (DESIGN §2.3, §2.4, §3), for one
// (batch, KV group) and a range of query rows at a time:
//   1. block_scores: the softmax of q . k_cmp / sqrt(d) over each query's visible compressed
//      blocks, summed over the group's G heads and pooled (sum or max) onto selection blocks,
//      in two passes over the compressed keys per query tile (row max and sum, then the
//      probabilities): the per-head probabilities never reach memory. The logits are
//      fp32-accurate: k_cmp (fp32) enters the bf16/fp16 MMAs as its 16-bit high part plus its
//      rounding residual (~16 mantissa bits), and q is exact in 16 bits.
//   2. select_top_k: per query, the top_k causal blocks by score with forced initial and local
//      blocks (ties to the earlier block), as the kernels' list entries (blocks strictly before
//      the query's own, ascending).
// The ATen reference is src/attention/block_selection.cpp (select_tile); the semantics match
// it up to fp32 rounding of the scores.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#include "block_sparse_attention.h"  // BsaPath, kBsaBadShape

namespace st::kernels {

enum class SelectPool { kSum, kMax };

struct BlockScoreArgs {
  const void* q;     // [B, Hq, T, d] bf16 (fp16 when fp16), contiguous
  bool fp16;
  const void* k_hi;  // [B, Hkv, n_cmp, d] in q's dtype: k_cmp rounded, where compressed block i
  const void* k_lo;  // covers keys [i stride, i stride + length); and k_cmp - k_hi rounded
  float* scores;       // out: [n_rows, n_blocks] for queries t_first .. t_first + n_rows of (b, hkv)
  int64_t T, t_first, n_rows, n_cmp;
  int64_t b, hkv, Hq, Hkv, d;
  int length, stride, block, n_blocks;
  SelectPool pool;
  BsaPath path = BsaPath::kAuto;  // the logits' matmul on wgmma (Hopper) or mma.sync
};
// Supported: d 64 or 128, G = Hq / Hkv <= 64, block a multiple of stride with 64 a multiple of
// block / stride, (length - 1) / stride <= 16. Returns 0 or a cudaError_t / kBsaBadShape.
int block_scores(const BlockScoreArgs& a, cudaStream_t stream);

struct TopKArgs {
  const float* scores;  // [n_rows, n_blocks] as block_scores writes them
  int32_t* ids;         // out: [n_rows, cap]; row i's entries ascending in ids[i cap .. i cap + counts[i])
  int64_t* counts;      // out: [n_rows]
  int64_t t_first, n_rows;
  int n_blocks, cap, block, top_k, init_blocks, local_blocks;  // cap >= min(top_k, n_blocks)
};
int select_top_k(const TopKArgs& a, cudaStream_t stream);

}  // namespace st::kernels
