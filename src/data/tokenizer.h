// Text <-> token ids. Two kinds: the byte tokenizer (ids 0..255 are bytes, 256 is EOS) and
// Hugging Face byte-level BPE from a tokenizer.json (data/bpe_tokenizer.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace st {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of text as-is: no BOS/EOS added.
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;
  virtual std::string decode(const std::vector<uint32_t>& ids) const = 0;
  virtual uint64_t vocab_size() const = 0;
  // The separator written after every document.
  virtual uint32_t eos() const = 0;
};

// "byte", or the path of a Hugging Face tokenizer.json. Throws DataError.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace st
