// safetensors files: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"format": "pt", ...}}, then the tensor bytes (offsets relative to the
// end of the header, contiguous, non-overlapping, covering the whole data section).
#pragma once
#include <torch/types.h>

#include <map>
#include <stdexcept>
#include <string>

namespace st {

struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using TensorMap = std::map<std::string, torch::Tensor>;

// Writes tensors (moved to CPU, made contiguous) atomically: temp file, fsync, rename.
// Metadata always carries "format": "pt".
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads every tensor into CPU memory. Malformed files (truncated, bad offsets, unknown
// dtype, oversized header, ...) throw IoError naming the file and the defect.
TensorMap load_safetensors(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr);

}  // namespace st
