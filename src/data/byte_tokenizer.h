// The tokenizer with nothing to learn: every byte is a token, plus one EOS.
#pragma once
#include "data/tokenizer.h"

namespace st {

class ByteTokenizer : public Tokenizer {
 public:
  static constexpr uint32_t kEos = 256;
  static constexpr uint64_t kVocabSize = 257;

  std::vector<uint32_t> encode(std::string_view text) const override;
  // EOS decodes to nothing.
  std::string decode(const std::vector<uint32_t>& ids) const override;
  uint64_t vocab_size() const override { return kVocabSize; }
  uint32_t eos() const override { return kEos; }
};

}  // namespace st
