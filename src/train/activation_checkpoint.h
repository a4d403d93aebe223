// Activation checkpointing: run a block without keeping its activations and recompute
// them during backward. The model stays unaware; the trainer passes this as its BlockRunner.
#pragma once
#include "model/transformer.h"

namespace st {

torch::Tensor checkpointed_block(Block& block, const torch::Tensor& x, const RopeTables& rope);

}  // namespace st
