// The current time as reports stamp it: "2026-11-24T03:45Z" (UTC, minutes).
#pragma once
#include <string>

namespace st {

std::string utc_timestamp();

}  // namespace st
