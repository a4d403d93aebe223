// Moving model weights in and out of name -> tensor maps (checkpoints, imports).
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/transformer.h"

namespace st {

// Parameters by name, as fp32 CPU copies.
TensorMap model_state(Transformer& model);

// Copies `weights` into the model. Every tensor must match a parameter by name and shape.
// Parameters missing from `weights` are an error, except attention-variant parameters
// (".variant.") when allow_new_variant_params is set: those keep their initialisation and
// are returned, so a dense checkpoint can start a sparse-variant run.
std::vector<std::string> load_model_state(Transformer& model, const TensorMap& weights,
                                          bool allow_new_variant_params, const std::string& origin);

}  // namespace st
