// The error every file reader and writer in src/io throws: the message names the file and
// what is wrong with it.
#pragma once
#include <stdexcept>

namespace st {

struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace st
