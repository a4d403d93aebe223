#include "data/bpe_tokenizer.h"

#include <fmt/format.h>

#include <array>
#include <filesystem>
#include <functional>
#include <optional>
#include <queue>
#include <tuple>
#include <unordered_map>

#include "data/nfc.h"
#include "data/pretokenize.h"
#include "data/shard.h"
#include "data/utf8.h"
#include "io/json_reader.h"

namespace st {

namespace {

// GPT-2's reversible byte alphabet: printable Latin-1 bytes stand for themselves, the other
// 68 bytes for U+0100 onwards, so every byte string becomes printable text.
std::array<std::string, 256> byte_alphabet() {
  std::array<std::string, 256> chars;
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    append_utf8(chars[b], printable ? b : next++);
  }
  return chars;
}

class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::string& path);

  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<uint32_t>& ids) const override;
  uint64_t vocab_size() const override { return id_bytes_.size(); }
  uint32_t eos() const override { return eos_; }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw DataError(path_ + ": " + what); }
  void load_model(const YAML::Node& model);
  void load_added_tokens(const YAML::Node& added);
  void load_pre_tokenizer(const YAML::Node& pre);
  uint32_t find_eos() const;
  void set_bytes(uint32_t id, std::string bytes);
  std::string to_alphabet(std::string_view bytes) const;
  void encode_plain(std::string_view text, std::vector<uint32_t>& out) const;
  void encode_pieces(std::string_view text, std::vector<uint32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<uint32_t>& out) const;

  struct Merge {
    uint32_t rank, merged;
  };
  struct Added {
    std::string content;
    uint32_t id;
  };
  // Added tokens matched in one pass: leftmost first, longest first at a position.
  struct AddedSet {
    std::vector<Added> tokens;
    std::array<std::vector<size_t>, 256> by_first_byte;
    void index();
    template <class Plain>
    void split(std::string_view text, std::vector<uint32_t>& out, Plain plain) const;
  };

  std::string path_;
  std::array<std::string, 256> alphabet_ = byte_alphabet();
  std::unordered_map<std::string, uint32_t> vocab_;  // token in the byte alphabet -> id
  std::unordered_map<uint64_t, Merge> merges_;        // (left id << 32 | right id) -> merge
  std::array<int64_t, 256> byte_id_;                  // a byte's own token, -1 if none
  std::vector<std::string> id_bytes_;                 // what each id decodes to
  AddedSet raw_added_;         // "normalized": false, matched in the raw text
  AddedSet normalized_added_;  // "normalized": true, matched after the normalizer
  bool nfc_ = false;           // the normalizer: none or NFC
  std::optional<SplitPattern> pattern_;  // none: each text segment is one piece
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  uint32_t eos_ = 0;
};

bool is_null(const YAML::Node& n) { return !n || n.IsNull(); }

BpeTokenizer::BpeTokenizer(const std::string& path) : path_(path) {
  YAML::Node root;
  try {
    root = load_json_file(path);
  } catch (const IoError& e) {
    throw DataError(e.what());
  }
  if (!root.IsMap()) fail("not a tokenizer.json object");
  if (!is_null(root["normalizer"])) {
    const std::string type = root["normalizer"]["type"].as<std::string>("?");
    if (type != "NFC") fail(fmt::format("normalizer '{}' is not supported (only none and NFC)", type));
    nfc_ = true;
  }
  load_model(root["model"]);
  load_added_tokens(root["added_tokens"]);
  load_pre_tokenizer(root["pre_tokenizer"]);
  eos_ = find_eos();
}

void BpeTokenizer::set_bytes(uint32_t id, std::string bytes) {
  if (id >= id_bytes_.size()) id_bytes_.resize(size_t(id) + 1);
  id_bytes_[id] = std::move(bytes);
}

std::string BpeTokenizer::to_alphabet(std::string_view bytes) const {
  std::string s;
  for (unsigned char b : bytes) s += alphabet_[b];
  return s;
}

