// A minimal JSON writer for metrics lines and manifests. Reading JSON goes through
// yaml-cpp (JSON is YAML), so there is no JSON parser here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace st {

class JsonObject {
 public:
  JsonObject& add(const std::string& key, double v);
  JsonObject& add(const std::string& key, int64_t v);
  JsonObject& add(const std::string& key, int v) { return add(key, int64_t(v)); }
  JsonObject& add(const std::string& key, bool v);
  JsonObject& add(const std::string& key, const std::string& v);
  JsonObject& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  JsonObject& add(const std::string& key, const JsonObject& v);
  JsonObject& add(const std::string& key, const std::vector<double>& v);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  JsonObject& raw(const std::string& key, const std::string& json);
  std::string body_;
};

std::string json_quote(const std::string& s);
// Shortest round-trip form; NaN and infinities become null (JSON has no such numbers).
std::string json_number(double v);

}  // namespace st
