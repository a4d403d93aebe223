#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Two cores: one intra-op thread per test process keeps ctest -j2 from oversubscribing,
  // and makes CPU results independent of the machine's core count.
  torch::set_num_threads(1);
  return RUN_ALL_TESTS();
}
