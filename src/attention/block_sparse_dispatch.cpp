#include "attention/block_sparse_dispatch.h"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "attention/block_sparse.h"
#include "config/recipe.h"
#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/block_sparse.h"
#endif

namespace st {

using torch::Tensor;

namespace {

bool half_precision(torch::ScalarType t) { return t == torch::kBFloat16 || t == torch::kHalf; }

#ifdef SPARSETRAIN_CUDA
constexpr int64_t kKernelBlock = 64;  // st::kernels::kBsaBlock
#endif

// Why the kernels cannot run this call, judged from shapes, dtypes and flags; "" when they can.
// `bias` stands for the selection (the dense bias or the lists' row_ptr; undefined: none).
std::string kernel_unsupported(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, int64_t block,
                               int64_t window) {
#ifndef SPARSETRAIN_CUDA
  return "this build has no CUDA kernels (LibTorch without CUDA)";
#else
  const int64_t Hq = q.size(1), Hkv = k.size(1), d = q.size(3);
  if (!q.is_cuda() || !k.is_cuda() || !v.is_cuda() || (bias.defined() && !bias.is_cuda()))
    return fmt::format("the attention inputs are on {}, not a CUDA device", q.device().str());
  if (d != 64 && d != 128) return fmt::format("head dim {} (the kernels take 64 or 128)", d);
  if (Hq % Hkv != 0 || Hq / Hkv > 16)
    return fmt::format("{} query heads over {} KV heads (the kernels take GQA groups of at most 16)", Hq, Hkv);
  if (!half_precision_dtype({q, k, v}))
    return fmt::format("q/k/v are {}/{}/{} outside CUDA autocast (the kernels take bf16 or fp16)",
                       c10::toString(q.scalar_type()), c10::toString(k.scalar_type()), c10::toString(v.scalar_type()));
  if (bias.defined() && block != kKernelBlock)
    return fmt::format("selection block {} (the kernels use {})", block, kKernelBlock);
  if (!bias.defined() && window <= 0) return "neither a bias nor a window: the reference attends nothing";
  if (!bias.defined() && window < kKernelBlock)
    return fmt::format("a sliding window of {} keys alone (the kernels read each query's own block of {} whole)",
                       window, kKernelBlock);
  return "";
#endif
}

#ifdef SPARSETRAIN_CUDA
struct BiasLists {
  cuda::BlockLists lists;
  Tensor entries;  // [nnz] the bias of each list entry, differentiable back into the dense bias
};

// The kernels' lists from the dense bias [B, Hkv, T, n_blocks], built where the bias lives:
// one entry per finite bias strictly before the row's own block. nullopt when some row's own
// block has a bias other than 0 (or is not read): the kernels always read the diagonal block
// at bias 0, so they would compute something else.
std::optional<BiasLists> lists_from_bias(const Tensor& bias, int64_t window) {
  const int64_t T = bias.size(2);
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(bias.device());
  auto own = torch::arange(T, ints).div(kKernelBlock, "floor").view({1, 1, T, 1});
  if ((bias.gather(3, own.expand({bias.size(0), bias.size(1), T, 1})) != 0).any().item<bool>()) return std::nullopt;
  auto e = list_entries(torch::isfinite(bias), 0, kKernelBlock);
  BiasLists r;
  r.lists.row_ptr = row_ptr_from_counts(e.counts);
  r.lists.blocks = e.blocks;
  r.lists.window = static_cast<int>(window);
  r.entries = bias.reshape({-1}).index_select(0, e.flat);
  return r;
}

Tensor run_kernels(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& entries,
                   const cuda::BlockLists& lists) {
  const auto dtype = *half_precision_dtype({q, k, v});
  return cuda::block_sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), entries, lists).to(q.scalar_type());
}
#endif

}  // namespace

std::optional<torch::ScalarType> half_precision_dtype(std::initializer_list<Tensor> inputs) {
  const auto t = inputs.begin()->scalar_type();
  if (half_precision(t) && std::all_of(inputs.begin(), inputs.end(), [&](const Tensor& x) { return x.scalar_type() == t; }))
    return t;
  if (at::autocast::is_autocast_enabled(at::kCUDA) && half_precision(at::autocast::get_autocast_dtype(at::kCUDA)))
    return at::autocast::get_autocast_dtype(at::kCUDA);
  return std::nullopt;
}

namespace {

void check_impl(const std::string& impl) {
  if (impl != "reference" && impl != "cuda" && impl != "auto")
    throw ConfigError(fmt::format("model.attention.impl: '{}' is not one of auto, reference, cuda", impl));
}

}  // namespace

