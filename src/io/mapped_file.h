// A whole file mapped read-only into memory, for readers that validate a header and then
// copy out only the bytes they need.
#pragma once
#include <cstddef>
#include <string>

#include "io/error.h"

namespace st {

class MappedFile {
 public:
  // Throws IoError naming the file when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;  // null for an empty file
  size_t size_ = 0;
};

}  // namespace st
