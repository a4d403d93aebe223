#include "util/utc_time.h"

#include <ctime>

namespace st {

std::string utc_timestamp() {
  char text[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%MZ", &utc);
  return text;
}

}  // namespace st
