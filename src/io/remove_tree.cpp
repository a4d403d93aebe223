#include "io/remove_tree.h"

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "io/error.h"

namespace st {
namespace {

// nftw's callback cannot throw: a non-zero return (the errno) stops the walk and is returned.
int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  const int rc = type == FTW_DP ? ::rmdir(path) : ::unlink(path);
  return rc != 0 && errno != ENOENT ? errno : 0;
}

}  // namespace

void remove_tree(const std::string& path) {
  struct stat info;
  if (::lstat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return;
    throw IoError(fmt::format("{}: cannot remove: {}", path, std::strerror(errno)));
  }
  // Depth first (a directory after its entries), never following links.
  const int rc = ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  if (rc != 0)
    throw IoError(fmt::format("{}: cannot remove everything under it: {}", path, std::strerror(rc > 0 ? rc : errno)));
}

}  // namespace st
