#include "util/json.h"

#include <fmt/format.h>

#include <cmath>

namespace st {

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += char(c);
    }
  }
  return out + "\"";
}

std::string json_number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : "null"; }

JsonObject& JsonObject::raw(const std::string& key, const std::string& json) {
  body_ += (body_.empty() ? "" : ", ") + json_quote(key) + ": " + json;
  return *this;
}
JsonObject& JsonObject::add(const std::string& key, double v) { return raw(key, json_number(v)); }
JsonObject& JsonObject::add(const std::string& key, int64_t v) { return raw(key, std::to_string(v)); }
JsonObject& JsonObject::add(const std::string& key, bool v) { return raw(key, v ? "true" : "false"); }
JsonObject& JsonObject::add(const std::string& key, const std::string& v) { return raw(key, json_quote(v)); }
JsonObject& JsonObject::add(const std::string& key, const JsonObject& v) { return raw(key, v.str()); }
JsonObject& JsonObject::add(const std::string& key, const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(v[i]);
  return raw(key, s + "]");
}

}  // namespace st
