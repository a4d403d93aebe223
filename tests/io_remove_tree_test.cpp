#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/remove_tree.h"
#include "oracle.h"

namespace st {
namespace {

namespace fs = std::filesystem;

TEST(RemoveTree, RemovesNestedFoldersButNotWhatLinksPointTo) {
  test::TempDir tmp;
  const fs::path tree = tmp.path() / "tree", outside = tmp.path() / "outside";
  fs::create_directories(tree / "a" / "b");
  fs::create_directories(outside);
  std::ofstream(tree / "a" / "b" / "weights.bin") << "x";
  std::ofstream(tree / "top.txt") << "y";
  std::ofstream(outside / "kept.txt") << "z";
  fs::create_directory_symlink(outside, tree / "a" / "link");

  remove_tree(tree.string());
  EXPECT_FALSE(fs::exists(tree));
  EXPECT_TRUE(fs::exists(outside / "kept.txt"));  // the link went, its target stayed
}

TEST(RemoveTree, MissingPathIsFineAndAFileIsRemoved) {
  test::TempDir tmp;
  EXPECT_NO_THROW(remove_tree(tmp.file("never-created")));
  std::ofstream(tmp.file("plain")) << "x";
  remove_tree(tmp.file("plain"));
  EXPECT_FALSE(fs::exists(tmp.file("plain")));
}

}  // namespace
}  // namespace st
