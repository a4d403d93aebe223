// LibTorch face of DashAttention's chunk pooling kernels (kernels/dash_pool.h): the chunk
// summaries as one differentiable op. Compiled only with SPARSETRAIN_CUDA.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/types.h>

namespace st::cuda {

// Whether pool_chunks takes these keys [B, H, T, d]: CUDA, bf16, fp16 or fp32, d 64 or 128,
// unit stride over d.
bool dash_pooling_runs(const torch::Tensor& k);

// k [B, H, T, d] (unit stride over d) and pool_query [H, d] -> kbar [B, H, T / chunk, d] fp32:
// each complete chunk's keys pooled by softmax(pool_query . k / sqrt(d)) in fp32, as
// DashAttention::chunk_summaries does in ATen; differentiable in k and pool_query.
torch::Tensor pool_chunks(const torch::Tensor& k, const torch::Tensor& pool_query, int64_t chunk);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
