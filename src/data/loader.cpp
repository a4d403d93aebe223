#include "data/loader.h"

#include <fmt/format.h>

#include <vector>

#include "data/splitmix.h"

namespace st {

namespace {

// A pseudo-random bijection of [0, n) keyed by `key`, computed pointwise with no table: a
// four-round Feistel network permutes the smallest even-bit-width domain 2^(2h) >= n, and
// cycle walking (re-applying it until the value lands below n) restricts that to [0, n).
// The domain is under 4n, so the walk takes fewer than four steps on average.
uint64_t permute(uint64_t i, uint64_t n, uint64_t key) {
  if (n <= 1) return 0;
  int half = 1;
  while ((1ull << (2 * half)) < n) ++half;
  const uint64_t mask = (1ull << half) - 1;
  do {
    uint64_t left = i >> half, right = i & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      uint64_t f = splitmix64(right ^ splitmix64(key + round)) & mask;
      uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    i = (left << half) | right;
  } while (i >= n);
  return i;
}

void fill_row(const TokenShard& shard, int64_t window, int64_t seq_len, int64_t* row) {
  shard.read(uint64_t(window) * uint64_t(seq_len + 1), uint64_t(seq_len + 1), row);
}

// Windows [rows] of seq_len + 1 tokens become inputs and next-token targets.
Batch to_batch(const torch::Tensor& windows, int64_t seq_len) {
  return {windows.narrow(1, 0, seq_len).contiguous(), windows.narrow(1, 1, seq_len).contiguous()};
}

}  // namespace

Loader::Loader(std::shared_ptr<const TokenShard> shard, LoaderOptions opt)
    : shard_(std::move(shard)), opt_(opt) {
  if (opt_.seq_len < 1 || opt_.micro_batch < 1 || opt_.grad_accum < 1 || opt_.world_size < 1 ||
      opt_.rank < 0 || opt_.rank >= opt_.world_size)
    throw DataError(fmt::format("loader: bad options seq_len {} micro_batch {} grad_accum {} "
                                "rank {} world_size {}",
                                opt_.seq_len, opt_.micro_batch, opt_.grad_accum, opt_.rank,
                                opt_.world_size));
  n_windows_ = int64_t(shard_->size() / uint64_t(opt_.seq_len + 1));
  if (n_windows_ == 0)
    throw DataError(fmt::format("{}: {} tokens is fewer than one window of seq_len + 1 = {}",
                                shard_->path(), shard_->size(), opt_.seq_len + 1));
}

Batch Loader::batch(int64_t step, int64_t micro) const {
  const int64_t len = opt_.seq_len + 1;
  torch::Tensor windows = torch::empty({opt_.micro_batch, len}, torch::kInt64);
  const int64_t first =
      ((step * opt_.grad_accum + micro) * opt_.world_size + opt_.rank) * opt_.micro_batch;
  for (int64_t row = 0; row < opt_.micro_batch; ++row) {
    const uint64_t g = uint64_t(first + row);
    const uint64_t epoch = g / uint64_t(n_windows_);
    const uint64_t key = splitmix64(splitmix64(uint64_t(opt_.seed)) ^ epoch);
    const int64_t window = int64_t(permute(g % uint64_t(n_windows_), uint64_t(n_windows_), key));
    fill_row(*shard_, window, opt_.seq_len, windows.data_ptr<int64_t>() + row * len);
  }
  return to_batch(windows, opt_.seq_len);
}

Batch eval_batch(const TokenShard& shard, int64_t seq_len, int64_t micro_batch, int64_t index) {
  const int64_t len = seq_len + 1;
  const int64_t available = int64_t(shard.size() / uint64_t(len));
  if (seq_len < 1 || micro_batch < 1 || index < 0 || (index + 1) * micro_batch > available)
    throw DataError(fmt::format("{}: eval batch {} of {} x {} tokens needs {} windows; the shard "
                                "has {}",
                                shard.path(), index, micro_batch, len, (index + 1) * micro_batch,
                                available));
  torch::Tensor windows = torch::empty({micro_batch, len}, torch::kInt64);
  for (int64_t row = 0; row < micro_batch; ++row)
    fill_row(shard, index * micro_batch + row, seq_len, windows.data_ptr<int64_t>() + row * len);
  return to_batch(windows, seq_len);
}

}  // namespace st
