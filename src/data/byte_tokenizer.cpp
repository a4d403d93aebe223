#include "data/byte_tokenizer.h"

namespace st {

std::vector<uint32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (uint32_t id : ids)
    if (id < 256) out += static_cast<char>(id);
  return out;
}

}  // namespace st
