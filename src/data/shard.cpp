#include "data/shard.h"

#include <fmt/format.h>

#include <cstring>

#include "io/atomic_file.h"
#include "io/mapped_file.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shards are little-endian");

namespace st {

namespace {

constexpr char kMagic[8] = {'S', 'T', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kSpanBytes = 24;

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Empty when the span lies inside n tokens in the order example <= answer begin < answer end.
std::string span_defect(const AnswerSpan& s, uint64_t n) {
  if (s.example_begin <= s.answer_begin && s.answer_begin < s.answer_end && s.answer_end <= n)
    return "";
  return fmt::format("{{example_begin {}, answer_begin {}, answer_end {}}} is not ordered within "
                     "the {} tokens",
                     s.example_begin, s.answer_begin, s.answer_end, n);
}

}  // namespace

TokenShard::TokenShard(const std::string& path) : path_(path) {
  auto fail = [&](const std::string& defect) { throw DataError(path + ": " + defect); };
  try {
    file_ = std::make_unique<MappedFile>(path);
  } catch (const IoError& e) {
    throw DataError(e.what());
  }
  const unsigned char* p = file_->data();
  const uint64_t file_bytes = file_->size();
  if (file_bytes < kHeaderBytes)
    fail(fmt::format("truncated: {} bytes, shorter than the {}-byte header", file_bytes, kHeaderBytes));
  if (std::memcmp(p, kMagic, 8) != 0) fail("bad magic: not a sparsetrain token shard");
  uint32_t version = load<uint32_t>(p + 8);
  if (version != kVersion)
    fail(fmt::format("format version {}; this build reads version {}", version, kVersion));
  uint32_t width = load<uint32_t>(p + 12);
  if (width != 2 && width != 4) fail(fmt::format("{} bytes per token; expected 2 or 4", width));
  width_ = static_cast<int>(width);
  n_tokens_ = load<uint64_t>(p + 16);
  vocab_size_ = load<uint64_t>(p + 24);
  uint64_t n_spans = load<uint64_t>(p + 32);
  if (vocab_size_ == 0 || vocab_size_ > (1ull << (8 * width)))
    fail(fmt::format("vocab size {} does not fit {}-byte tokens", vocab_size_, width));
  for (size_t i = 40; i < kHeaderBytes; ++i)
    if (p[i] != 0) fail(fmt::format("reserved header byte {} is not zero", i));
  // What the header promises must be exactly what the file holds.
  uint64_t token_bytes = 0, span_bytes = 0, expected = 0;
  if (__builtin_mul_overflow(n_tokens_, uint64_t(width), &token_bytes) ||
      __builtin_mul_overflow(n_spans, uint64_t(kSpanBytes), &span_bytes) ||
      __builtin_add_overflow(token_bytes, span_bytes, &expected) ||
      __builtin_add_overflow(expected, uint64_t(kHeaderBytes), &expected) || expected != file_bytes)
    fail(fmt::format("header says {} tokens of {} bytes and {} spans, but the file has {} bytes "
                     "(truncated or corrupted?)",
                     n_tokens_, width, n_spans, file_bytes));
  tokens_ = p + kHeaderBytes;
  const unsigned char* sp = tokens_ + token_bytes;
  spans_.resize(n_spans);
  for (uint64_t i = 0; i < n_spans; ++i) {
    AnswerSpan& s = spans_[i];
    s.example_begin = load<uint64_t>(sp + i * kSpanBytes);
    s.answer_begin = load<uint64_t>(sp + i * kSpanBytes + 8);
    s.answer_end = load<uint64_t>(sp + i * kSpanBytes + 16);
    std::string defect = span_defect(s, n_tokens_);
    if (!defect.empty()) fail(fmt::format("span {}: {}", i, defect));
  }
}

TokenShard::~TokenShard() = default;

uint32_t TokenShard::operator[](uint64_t i) const {
  return width_ == 2 ? load<uint16_t>(tokens_ + 2 * i) : load<uint32_t>(tokens_ + 4 * i);
}

void TokenShard::read(uint64_t begin, uint64_t n, int64_t* out) const {
  if (begin > n_tokens_ || n > n_tokens_ - begin)
    throw DataError(fmt::format("{}: tokens [{}, {}) are outside the {} tokens of the shard", path_,
                                begin, begin + n, n_tokens_));
  for (uint64_t i = 0; i < n; ++i) out[i] = (*this)[begin + i];
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 uint64_t vocab_size, const std::vector<AnswerSpan>& spans) {
  if (vocab_size == 0 || vocab_size > (1ull << 32))
    throw DataError(fmt::format("{}: vocab size {} is not in [1, 2^32]", path, vocab_size));
  const uint32_t width = vocab_size <= 65536 ? 2 : 4;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] >= vocab_size)
      throw DataError(fmt::format("{}: token {} at index {} is >= the vocab size {}", path,
                                  tokens[i], i, vocab_size));
  for (size_t i = 0; i < spans.size(); ++i) {
    std::string defect = span_defect(spans[i], tokens.size());
    if (!defect.empty()) throw DataError(fmt::format("{}: span {}: {}", path, i, defect));
  }

  unsigned char header[kHeaderBytes] = {};
  const uint64_t n = tokens.size(), n_spans = spans.size();
  std::memcpy(header, kMagic, 8);
  std::memcpy(header + 8, &kVersion, 4);
  std::memcpy(header + 12, &width, 4);
  std::memcpy(header + 16, &n, 8);
  std::memcpy(header + 24, &vocab_size, 8);
  std::memcpy(header + 32, &n_spans, 8);

  std::vector<unsigned char> body(n * width);
  for (uint64_t i = 0; i < n; ++i) {
    if (width == 2) {
      uint16_t t = static_cast<uint16_t>(tokens[i]);
      std::memcpy(&body[2 * i], &t, 2);
    } else {
      std::memcpy(&body[4 * i], &tokens[i], 4);
    }
  }
  try {
    AtomicFile f(path);
    f.write(header, kHeaderBytes);
    f.write(body.data(), body.size());
    for (const AnswerSpan& s : spans) {
      const uint64_t fields[3] = {s.example_begin, s.answer_begin, s.answer_end};
      f.write(fields, kSpanBytes);
    }
    f.commit();
  } catch (const IoError& e) {
    throw DataError(e.what());
  }
}

}  // namespace st
