// DashAttention's chunk summaries (DESIGN §2.2, step 1) in one pass over the keys, forward and
// backward: kbar_c = sum_j w_j k_j with w = softmax_j(h . k_j / sqrt(d)) over the C keys of
// each complete chunk c, h the KV head's pooling query. One warp per chunk, fp32 arithmetic on
// keys of any 16- or 32-bit float type; src/attention/dash.cpp's ATen chain is the reference.
// Plain C++ launchers (raw device pointers, a stream); src/attention/cuda/dash_pooling.h wraps
// them for LibTorch.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#include "block_sparse_attention.h"  // kBsaBadShape
#include "dash_route.h"              // DashQType

namespace st::kernels {

struct DashPoolArgs {
  // Keys [B, H, T, d]: key t of head h of batch b at k + b * batch_stride + h * head_stride +
  // t * row_stride, d contiguous elements of `dtype`. Chunks c < n = T / chunk are pooled.
  const void* k;
  int64_t batch_stride, head_stride, row_stride;
  DashQType dtype;
  int64_t B, H, T, n, chunk, d;
  const float* pool_query;  // [H, d] fp32
};

// kbar [B, H, n, d] fp32 (contiguous) and lse [B, H, n]: each chunk's log sum exp of its
// scores h . k_j / sqrt(d), for the backward.
int dash_pool_forward(const DashPoolArgs& a, float* kbar, float* lse, cudaStream_t stream);

// From d kbar [B, H, n, d] fp32 (contiguous) and the forward's kbar and lse: dk [B, H, T, d]
// (k's type, contiguous; rows of complete chunks written, the rest untouched) and
// d pool_query [H, d] fp32, added to (atomics). Both return 0, a cudaError_t, or kBsaBadShape (d 64 or 128 here).
int dash_pool_backward(const DashPoolArgs& a, const float* kbar, const float* lse, const float* d_kbar, void* dk,
                       float* d_pool_query, cudaStream_t stream);

}  // namespace st::kernels
