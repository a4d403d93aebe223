// model.attention.impl for the block-sparse core: one entry point that runs either the ATen
// reference (block_sparse.h) or the CUDA kernels (attention/cuda/block_sparse.h) on the same
// dense-bias description, so the variants build one selection and never see the kernel's
// list format.
#pragma once
#include <torch/types.h>

#include <string>

namespace st {

// Same contract as block_sparse_attention(q, k, v, bias, block, window) (block_sparse.h), and
// the same output dtype (q's). impl is model.attention.impl:
//   reference  the ATen reference.
//   cuda       the kernels; a call they cannot express throws ConfigError naming
//              model.attention.impl and the reason.
//   auto       the kernels when they can express the call, else the reference.
// The kernels express: CUDA tensors; head dim 64 or 128; Hq / Hkv <= 16; q/k/v in bf16/fp16,
// or fp32 under CUDA autocast to bf16/fp16 (cast to the autocast dtype for the kernel); and
// either a bias with block 64, window 0 and bias 0 on every query's own (diagonal) block,
// which the kernel always reads with the causal mask, or no bias with window > 0. A bias
// together with a window (one softmax over selected blocks and window keys, InfLLMv2) is not
// expressible. On the kernel path the diagonal entries of the bias are constants: they get
// no gradient (the reference gives them one).
torch::Tensor attend_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& bias, int64_t block, int64_t window, const std::string& impl);

}  // namespace st
