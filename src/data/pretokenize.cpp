#include "data/pretokenize.h"

#include <algorithm>

#include "data/unicode_tables.h"
#include "data/utf8.h"

namespace st {

namespace {

const char* const kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool in_ranges(uint32_t cp, const CodeRange* ranges, size_t n) {
  const CodeRange* end = ranges + n;
  const CodeRange* r = std::upper_bound(ranges, end, cp, [](uint32_t c, const CodeRange& x) { return c < x.first; });
  return r != ranges && cp <= (r - 1)->last;
}

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return cp != kInvalidUtf8 && in_ranges(cp, kLetterRanges, kLetterRangesCount);
}

bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return cp != kInvalidUtf8 && in_ranges(cp, kNumberRanges, kNumberRangesCount);
}

bool is_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }
bool is_other(uint32_t cp) { return !is_space(cp) && !is_letter(cp) && !is_number(cp); }

// The regex alternatives, each returning the end (a character index) of its match at i or
// i itself when it does not match. They mirror a backtracking engine: greedy, first
// alternative that matches wins.
class Matcher {
 public:
  explicit Matcher(const std::vector<uint32_t>& cps) : c_(cps), n_(cps.size()) {}

  size_t run(size_t i, bool (*pred)(uint32_t)) const {
    while (i < n_ && pred(c_[i])) ++i;
    return i;
  }

  // '(s|t|re|ve|m|ll|d), optionally ignoring case (where U+017F LONG S folds to s).
  size_t contraction(size_t i, bool ignore_case) const {
    if (c_[i] != '\'') return i;
    auto lower = [&](size_t k) -> uint32_t {
      if (k >= n_) return 0;
      uint32_t cp = c_[k];
      if (!ignore_case) return cp;
      if (cp == 0x17F) return 's';
      return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    };
    for (const char* suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      size_t k = 0;
      while (suffix[k] && lower(i + 1 + k) == uint32_t(suffix[k])) ++k;
      if (!suffix[k]) return i + 1 + k;
    }
    return i;
  }

  // prefix?\p{L}+ where prefix is one character satisfying `prefix`.
  size_t letters(size_t i, bool (*prefix)(uint32_t)) const {
    if (prefix(c_[i]) && i + 1 < n_ && is_letter(c_[i + 1])) return run(i + 1, is_letter);
    return run(i, is_letter);
  }

  // ` ?\p{N}+` (max_digits 0), or \p{N}{1,max_digits} with no prefix.
  size_t numbers(size_t i, size_t max_digits) const {
    if (max_digits == 0) {
      if (c_[i] == ' ' && i + 1 < n_ && is_number(c_[i + 1])) return run(i + 1, is_number);
      return run(i, is_number);
    }
    size_t j = i;
    while (j < n_ && j - i < max_digits && is_number(c_[j])) ++j;
    return j;
  }

  // ` ?[^\s\p{L}\p{N}]+`, then `[\r\n]*` when trailing_newlines.
  size_t others(size_t i, bool trailing_newlines) const {
    size_t j = c_[i] == ' ' && i + 1 < n_ && is_other(c_[i + 1]) ? run(i + 1, is_other) : run(i, is_other);
    return j > i && trailing_newlines ? run(j, is_newline) : j;
  }

  // \s*[\r\n]+ : whitespace up to and including the last line break of the whitespace run.
  size_t through_last_newline(size_t i) const {
    size_t end = run(i, is_space), j = end;
    while (j > i && !is_newline(c_[j - 1])) --j;
    return j;
  }

  // \s+(?!\S) : the whitespace run, less its last character when a non-space follows.
  size_t spaces_not_before_text(size_t i) const {
    size_t end = run(i, is_space);
    if (end == n_) return end;
    return end - i >= 2 ? end - 1 : i;
  }

  size_t spaces(size_t i) const { return run(i, is_space); }

 private:
  const std::vector<uint32_t>& c_;
  size_t n_;
};

bool is_ascii_space(uint32_t cp) { return cp == ' '; }
bool is_letter_prefix(uint32_t cp) { return !is_newline(cp) && !is_letter(cp) && !is_number(cp); }

size_t match(const Matcher& m, size_t i, SplitPattern p) {
  size_t j;
  if (p == SplitPattern::kGpt2) {
    if ((j = m.contraction(i, false)) > i) return j;
    if ((j = m.letters(i, is_ascii_space)) > i) return j;
    if ((j = m.numbers(i, 0)) > i) return j;
    if ((j = m.others(i, false)) > i) return j;
  } else {
    if ((j = m.contraction(i, true)) > i) return j;
    if ((j = m.letters(i, is_letter_prefix)) > i) return j;
    if ((j = m.numbers(i, p == SplitPattern::kLlama3 ? 3 : 1)) > i) return j;
    if ((j = m.others(i, true)) > i) return j;
    if ((j = m.through_last_newline(i)) > i) return j;
  }
  if ((j = m.spaces_not_before_text(i)) > i) return j;
  return m.spaces(i);  // every character is a letter, number, space or other: never empty
}

}  // namespace

std::optional<SplitPattern> split_pattern_of(const std::string& regex) {
  for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3, SplitPattern::kQwen2})
    if (regex == split_pattern_regex(p)) return p;
  return std::nullopt;
}

std::string split_pattern_regex(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::kGpt2: return kGpt2Regex;
    case SplitPattern::kLlama3: return kLlama3Regex;
    case SplitPattern::kQwen2: return kQwen2Regex;
  }
  return "";
}

std::vector<std::string_view> pretokenize(std::string_view text, SplitPattern pattern) {
  std::vector<uint32_t> cps;
  std::vector<size_t> offsets;  // byte offset of each character, plus the end
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    cps.push_back(decode_utf8(text, i, &len));
    offsets.push_back(i);
  }
  offsets.push_back(text.size());
  Matcher m(cps);
  std::vector<std::string_view> pieces;
  for (size_t i = 0; i < cps.size();) {
    size_t j = match(m, i, pattern);
    pieces.push_back(text.substr(offsets[i], offsets[j] - offsets[i]));
    i = j;
  }
  return pieces;
}

}  // namespace st
