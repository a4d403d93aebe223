#include "train/activation_checkpoint.h"

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

namespace st {
namespace {

struct BlockRecompute : torch::autograd::Function<BlockRecompute> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, Block block,
                               torch::Tensor cos, torch::Tensor sin) {
    // Runs under no-grad (autograd::Function guarantees it): nothing inside is saved.
    ctx->save_for_backward({x});
    // The model outlives every graph built from it, so a raw pointer is safe here.
    ctx->saved_data["block"] = int64_t(reinterpret_cast<intptr_t>(block.get()));
    ctx->saved_data["cos"] = cos;
    ctx->saved_data["sin"] = sin;
    // Backward runs on autograd's thread, where autocast (thread-local) is off: remember it.
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(at::kCUDA);
    return block(x, RopeTables{cos, sin});
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad_out) {
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    auto* block = reinterpret_cast<BlockImpl*>(intptr_t(ctx->saved_data["block"].toInt()));
    const bool autocast = ctx->saved_data["autocast"].toBool();
    torch::Tensor y;
    {
      torch::AutoGradMode grad(true);
      const bool was = at::autocast::is_autocast_enabled(at::kCUDA);
      at::autocast::set_autocast_enabled(at::kCUDA, autocast);
      y = block->forward(x, RopeTables{ctx->saved_data["cos"].toTensor(), ctx->saved_data["sin"].toTensor()});
      at::autocast::set_autocast_enabled(at::kCUDA, was);
      // Autocast caches its low-precision copies of the weights per thread; on this thread
      // nothing else would clear them, and after the next optimizer step they would be stale.
      if (autocast) at::autocast::clear_cache();
    }
    // Re-entrant backward: parameter gradients accumulate into .grad as usual.
    torch::autograd::backward({y}, {grad_out[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor checkpointed_block(Block& block, const torch::Tensor& x, const RopeTables& rope) {
  return BlockRecompute::apply(x, block, rope.cos, rope.sin);
}

}  // namespace st
