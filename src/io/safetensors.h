// safetensors files: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"format": "pt", ...}}, then the tensor bytes (offsets relative to the
// end of the header, contiguous, non-overlapping, covering the whole data section).
// Dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
//
// Sharded form (Hugging Face layout): a directory holding model-00001-of-0000N.safetensors
// ... and model.safetensors.index.json {"metadata": {"total_size": bytes},
// "weight_map": {"name": "model-0000k-of-0000N.safetensors", ...}}, or a single
// model.safetensors.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>

#include "io/error.h"

namespace st {

using TensorMap = std::map<std::string, torch::Tensor>;

// Writes tensors (moved to CPU, made contiguous) atomically: temp file, fsync, rename.
// Metadata always carries "format" ("pt" unless the caller gives another).
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads every tensor into CPU memory. Malformed files (truncated, bad offsets, unknown
// dtype, oversized header, ...) throw IoError naming the file and the defect.
TensorMap load_safetensors(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr);

// Writes dir/model.safetensors when everything fits in max_shard_bytes, otherwise
// dir/model-0000k-of-0000N.safetensors shards (a tensor larger than the limit gets a shard
// of its own) and then the index. Creates dir. Every file is written atomically.
void save_safetensors_sharded(const std::string& dir, const TensorMap& tensors,
                              int64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata = {});

// Reads dir/model.safetensors.index.json and its shards when the index exists, otherwise
// dir/model.safetensors. The index and the shards must agree exactly on which tensor lives
// where. Metadata is that of the first shard.
TensorMap load_safetensors_dir(const std::string& dir,
                               std::map<std::string, std::string>* metadata = nullptr);

}  // namespace st
