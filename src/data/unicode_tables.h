// Code point ranges of the Unicode general categories L and N (generated tables).
#pragma once
#include <cstddef>
#include <cstdint>

namespace st {

struct CodeRange {
  uint32_t first, last;  // inclusive
};

extern const CodeRange kLetterRanges[];
extern const size_t kLetterRangeCount;
extern const CodeRange kNumberRanges[];
extern const size_t kNumberRangeCount;

}  // namespace st