void BpeTokenizer::load_model(const YAML::Node& model) {
  if (!model || !model.IsMap()) fail("has no \"model\" object");
  const std::string type = model["type"].as<std::string>("");
  if (type != "BPE") fail(fmt::format("model type '{}' is not supported (only byte-level BPE)", type));
  if (model["byte_fallback"].as<bool>(false)) fail("model.byte_fallback is not supported (not a byte-level BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!is_null(model[key]) && !model[key].as<std::string>().empty()) fail(fmt::format("model.{} is not supported", key));
  if (!is_null(model["dropout"]) && model["dropout"].as<double>() != 0.0) fail("model.dropout is not supported");
  ignore_merges_ = model["ignore_merges"].as<bool>(false);

  const YAML::Node vocab = model["vocab"];
  if (!vocab || !vocab.IsMap()) fail("model.vocab is not an object");
  std::unordered_map<std::string, uint32_t> from_alphabet;  // byte-alphabet character -> byte
  for (uint32_t b = 0; b < 256; ++b) from_alphabet[alphabet_[b]] = b;
  for (const auto& kv : vocab) {
    const std::string& token = kv.first.Scalar();
    const uint32_t id = kv.second.as<uint32_t>();
    vocab_[token] = id;
    // Decode by mapping each alphabet character back to its byte; tokens outside the
    // alphabet (rare literal specials) decode as themselves.
    std::string bytes;
    for (size_t i = 0; i < token.size();) {
      size_t len = 0;
      decode_utf8(token, i, &len);
      auto it = from_alphabet.find(token.substr(i, len));
      if (it == from_alphabet.end()) {
        bytes = token;
        break;
      }
      bytes += char(it->second);
      i += len;
    }
    set_bytes(id, bytes);
  }
  for (uint32_t b = 0; b < 256; ++b) {
    auto it = vocab_.find(alphabet_[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : int64_t(it->second);
  }

  const YAML::Node merges = model["merges"];
  if (!merges || !merges.IsSequence()) fail("model.merges is not a list");
  uint32_t rank = 0;
  for (const auto& m : merges) {
    std::string left, right;
    if (m.IsSequence() && m.size() == 2) {
      left = m[0].Scalar();
      right = m[1].Scalar();
    } else if (m.IsScalar() && m.Scalar().find(' ') != std::string::npos) {
      const std::string& s = m.Scalar();
      left = s.substr(0, s.find(' '));
      right = s.substr(s.find(' ') + 1);
    } else {
      fail(fmt::format("merge {} is neither \"a b\" nor [a, b]", rank));
    }
    auto l = vocab_.find(left), r = vocab_.find(right), lr = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || lr == vocab_.end())
      fail(fmt::format("merge {} ('{}' '{}') names a token missing from the vocab", rank, left, right));
    merges_.emplace(uint64_t(l->second) << 32 | r->second, Merge{rank, lr->second});
    ++rank;
  }
}

void BpeTokenizer::AddedSet::index() {
  std::stable_sort(tokens.begin(), tokens.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });
  for (size_t i = 0; i < tokens.size(); ++i) by_first_byte[static_cast<unsigned char>(tokens[i].content[0])].push_back(i);
}

// Appends the ids of the set's tokens found in text and calls plain(segment, out) for the
// text between them.
template <class Plain>
void BpeTokenizer::AddedSet::split(std::string_view text, std::vector<uint32_t>& out, Plain plain) const {
  size_t plain_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    const Added* hit = nullptr;
    for (size_t i : by_first_byte[static_cast<unsigned char>(text[pos])])
      if (text.compare(pos, tokens[i].content.size(), tokens[i].content) == 0) {
        hit = &tokens[i];
        break;
      }
    if (!hit) {
      ++pos;
      continue;
    }
    plain(text.substr(plain_begin, pos - plain_begin), out);
    out.push_back(hit->id);
    pos += hit->content.size();
    plain_begin = pos;
  }
  plain(text.substr(plain_begin), out);
}

void BpeTokenizer::load_added_tokens(const YAML::Node& added) {
  if (is_null(added)) return;
  if (!added.IsSequence()) fail("added_tokens is not a list");
  for (const auto& t : added) {
    const std::string content = t["content"].as<std::string>("");
    if (content.empty()) fail("an added token has no content");
    for (const char* flag : {"single_word", "lstrip", "rstrip"})
      if (t[flag].as<bool>(false)) fail(fmt::format("added token '{}': {} is not supported", content, flag));
    const uint32_t id = t["id"].as<uint32_t>();
    set_bytes(id, content);
    // As the tokenizers library does: normalized tokens are matched in normalized form.
    if (t["normalized"].as<bool>(!t["special"].as<bool>(false)))
      normalized_added_.tokens.push_back({nfc_ ? nfc(content) : content, id});
    else
      raw_added_.tokens.push_back({content, id});
  }
  raw_added_.index();
  normalized_added_.index();
}

void BpeTokenizer::load_pre_tokenizer(const YAML::Node& pre) {
  if (is_null(pre)) fail("pre_tokenizer is missing (a byte-level BPE needs ByteLevel)");
  const std::string type = pre["type"].as<std::string>("");
  auto byte_level = [&](const YAML::Node& bl, bool in_sequence) {
    add_prefix_space_ = bl["add_prefix_space"].as<bool>(false);
    if (in_sequence && add_prefix_space_) fail("ByteLevel.add_prefix_space inside a Sequence is not supported");
    if (bl["use_regex"].as<bool>(true)) {
      if (in_sequence) fail("ByteLevel.use_regex after a Split is not supported");
      pattern_ = SplitPattern::kGpt2;
    }
  };
  if (type == "ByteLevel") return byte_level(pre, false);
  if (type != "Sequence") fail(fmt::format("pre_tokenizer '{}' is not supported", type));
  const YAML::Node steps = pre["pretokenizers"];
  if (steps.size() == 1 && steps[0]["type"].as<std::string>("") == "ByteLevel") return byte_level(steps[0], false);
  if (steps.size() != 2 || steps[0]["type"].as<std::string>("") != "Split" ||
      steps[1]["type"].as<std::string>("") != "ByteLevel")
    fail("pre_tokenizer Sequence other than [Split, ByteLevel] is not supported");
  const YAML::Node split = steps[0];
  const std::string regex = split["pattern"]["Regex"].as<std::string>("");
  if (regex.empty()) fail("Split pre-tokenizer without a Regex pattern is not supported");
  if (split["behavior"].as<std::string>("") != "Isolated" || split["invert"].as<bool>(false))
    fail("Split pre-tokenizer other than behavior Isolated, invert false is not supported");
  pattern_ = split_pattern_of(regex);
  if (!pattern_) fail(fmt::format("Split regex is not one this build implements (GPT-2, Llama-3, Qwen2): {}", regex));
  byte_level(steps[1], true);
}

