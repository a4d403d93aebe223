// sparsetrain data tokenize | synth | mix | check: make and inspect token shards.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <iterator>

#include "cli/commands.h"
#include "data/mix.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "io/mapped_file.h"

namespace st {

namespace {

struct TokenizeArgs {
  std::vector<std::string> inputs;
  std::string out, tokenizer = "byte", split = "paragraph", val_out;
  double val_fraction = 0;
};

// Calls emit(document) for each document of text: paragraphs separated by blank lines (each
// keeping its line breaks), or the whole text.
template <class Emit>
void for_each_document(std::string_view text, const std::string& split, Emit emit) {
  if (split == "file") {
    if (!text.empty()) emit(text);
    return;
  }
  size_t doc_begin = 0, pos = 0;
  bool doc_open = false;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    size_t next = eol == std::string_view::npos ? text.size() : eol + 1;
    bool blank = text.substr(pos, next - pos).find_first_not_of(" \t\r\n") == std::string_view::npos;
    if (blank && doc_open) emit(text.substr(doc_begin, pos - doc_begin));
    if (!blank && !doc_open) doc_begin = pos;
    doc_open = !blank;
    pos = next;
  }
  if (doc_open) emit(text.substr(doc_begin));
}

void tokenize(const TokenizeArgs& a) {
  if ((a.val_fraction > 0) != !a.val_out.empty())
    throw DataError("--val-fraction and --val-out go together");
  auto tok = load_tokenizer(a.tokenizer);
  std::vector<uint32_t> train, val;
  int64_t docs = 0, val_docs = 0;
  uint64_t bytes = 0, next_report = 64ull << 20;
  auto add_document = [&](std::string_view doc) {
    // Every 1/F-th document (evenly spread) goes to validation.
    bool to_val = std::floor(double(docs + 1) * a.val_fraction) > std::floor(double(docs) * a.val_fraction);
    std::vector<uint32_t>& out = to_val ? val : train;
    std::vector<uint32_t> ids = tok->encode(doc);
    out.insert(out.end(), ids.begin(), ids.end());
    out.push_back(tok->eos());
    ++docs;
    val_docs += to_val;
    bytes += doc.size();
    if (bytes >= next_report) {
      fmt::print(stderr, "  {} MB, {} documents, {} tokens\n", bytes >> 20, docs, train.size() + val.size());
      next_report += 64ull << 20;
    }
  };
  for (const std::string& input : a.inputs) {
    if (input == "-") {
      std::string text{std::istreambuf_iterator<char>(std::cin), {}};
      for_each_document(text, a.split, add_document);
    } else {
      MappedFile file(input);
      fmt::print(stderr, "tokenizing {} ({:.1f} MB)\n", input, file.size() / 1e6);
      for_each_document(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()),
                        a.split, add_document);
    }
  }
  write_shard(a.out, train, tok->vocab_size());
  fmt::print("{}: {} tokens from {} documents (vocab {})\n", a.out, train.size(), docs - val_docs,
             tok->vocab_size());
  if (!a.val_out.empty()) {
    write_shard(a.val_out, val, tok->vocab_size());
    fmt::print("{}: {} tokens from {} documents\n", a.val_out, val.size(), val_docs);
  }
}

void add_tokenize(CLI::App& data) {
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = data.add_subcommand("tokenize", "Tokenize text files into a token shard, EOS after each document");
  cmd->add_option("inputs", a->inputs, "Text files; - reads standard input")->required();
  cmd->add_option("--out", a->out, "Output shard")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "byte, or the path of a Hugging Face tokenizer.json");
  cmd->add_option("--split", a->split, "paragraph: blank lines separate documents; file: one document per file")
      ->check(CLI::IsMember({"paragraph", "file"}));
  cmd->add_option("--val-fraction", a->val_fraction, "Fraction of documents, evenly spread, written to --val-out")
      ->check(CLI::Range(0.0, 0.5));
  cmd->add_option("--val-out", a->val_out, "Validation shard");
  cmd->callback([a] { tokenize(*a); });
}

