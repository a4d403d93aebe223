#include "io/json_reader.h"

#include <fmt/format.h>

#include "io/read_file.h"

namespace st {

namespace {

// Bytes that may appear outside strings: structure, whitespace, numbers, true/false/null.
bool is_json_bare_byte(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         c == ':' || c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '+' ||
         c == '-' || c == '.';
}

// Empty when text uses only JSON syntax (strings, numbers, true/false/null, structural
// characters) nested at most max_depth deep; otherwise what is wrong and where.
std::string json_syntax_defect(std::string_view text, int max_depth) {
  int depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '"') {
      for (++i;; ++i) {
        if (i >= text.size()) return "unterminated string";
        unsigned char s = static_cast<unsigned char>(text[i]);
        if (s == '"') break;
        if (s < 0x20) return fmt::format("control character in a string at byte {}", i);
        if (s == '\\') ++i;
      }
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return fmt::format("nested deeper than {} at byte {}", max_depth, i);
    } else if (c == '}' || c == ']') {
      if (--depth < 0) return fmt::format("unbalanced '{}' at byte {}", static_cast<char>(c), i);
    } else if (!is_json_bare_byte(c)) {
      return fmt::format("unexpected byte 0x{:02x} at byte {}", c, i);
    }
  }
  if (depth != 0) return "unbalanced brackets";
  return "";
}

}  // namespace

YAML::Node parse_json(std::string_view text, const std::string& origin, int max_depth) {
  std::string defect = json_syntax_defect(text, max_depth);
  if (!defect.empty()) throw IoError(origin + ": not valid JSON: " + defect);
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    throw IoError(origin + ": not valid JSON: " + e.what());
  }
}

YAML::Node load_json_file(const std::string& path) { return parse_json(read_file(path), path); }

}  // namespace st
