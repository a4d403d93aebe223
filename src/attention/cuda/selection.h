// LibTorch face of the selection kernels (kernels/block_select.h): NSA's and InfLLMv2's block
// selection as the core kernels' per-row lists. Compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/types.h>

#include <optional>

#include "attention/block_selection.h"
#include "block_sparse_attention.h"  // kernels::BsaPath

namespace st::cuda {

// The 16-bit dtype the selection kernels would take q in for this call (q's own, or CUDA
// autocast's when q is fp32), or nullopt when they cannot run it: CPU tensors, head dim other
// than 64/128, groups over 64 heads, a block that is not a multiple of the stride or whose
// stride multiple does not divide 64, length - 1 over 16 strides.
std::optional<torch::ScalarType> selection_kernel_dtype(const torch::Tensor& q, const torch::Tensor& k_cmp,
                                                        const SelectionKnobs& knobs);

// select_rows_from_compressed (block_selection.h) on the GPU, q cast to `dtype`: per (batch,
// KV group) and chunk of query rows, block_scores then select_top_k, then the entries gathered
// (one host read of their number per chunk). Chunks of chunk_rows rows (0: 2^26 / n_blocks, so
// that scores for at most 2^26 (row, block) pairs exist at a time).
BlockRows select_rows(const torch::Tensor& q, const torch::Tensor& k_cmp, const SelectionKnobs& knobs,
                      torch::ScalarType dtype, int64_t chunk_rows = 0);

// The two stages on their own, over the whole sequence at once (for tests): the pooled block
// scores [B, Hkv, T, n_blocks] (the reference's pool_to_blocks of the group-summed
// probabilities), and the lists of the top-k over given scores (the reference's select_blocks
// then list_entries). path kPortable: the scores kernel's mma.sync form on a Hopper too.
torch::Tensor block_scores(const torch::Tensor& q, const torch::Tensor& k_cmp, const SelectionKnobs& knobs,
                           torch::ScalarType dtype, st::kernels::BsaPath path = st::kernels::BsaPath::kAuto);
BlockRows rows_from_scores(const torch::Tensor& scores, const SelectionKnobs& knobs);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
