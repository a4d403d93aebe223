// Hugging Face byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2 style) from tokenizer.json,
// in the tokenizers library's order: added tokens marked "normalized": false are cut out of
// the raw text (leftmost, longest); the rest is normalized (NFC, if the tokenizer says so),
// cut at the normalized added tokens, pre-tokenized by the split regex
// (data/pretokenize.h), mapped to the GPT-2 byte alphabet and merged by rank. encode() adds
// no BOS/EOS (the post-processor is not applied); decode() is byte-level.
//
// Supported: model BPE (merges as "a b" strings or [a, b] pairs, ignore_merges), normalizer
// none or NFC, pre-tokenizer ByteLevel (with add_prefix_space) or Sequence[Split(known
// regex, Isolated), ByteLevel(use_regex false)]. Anything else is a DataError naming the
// feature. EOS: tokenizer_config.json's eos_token next to tokenizer.json, else the first of
// <|endoftext|>, <|end_of_text|>, </s> that exists.
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace st {

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& tokenizer_json);

}  // namespace st
