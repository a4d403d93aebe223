// model.attention.impl for the block-sparse core: one entry point that runs either the ATen
// reference (block_sparse.h) or the CUDA kernels (attention/cuda/block_sparse.h) on the same
// dense-bias description, so the variants build one selection and never see the kernel's
// list format.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>

namespace st {

// The 16-bit dtype the fast paths compute in for these inputs: theirs when they all are one
// 16-bit type; under CUDA autocast to a 16-bit type, that type (the residual stream is fp32,
// so q/k/v can reach the variant in fp32 while autocast says the matmuls run in bf16); else
// nullopt.
std::optional<torch::ScalarType> half_precision_dtype(std::initializer_list<torch::Tensor> inputs);

// Same contract as block_sparse_attention(q, k, v, bias, block, window) (block_sparse.h), and
// the same output dtype (q's). impl is model.attention.impl:
//   reference  the ATen reference.
//   cuda       the kernels; a call they cannot express throws ConfigError naming
//              model.attention.impl and the reason.
//   auto       the kernels when they can express the call, else the reference.
// The kernels express: CUDA tensors; head dim 64 or 128; Hq / Hkv <= 16; q/k/v in bf16/fp16,
// or fp32 under CUDA autocast to bf16/fp16 (cast to the autocast dtype for the kernel); and
// either a bias with block 64 and bias 0 on every query's own (diagonal) block, which the
// kernel always reads with the causal mask, with or without a window (one softmax over the
// selected blocks and the window's keys, InfLLMv2), or no bias with a window of at least 64
// keys (which covers the own block's causal keys). On the kernel path the diagonal entries of
// the bias are constants: they get no gradient (the reference gives them one).
torch::Tensor attend_blocks(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& bias, int64_t block, int64_t window, const std::string& impl);

// A selection as per-row lists, the kernels' own format, for selections built one query tile
// at a time (nothing of size T x n_blocks per query head, nor per KV group). Row
// r = (b * Hkv + hkv) * T + t lists the blocks it reads strictly before its own, ascending, in
// blocks[row_ptr[r] .. row_ptr[r + 1]), with bias[i] on block blocks[i] (undefined: all 0).
// The row's own block is always read, at bias 0, with the causal mask.
struct BlockRows {
  torch::Tensor row_ptr;  // [B * Hkv * T + 1] int64
  torch::Tensor blocks;   // [nnz] int32
  torch::Tensor bias;     // [nnz] float, differentiable, or undefined
};

// The lists' entries of a selection `reads` [..., n, n_blocks] (true: the query reads the
// block) of the queries at positions t0 .. t0 + n: the blocks strictly before each query's own
// (the lists leave that one implicit). counts [..., n] per query; blocks [nnz] int32, the
// lists' blocks row after row; flat: the entries' indices into reads.flatten(), ascending
// (the lists' order), to gather per-entry values with.
struct ListEntries {
  torch::Tensor counts, blocks, flat;
};
ListEntries list_entries(const torch::Tensor& reads, int64_t t0, int64_t block);

// BlockRows::row_ptr from per-row entry counts (any shape, row order): 0, then their running sum.
torch::Tensor row_ptr_from_counts(const torch::Tensor& counts);

// attend_blocks over such lists, plus the keys t - window < j <= t of each query (window 0:
// none). The reference path expands the lists into the dense bias.
torch::Tensor attend_rows(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const BlockRows& rows, int64_t block, int64_t window, const std::string& impl);

// attended_pairs (block_sparse.h) of such lists and window: the listed blocks lie wholly
// before their row, whose own block's causal keys are always read.
int64_t attended_pairs(const BlockRows& rows, int64_t T, int64_t block, int64_t window, int64_t offset,
                       int64_t group);

// The dense bias [B, Hkv, T, ceil(T / block)] the lists describe: the entries' bias on listed
// blocks, 0 on each row's own block, -inf elsewhere. Differentiable in rows.bias.
torch::Tensor dense_bias(const BlockRows& rows, int64_t B, int64_t Hkv, int64_t T, int64_t block);

}  // namespace st
