// Deleting a directory tree without std::filesystem::remove_all: the PyPI libtorch exports
// its own copies of std::filesystem functions, and on the GPU machine (g++ 13) remove_all of
// a non-empty checkpoint folder bound to one of them and crashed (2026-11-24).
#pragma once
#include <string>

namespace st {

// Removes path and everything under it; symbolic links are removed, not followed. A missing
// path is not an error. Throws IoError naming the path when something could not be removed.
void remove_tree(const std::string& path);

}  // namespace st