void add_synth(CLI::App& data) {
  struct Args {
    std::string task, out, tokenizer = "byte";
    int64_t length = 0, count = 0;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = data.add_subcommand("synth", "Generate a synthetic long-context task shard with answer spans");
  cmd->add_option("--task", a->task, "passkey | niah | mqar | vt")->required()->check(CLI::IsMember(synthetic_task_names()));
  cmd->add_option("--length", a->length, "Tokens per example")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--count", a->count, "Number of examples")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", a->seed, "Random seed");
  cmd->add_option("--out", a->out, "Output shard")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "byte, or the path of a Hugging Face tokenizer.json");
  cmd->callback([a] {
    auto tok = load_tokenizer(a->tokenizer);
    SyntheticTasks tasks = make_synthetic(a->task, a->length, a->count, a->seed, *tok);
    write_shard(a->out, tasks.tokens, tok->vocab_size(), tasks.spans);
    fmt::print("{}: {} {} examples of {} tokens, {} answer spans\n", a->out, a->count, a->task, a->length,
               tasks.spans.size());
  });
}

// "PATH:WEIGHT" or "PATH" (weight 1).
MixInput parse_mix_input(const std::string& arg) {
  const size_t colon = arg.rfind(':');
  if (colon != std::string::npos) {
    char* end = nullptr;
    const std::string w = arg.substr(colon + 1);
    const double weight = std::strtod(w.c_str(), &end);
    if (!w.empty() && *end == 0) return {arg.substr(0, colon), weight};
  }
  return {arg, 1.0};
}

void add_mix(CLI::App& data) {
  struct Args {
    std::vector<std::string> inputs;
    std::string out;
    int64_t window = 0, windows = 0;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = data.add_subcommand(
      "mix", "Mix shards by weight, whole windows at a time (window = train.seq_len + 1 keeps every training "
             "sequence from one source)");
  cmd->add_option("inputs", a->inputs, "Shards, each as PATH or PATH:WEIGHT (default weight 1)")->required();
  cmd->add_option("--out", a->out, "Output shard")->required();
  cmd->add_option("--window", a->window, "Tokens per window")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--windows", a->windows, "Windows to write (default: as many as the inputs hold together)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", a->seed, "Random seed of the source order");
  cmd->callback([a] {
    std::vector<MixInput> inputs;
    for (const auto& s : a->inputs) inputs.push_back(parse_mix_input(s));
    int64_t windows = a->windows;
    if (windows == 0)
      for (const auto& in : inputs) windows += int64_t(TokenShard(in.path).size() / uint64_t(a->window));
    const auto used = mix_shards(inputs, a->out, a->window, windows, a->seed);
    fmt::print("{}: {} windows of {} tokens\n", a->out, windows, a->window);
    for (size_t i = 0; i < inputs.size(); ++i)
      fmt::print("  {}  weight {}  {} windows used of {} ({:.2f} passes)\n", inputs[i].path, inputs[i].weight,
                 used[i].windows_used, used[i].windows_available,
                 double(used[i].windows_used) / double(used[i].windows_available));
  });
}

void add_check(CLI::App& data) {
  auto path = std::make_shared<std::string>();
  auto* cmd = data.add_subcommand("check", "Validate a shard: header, size, spans, every token < vocab");
  cmd->add_option("shard", *path, "Token shard")->required();
  cmd->callback([path] {
    TokenShard shard(*path);
    fmt::print("shard        {}\ntokens       {}\nvocab size   {}\ntoken bytes  {}\nanswer spans {}\n", shard.path(),
               shard.size(), shard.vocab_size(), shard.bytes_per_token(), shard.spans().size());
    for (uint64_t i = 0; i < shard.size(); ++i)
      if (shard[i] >= shard.vocab_size())
        throw DataError(fmt::format("{}: token {} at index {} is >= the vocab size {}", shard.path(), shard[i], i,
                                    shard.vocab_size()));
    fmt::print("ok\n");
  });
}

}  // namespace

void add_data_command(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Make and inspect token shards");
  data->require_subcommand(1);
  add_tokenize(*data);
  add_synth(*data);
  add_mix(*data);
  add_check(*data);
}

}  // namespace st
