// Token shards: a 64-byte header, the tokens (uint16 or uint32), then answer spans.
//
//   offset  size  field
//   0       8     magic "STTOKENS"
//   8       4     version (1)
//   12      4     bytes per token (2 or 4)
//   16      8     token count
//   24      8     vocab size (every token is < vocab size)
//   32      8     span count
//   40      24    reserved, zero
//   64      ...   tokens, little-endian
//   ...     24*n  spans: {example_begin, answer_begin, answer_end} as uint64 token indices
//
// Spans mark synthetic-task examples: the tokens [example_begin, answer_end) form one
// example and [answer_begin, answer_end) is the answer scored by exact match.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace st {

class MappedFile;

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct AnswerSpan {
  uint64_t example_begin = 0;
  uint64_t answer_begin = 0;
  uint64_t answer_end = 0;
};

// A read-only, memory-mapped shard. Throws DataError naming the file on any mismatch
// between header and size, bad magic/version/width, or out-of-range spans.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return n_tokens_; }
  uint64_t vocab_size() const { return vocab_size_; }
  int bytes_per_token() const { return width_; }
  uint32_t operator[](uint64_t i) const;  // i < size(), unchecked
  // Copies tokens [begin, begin + n) into out as int64 (the dtype models take); throws
  // DataError when the range leaves the shard.
  void read(uint64_t begin, uint64_t n, int64_t* out) const;
  const std::vector<AnswerSpan>& spans() const { return spans_; }

 private:
  std::string path_;
  std::unique_ptr<MappedFile> file_;
  const unsigned char* tokens_ = nullptr;
  uint64_t n_tokens_ = 0, vocab_size_ = 0;
  int width_ = 0;
  std::vector<AnswerSpan> spans_;
};

// Writes a shard atomically (temp file + rename); uint16 when vocab_size <= 65536. Throws
// DataError when a token is >= vocab_size or a span is out of range.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 uint64_t vocab_size, const std::vector<AnswerSpan>& spans = {});

}  // namespace st
