// Recomputing blocks in backward must give the same loss and gradients as keeping them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "small_model.h"
#include "train/activation_checkpoint.h"
#include "train/evaluate.h"
#include "train/runtime.h"

namespace st {
namespace {

TEST(ActivationCheckpointing, SameLossAndGradients) {
  Transformer model(test::small_model_config());
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

// The recompute runs on autograd's thread with bf16 autocast on. Autocast caches its bf16
// copies of fp32 weights per thread; a cache that outlives the step would hand the recompute
// the weights of an earlier step once the optimizer has changed them.
TEST(ActivationCheckpointing, RecomputeUnderAutocastSeesUpdatedWeights) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a CUDA GPU";
  Transformer model(test::small_model_config());
  model->init_weights(5);
  model->to(torch::kCUDA);
  Runtime rt;
  rt.device = torch::kCUDA;
  rt.device_kind = "cuda";
  rt.precision = "bf16";
  auto tokens = torch::randint(0, 61, {2, 64}, torch::kInt64).cuda();
  auto targets = torch::randint(0, 61, {2, 64}, torch::kInt64).cuda();
  auto grads = [&](const BlockRunner& runner) {
    model->zero_grad();
    torch::Tensor loss;
    {
      AutocastScope autocast(rt);
      loss = next_token_loss(model(tokens, runner), targets);
    }
    loss.backward();
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  for (int step = 0; step < 3; ++step) {
    auto plain = grads({});
    auto recomputed = grads(checkpointed_block);
    for (size_t i = 0; i < plain.size(); ++i) {
      const double err = (plain[i] - recomputed[i]).norm().item<double>() / (plain[i].norm().item<double>() + 1e-12);
      EXPECT_LT(err, 1e-2) << "step " << step << ", parameter " << i;
    }
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.05);  // what an optimizer step does
  }
}

}  // namespace
}  // namespace st
