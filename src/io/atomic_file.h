// Files that are either absent, the old version, or the complete new version — never half
// written, even after a crash: the bytes go to a temp file in the same directory, which is
// fsynced and renamed over the target, then the directory is fsynced.
#pragma once
#include <cstddef>
#include <string>

#include "io/error.h"

namespace st {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // throws IoError
  ~AtomicFile();                          // removes the temp file unless commit() ran
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void commit();

 private:
  std::string path_, tmp_path_;
  int fd_ = -1;
};

void write_file_atomic(const std::string& path, const std::string& content);

// fsync a directory, making renames and creations inside it durable (best effort).
void sync_directory(const std::string& dir);

}  // namespace st
