// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical
// composition; UAX #15), the normalizer of Qwen2-style tokenizers. Tables come from
// unicode_tables.h; bytes that are not valid UTF-8 pass through unchanged.
#pragma once
#include <string>
#include <string_view>

namespace st {

std::string nfc(std::string_view text);

}  // namespace st
