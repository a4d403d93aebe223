// Recomputing blocks in backward must give the same loss and gradients as keeping them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "train/activation_checkpoint.h"
#include "train/evaluate.h"

namespace st {
namespace {

TEST(ActivationCheckpointing, SameLossAndGradients) {
  ModelConfig c;
  c.vocab_size = 61;
  c.dim = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  Transformer model(c);
  model->init_weights(5);
  auto tokens = torch::randint(0, 61, {2, 17}, torch::kInt64);
  auto targets = torch::randint(0, 61, {2, 17}, torch::kInt64);

  auto grads = [&](const BlockRunner& runner) {
    model->zero_grad();
    auto loss = next_token_loss(model(tokens, runner), targets);
    loss.backward();
    std::vector<torch::Tensor> g{loss.detach()};
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  auto plain = grads({});
  auto recomputed = grads(checkpointed_block);
  ASSERT_EQ(plain.size(), recomputed.size());
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(torch::allclose(plain[i], recomputed[i], 1e-6, 1e-7)) << i;
  EXPECT_GT(recomputed[1].abs().sum().item<double>(), 0);
}

}  // namespace
}  // namespace st
