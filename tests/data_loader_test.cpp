#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "data/loader.h"
#include "oracle.h"

namespace st {
namespace {

// A shard whose windows are recognizable: token i is i % 60000, so a window's first token
// tells which window it is.
std::shared_ptr<const TokenShard> numbered_shard(const test::TempDir& dir, size_t n_tokens) {
  std::vector<uint32_t> tokens(n_tokens);
  for (size_t i = 0; i < n_tokens; ++i) tokens[i] = uint32_t(i % 60000);
  write_shard(dir.file("n.bin"), tokens, 60000);
  return std::make_shared<const TokenShard>(dir.file("n.bin"));
}

int64_t window_of(const Batch& b, int64_t row, int64_t seq_len) {
  return b.inputs[row][0].item<int64_t>() / (seq_len + 1);
}

TEST(Loader, InputsAndTargetsAreShiftedWindows) {
  test::TempDir dir;
  auto shard = numbered_shard(dir, 1000);
  Loader loader(shard, {/*seq_len=*/9, /*micro_batch=*/3, 1, 1, 0, 1});
  EXPECT_EQ(loader.windows(), 100);
  Batch b = loader.batch(0, 0);
  ASSERT_EQ(b.inputs.sizes(), (std::vector<int64_t>{3, 9}));
  ASSERT_EQ(b.targets.sizes(), (std::vector<int64_t>{3, 9}));
  EXPECT_EQ(b.inputs.scalar_type(), torch::kInt64);
  for (int64_t r = 0; r < 3; ++r) {
    int64_t start = b.inputs[r][0].item<int64_t>();
    EXPECT_EQ(start % 10, 0);  // windows start at multiples of seq_len + 1
    EXPECT_TRUE(torch::equal(b.inputs[r], torch::arange(start, start + 9)));
    EXPECT_TRUE(torch::equal(b.targets[r], torch::arange(start + 1, start + 10)));
  }
}

TEST(Loader, SameCoordinatesGiveSameBatch) {
  test::TempDir dir;
  auto shard = numbered_shard(dir, 5000);
  LoaderOptions opt{15, 4, 2, /*seed=*/42, /*rank=*/1, /*world_size=*/2};
  Loader a(shard, opt), b(shard, opt);
  for (int64_t step : {0, 3, 17, 1000})
    for (int64_t micro : {0, 1}) EXPECT_TRUE(torch::equal(a.batch(step, micro).inputs, b.batch(step, micro).inputs));
  opt.seed = 43;
  Loader c(shard, opt);
  EXPECT_FALSE(torch::equal(a.batch(0, 0).inputs, c.batch(0, 0).inputs));
  EXPECT_FALSE(torch::equal(a.batch(0, 0).inputs, a.batch(0, 1).inputs));
}

TEST(Loader, RanksAreDisjointWithinAStep) {
  test::TempDir dir;
  auto shard = numbered_shard(dir, 64 * 8 * 20);
  const int64_t world = 4, seq_len = 63;
  for (int64_t step = 0; step < 4; ++step) {
    std::set<int64_t> seen;
    for (int64_t rank = 0; rank < world; ++rank) {
      Loader loader(shard, {seq_len, 2, 2, 7, rank, world});
      for (int64_t micro = 0; micro < 2; ++micro) {
        Batch b = loader.batch(step, micro);
        for (int64_t r = 0; r < 2; ++r) EXPECT_TRUE(seen.insert(window_of(b, r, seq_len)).second);
      }
    }
    EXPECT_EQ(seen.size(), size_t(world * 2 * 2));
  }
}

// One epoch visits every window exactly once, for window counts that are not powers of
// anything; the next epoch is a different order of the same windows.
TEST(Loader, EachEpochVisitsEveryWindowOnce) {
  test::TempDir dir;
  for (int64_t n_windows : {1, 2, 3, 7, 64, 97, 250}) {
    const int64_t seq_len = 3;
    auto shard = numbered_shard(dir, size_t(n_windows * (seq_len + 1) + 2));  // a partial window at the end
    Loader loader(shard, {seq_len, 1, 1, 5, 0, 1});
    ASSERT_EQ(loader.windows(), n_windows);
    std::vector<int64_t> first, second;
    for (int64_t step = 0; step < n_windows; ++step) first.push_back(window_of(loader.batch(step, 0), 0, seq_len));
    for (int64_t step = n_windows; step < 2 * n_windows; ++step)
      second.push_back(window_of(loader.batch(step, 0), 0, seq_len));
    std::set<int64_t> a(first.begin(), first.end()), b(second.begin(), second.end());
    EXPECT_EQ(int64_t(a.size()), n_windows);
    EXPECT_EQ(a, b);
    EXPECT_EQ(*a.rbegin(), n_windows - 1);
    if (n_windows >= 7) {
      EXPECT_NE(first, second) << n_windows;
      std::vector<int64_t> identity(first.size());
      std::iota(identity.begin(), identity.end(), 0);
      EXPECT_NE(first, identity) << n_windows;
    }
  }
}

TEST(Loader, EvalBatchesAreTheFirstWindowsInOrder) {
  test::TempDir dir;
  auto shard = numbered_shard(dir, 100);
  Batch b = eval_batch(*shard, 9, 2, 1);  // windows 2 and 3
  EXPECT_EQ(b.inputs[0][0].item<int64_t>(), 20);
  EXPECT_EQ(b.inputs[1][0].item<int64_t>(), 30);
  EXPECT_EQ(b.targets[1][8].item<int64_t>(), 39);
  EXPECT_THROW(eval_batch(*shard, 9, 2, 5), DataError);  // would need windows 10 and 11
}

TEST(Loader, TooShortShardIsAnError) {
  test::TempDir dir;
  auto shard = numbered_shard(dir, 10);
  EXPECT_THROW(Loader(shard, {10, 1, 1, 0, 0, 1}), DataError);
  EXPECT_THROW(Loader(shard, {4, 1, 1, 0, 2, 2}), DataError);  // rank outside the world
}

}  // namespace
}  // namespace st
