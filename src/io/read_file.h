// A whole file as a string.
#pragma once
#include <string>

#include "io/error.h"

namespace st {

// Throws IoError naming the file when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace st