uint32_t BpeTokenizer::find_eos() const {
  auto id_of = [&](const std::string& content) -> std::optional<uint32_t> {
    for (const AddedSet* set : {&raw_added_, &normalized_added_})
      for (const Added& a : set->tokens)
        if (a.content == content) return a.id;
    auto it = vocab_.find(to_alphabet(content));
    if (it != vocab_.end()) return it->second;
    return std::nullopt;
  };
  const std::string config = (std::filesystem::path(path_).parent_path() / "tokenizer_config.json").string();
  if (std::filesystem::exists(config)) {
    YAML::Node eos;
    try {
      eos = load_json_file(config)["eos_token"];
    } catch (const IoError& e) {
      throw DataError(e.what());
    }
    if (eos) {
      std::string name = eos.IsMap() ? eos["content"].as<std::string>("") : eos.as<std::string>("");
      if (auto id = id_of(name)) return *id;
      throw DataError(fmt::format("{}: eos_token '{}' is not a token of {}", config, name, path_));
    }
  }
  for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>"})
    if (auto id = id_of(name)) return *id;
  fail("cannot tell the end-of-document token: add a tokenizer_config.json with eos_token next to it");
}

std::vector<uint32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> out;
  raw_added_.split(text, out, [this](std::string_view segment, std::vector<uint32_t>& ids) { encode_plain(segment, ids); });
  return out;
}

// Text between raw added tokens: normalized, then split on normalized added tokens, then
// pre-tokenized.
void BpeTokenizer::encode_plain(std::string_view text, std::vector<uint32_t>& out) const {
  if (text.empty()) return;
  const std::string normalized = nfc_ ? nfc(text) : std::string();
  normalized_added_.split(nfc_ ? std::string_view(normalized) : text, out,
                          [this](std::string_view segment, std::vector<uint32_t>& ids) { encode_pieces(segment, ids); });
}

void BpeTokenizer::encode_pieces(std::string_view text, std::vector<uint32_t>& out) const {
  if (text.empty()) return;
  std::string prefixed;
  if (add_prefix_space_ && text[0] != ' ') {
    prefixed = " " + std::string(text);
    text = prefixed;
  }
  if (!pattern_) return encode_piece(text, out);
  for (std::string_view piece : pretokenize(text, *pattern_)) encode_piece(piece, out);
}

// Merges the piece's bytes lowest rank first, leftmost first among equals, as the
// tokenizers library does.
void BpeTokenizer::encode_piece(std::string_view piece, std::vector<uint32_t>& out) const {
  if (ignore_merges_) {
    auto it = vocab_.find(to_alphabet(piece));
    if (it != vocab_.end()) return out.push_back(it->second);
  }
  const int n = int(piece.size());
  std::vector<uint32_t> id(n);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    int64_t b = byte_id_[static_cast<unsigned char>(piece[i])];
    if (b < 0) fail(fmt::format("byte 0x{:02x} has no token in the vocab", static_cast<unsigned char>(piece[i])));
    id[i] = uint32_t(b);
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Candidate = std::tuple<uint32_t, int, uint32_t>;  // rank, left position, merged id
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    auto it = merges_.find(uint64_t(id[left]) << 32 | id[next[left]]);
    if (it != merges_.end()) queue.emplace(it->second.rank, left, it->second.merged);
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> gone(n, false);
  while (!queue.empty()) {
    auto [rank, left, merged] = queue.top();
    queue.pop();
    // Entries go stale when a neighbour merged first; skip those.
    if (gone[left] || next[left] < 0) continue;
    auto it = merges_.find(uint64_t(id[left]) << 32 | id[next[left]]);
    if (it == merges_.end() || it->second.merged != merged) continue;
    const int right = next[left];
    id[left] = merged;
    gone[right] = true;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    consider(prev[left]);
    consider(left);
  }
  for (int i = 0; i >= 0 && i < n; i = next[i]) out.push_back(id[i]);
}

std::string BpeTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string out;
  for (uint32_t id : ids)
    if (id < id_bytes_.size()) out += id_bytes_[id];
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& tokenizer_json) {
  try {
    return std::make_unique<BpeTokenizer>(tokenizer_json);
  } catch (const YAML::Exception& e) {  // a field of the wrong JSON type
    throw DataError(tokenizer_json + ": malformed: " + e.what());
  }
}

}  // namespace st
