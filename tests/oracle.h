// Helpers for tests that compare against Python reference libraries (test-time oracles):
// a scratch directory per test and a way to run tests/oracles/*.py with the venv python.
#pragma once
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "io/remove_tree.h"

namespace st::test {

// A fresh directory under the system temp dir, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            (std::string("sparsetrain-") + info->test_suite_name() + "-" + info->name() + "-" +
             std::to_string(::getpid()));
    remove_tree(path_.string());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    try {
      remove_tree(path_.string());
    } catch (const std::exception&) {  // a destructor must not throw; a leftover temp dir is harmless
    }
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Runs `python tests/oracles/<script> <args>` with $SPARSETRAIN_PYTHON (else python3) and
// returns its exit status. The oracles exit non-zero, with a message, when their Python
// modules are missing: tools/test.sh installs them, so a missing module is a failure.
inline int run_oracle(const std::string& script, const std::string& args) {
  const char* py = std::getenv("SPARSETRAIN_PYTHON");
  std::string cmd = std::string(py && *py ? py : "python3") + " " + SPARSETRAIN_SOURCE_DIR +
                    "/tests/oracles/" + script + " " + args;
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

}  // namespace st::test
