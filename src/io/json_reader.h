// Reading JSON from files that may be malformed or hostile. Parsing goes through yaml-cpp
// (JSON is YAML 1.2) after a strict lexical check, so YAML-only syntax (anchors, aliases,
// tags, comments) and absurd nesting never reach the YAML parser. In the resulting nodes a
// JSON string has Tag() "!" and a number, true, false or null has Tag() "?".
#pragma once
#include <string>
#include <string_view>

#include <yaml-cpp/yaml.h>

#include "io/error.h"

namespace st {

// Parses JSON text; origin (a file name) prefixes every IoError message.
YAML::Node parse_json(std::string_view text, const std::string& origin, int max_depth = 64);
YAML::Node load_json_file(const std::string& path);

}  // namespace st
