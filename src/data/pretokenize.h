// The pre-tokenizer regexes of byte-level BPE tokenizers, matched by hand (our dependencies
// have no regex engine with \p{L}): text is cut into pieces exactly where the regex's
// successive leftmost matches would cut it. Letters (\p{L}) and numbers (\p{N}) follow the
// Unicode general categories, whitespace (\s) is Oniguruma's: U+0009-000D, U+0085 and the
// Zs/Zl/Zp separators. Bytes that are not valid UTF-8 count as one "other" character each.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace st {

enum class SplitPattern {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // (?i:'s|..|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
            // \s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,   // as kLlama3 with \p{N} (single digits) in place of \p{N}{1,3}
};

// The pattern a Hugging Face tokenizer.json regex spells, if it is one of the above.
std::optional<SplitPattern> split_pattern_of(const std::string& regex);
std::string split_pattern_regex(SplitPattern pattern);

// Consecutive pieces that together are exactly text.
std::vector<std::string_view> pretokenize(std::string_view text, SplitPattern pattern);

}  // namespace st
