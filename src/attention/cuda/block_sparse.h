// LibTorch face of the block-sparse attention kernels (kernels/block_sparse_attention.h):
// list builders, forward/backward on tensors, and an autograd function. Compiled only with
// SPARSETRAIN_CUDA; callers check torch::cuda::is_available() before use.
#pragma once
#ifdef SPARSETRAIN_CUDA
#include <torch/torch.h>

#include <cstdint>

#include "block_sparse_attention.h"

namespace st::cuda {

// Per-(batch, kv-head, query position) lists of selected KV blocks (64 keys each), strictly
// before the query's own block, sorted ascending; the diagonal block is always attended with
// the causal mask, and the window's keys t - window < key <= t on top (one softmax over the
// union). See kernels/block_sparse_attention.h.
struct BlockLists {
  torch::Tensor row_ptr;  // [B*Hkv*T + 1] int64
  torch::Tensor blocks;   // [nnz] int32
  int window = 0;         // sliding window in keys; 0: none
};

// From top-k style ids [B, Hkv, T, k] int32 (-1 = padding; out-of-range entries and
// duplicates are dropped). One device->host read of nnz.
BlockLists lists_from_topk(const torch::Tensor& ids);
// Sliding window of `window` keys ending at the query: empty lists plus the window.
BlockLists lists_window(int64_t B, int64_t Hkv, int64_t T, int window, torch::Device device);

// Plan (tile unions + reverse index) for these lists and shapes; reusable by forward and
// backward of one call.
struct Plan {
  torch::Tensor workspace;        // uint8 on the device, owns the plan's arrays
  st::kernels::BsaPlan view;      // pointers into workspace
  st::kernels::BsaShape shape;
};
Plan make_plan(const BlockLists& lists, int64_t B, int64_t Hq, int64_t Hkv, int64_t T, int64_t d);

// q [B,Hq,T,d], k/v [B,Hkv,T,d] (bf16/fp16, contiguous); bias [nnz] fp32 or undefined.
// path: kPortable runs the sm_80 (mma.sync) kernels on a Hopper too, for tests.
struct Forward {
  torch::Tensor o, lse;
};
Forward forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                const torch::Tensor& bias, const BlockLists& lists, const Plan& plan, double scale,
                st::kernels::BsaPath path = st::kernels::BsaPath::kAuto);

struct Grads {
  torch::Tensor dq, dk, dv, dbias;  // dbias undefined when want_dbias is false
};
Grads backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
               const torch::Tensor& o, const torch::Tensor& lse, const torch::Tensor& dout,
               const torch::Tensor& bias, const BlockLists& lists, const Plan& plan,
               double scale, bool want_dbias, st::kernels::BsaPath path = st::kernels::BsaPath::kAuto);

// Differentiable in q, k, v and bias (when defined). scale <= 0 means 1/sqrt(d). d(bias) is
// exact to fp32 rounding (bsa_backward's delta).
torch::Tensor block_sparse_attention(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& bias,
                                     const BlockLists& lists, double scale = 0.0);

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