Tensor attend_blocks(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, int64_t block,
                     int64_t window, const std::string& impl) {
  check_impl(impl);
  if (impl == "reference") return block_sparse_attention(q, k, v, bias, block, window);
  std::string why = kernel_unsupported(q, k, v, bias, block, window);
#ifdef SPARSETRAIN_CUDA
  if (why.empty()) {
    if (!bias.defined())
      return run_kernels(q, k, v, Tensor(),
                         cuda::lists_window(q.size(0), k.size(1), q.size(2), static_cast<int>(window), q.device()));
    if (auto l = lists_from_bias(bias, window)) return run_kernels(q, k, v, l->entries, l->lists);
    why = "some query does not read its own block at bias 0, which the kernels always do";
  }
#endif
  if (impl == "cuda") throw ConfigError(fmt::format("model.attention.impl: cuda cannot run this attention: {}", why));
  return block_sparse_attention(q, k, v, bias, block, window);
}

Tensor attend_rows(const Tensor& q, const Tensor& k, const Tensor& v, const BlockRows& rows, int64_t block,
                   int64_t window, const std::string& impl) {
  check_impl(impl);
  if (impl != "reference") {
    const std::string why = kernel_unsupported(q, k, v, rows.row_ptr, block, window);
#ifdef SPARSETRAIN_CUDA
    if (why.empty()) return run_kernels(q, k, v, rows.bias, {rows.row_ptr, rows.blocks, static_cast<int>(window)});
#endif
    if (impl == "cuda")
      throw ConfigError(fmt::format("model.attention.impl: cuda cannot run this attention: {}", why));
  }
  const int64_t T = q.size(2), B = q.size(0), Hkv = k.size(1);
  return block_sparse_attention(q, k, v, dense_bias(rows, B, Hkv, T, block), block, window);
}

Tensor row_ptr_from_counts(const Tensor& counts) {
  auto flat = counts.flatten().to(torch::kInt64);
  return torch::cat({torch::zeros({1}, flat.options()), flat.cumsum(0)});
}

ListEntries list_entries(const Tensor& reads, int64_t t0, int64_t block) {
  const int64_t n = reads.size(-2), n_blocks = reads.size(-1);
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(reads.device());
  auto own = torch::arange(t0, t0 + n, ints).div(block, "floor").view({n, 1});
  auto listed = reads & (torch::arange(n_blocks, ints).view({1, n_blocks}) < own);
  auto flat = listed.flatten().nonzero().flatten();
  return {listed.sum(-1), flat.remainder(n_blocks).to(torch::kInt32), flat};
}

int64_t attended_pairs(const BlockRows& rows, int64_t T, int64_t block, int64_t window, int64_t offset,
                       int64_t group) {
  if (offset >= T) return 0;
  const auto ints = rows.row_ptr.options();
  const int64_t n = T - offset;
  auto t = torch::arange(offset, T, ints), own_start = t - t.remainder(block);
  auto window_start = (t - window + 1).clamp_min(0);  // past t when window is 0
  // Each query reads its list's blocks whole, its own block's causal keys, and the window's
  // keys before its own block...
  auto starts = rows.row_ptr.narrow(0, 0, rows.row_ptr.numel() - 1).view({-1, T}).narrow(1, offset, n);
  auto ends = rows.row_ptr.narrow(0, 1, rows.row_ptr.numel() - 1).view({-1, T}).narrow(1, offset, n);
  auto pairs = ((ends - starts) * block).sum() +
               ((t - own_start + 1) + (own_start - window_start).clamp_min(0)).sum() * starts.size(0);
  // ... less the window's keys inside listed blocks, counted with them already. Those blocks
  // are the last of each (ascending) list: the window before the own block spans fewer than
  // window keys, so at most window / block + 2 blocks.
  const int64_t reach = window > 0 && rows.blocks.numel() > 0 ? window / block + 2 : 0;
  for (int64_t i = 1; i <= reach; ++i) {
    auto entry = ends - i;
    auto first_key = rows.blocks.index_select(0, entry.clamp_min(0).flatten()).view(entry.sizes()).to(torch::kInt64) * block;
    auto inside = (first_key + block - torch::maximum(first_key, window_start)).clamp_min(0);
    pairs -= torch::where(entry >= starts, inside, torch::zeros_like(inside)).sum();
  }
  return pairs.item<int64_t>() * group;
}

Tensor dense_bias(const BlockRows& rows, int64_t B, int64_t Hkv, int64_t T, int64_t block) {
  const int64_t n_blocks = (T + block - 1) / block, n_rows = B * Hkv * T;
  const auto ints = rows.row_ptr.options();
  auto row = torch::repeat_interleave(torch::arange(n_rows, ints), rows.row_ptr.diff());
  auto flat = row * n_blocks + rows.blocks.to(torch::kInt64);
  const auto dtype = rows.bias.defined() ? rows.bias.scalar_type() : torch::kFloat32;
  auto values = rows.bias.defined() ? rows.bias : torch::zeros({flat.numel()}, ints.dtype(dtype));
  auto dense = torch::full({n_rows * n_blocks}, -std::numeric_limits<double>::infinity(), ints.dtype(dtype))
                   .index_put({flat}, values)
                   .view({B, Hkv, T, n_blocks});
  auto own = torch::arange(T, ints).div(block, "floor").view({T, 1}) == torch::arange(n_blocks, ints).view({1, n_blocks});
  return torch::where(own, torch::zeros({}, dense.options()), dense);
}

}  // namespace st
