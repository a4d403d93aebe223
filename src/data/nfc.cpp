#include "data/nfc.h"

#include <algorithm>
#include <vector>

#include "data/unicode_tables.h"
#include "data/utf8.h"

namespace st {

namespace {

// Hangul syllables decompose and compose arithmetically (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kSCount = kLCount * kVCount * kTCount;

// Invalid bytes travel as 0x110000 + byte: never decomposed, combined or composed.
constexpr uint32_t kRawByte = 0x110000;

uint32_t combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  const CombiningRange* end = kCombiningClasses + kCombiningClassesCount;
  auto r = std::upper_bound(kCombiningClasses, end, cp, [](uint32_t c, const CombiningRange& x) { return c < x.first; });
  return r != kCombiningClasses && cp <= (r - 1)->last ? (r - 1)->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / (kVCount * kTCount));
    out.push_back(kVBase + (s % (kVCount * kTCount)) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* end = kDecompositions + kDecompositionsCount;
  auto d = std::lower_bound(kDecompositions, end, cp, [](const Decomposition& x, uint32_t c) { return x.cp < c; });
  if (d != end && d->cp == cp)
    out.insert(out.end(), kDecompositionCodePoints + d->offset, kDecompositionCodePoints + d->offset + d->length);
  else
    out.push_back(cp);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
    return a + (b - kTBase);
  const Composition* end = kCompositions + kCompositionsCount;
  auto c = std::lower_bound(kCompositions, end, std::make_pair(a, b), [](const Composition& x, std::pair<uint32_t, uint32_t> k) {
    return x.first != k.first ? x.first < k.first : x.second < k.second;
  });
  return c != end && c->first == a && c->second == b ? c->composite : 0;
}

}  // namespace

std::string nfc(std::string_view text) {
  if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(text);  // ASCII is already NFC

  std::vector<uint32_t> cps;
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    uint32_t cp = decode_utf8(text, i, &len);
    if (cp == kInvalidUtf8) cps.push_back(kRawByte + static_cast<unsigned char>(text[i]));
    else decompose(cp, cps);
  }
  // Canonical order: each run of non-starters sorted (stably) by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && combining_class(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition: each character joins the last starter unless a character in
  // between blocks it (a starter, or a class at least its own).
  std::vector<uint32_t> out;
  long starter = -1;
  uint32_t last_class = 0;  // of the last character kept after the starter
  for (uint32_t cp : cps) {
    const uint32_t cc = cp >= kRawByte ? 0 : combining_class(cp);
    if (starter >= 0 && cp < kRawByte && out[starter] < kRawByte) {
      const bool adjacent = size_t(starter) + 1 == out.size();
      if (adjacent || (last_class != 0 && last_class < cc)) {
        if (uint32_t c = compose(out[starter], cp)) {
          out[starter] = c;
          continue;
        }
      }
    }
    if (cc == 0) {
      starter = long(out.size());
      last_class = 0;
    } else {
      last_class = cc;
    }
    out.push_back(cp);
  }
  std::string result;
  result.reserve(text.size());
  for (uint32_t cp : out) {
    if (cp >= kRawByte) result += char(cp - kRawByte);
    else append_utf8(result, cp);
  }
  return result;
}

}  // namespace st
