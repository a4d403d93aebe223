// The small model the in-process gradient tests build: 3 blocks, GQA 4/2, vocabulary 61.
#pragma once
#include "config/recipe.h"

namespace st::test {

inline ModelConfig small_model_config() {
  ModelConfig c;
  c.vocab_size = 61;
  c.dim = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  return c;
}

}  // namespace st::test
