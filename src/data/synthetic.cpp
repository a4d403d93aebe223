#include "data/synthetic.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <random>
#include <set>

#include "data/splitmix.h"

namespace st {

namespace {

const char* const kFillerSentences[] = {"The grass is green. ", "The sky is blue. ",
                                        "The sun is yellow. ", "Here we go. ",
                                        "There and back again. "};
const char* const kAdjectives[] = {"amber",  "brave",  "calm",   "dusty",  "eager",  "faint",
                                   "gentle", "hollow", "icy",    "jolly",  "keen",   "lively",
                                   "mellow", "noble",  "odd",    "proud",  "quiet",  "rapid",
                                   "silent", "tender", "upper",  "vivid",  "wild",   "young"};
const char* const kNouns[] = {"anchor", "badger", "candle", "dragon", "ember",  "falcon",
                              "garden", "harbor", "island", "jungle", "kettle", "lantern",
                              "meadow", "needle", "orchid", "pepper", "quartz", "river",
                              "saddle", "tunnel", "umbrella", "valley", "walnut", "zephyr"};
constexpr int kNiahNeedles = 4;
constexpr int kMqarQueries = 4;
constexpr size_t kMqarMaxPairs = 200000;  // 4-letter keys: 456976 distinct
constexpr int kVtHops = 4;

// mt19937_64's output sequence is fixed by the standard (its distributions are not), so
// examples are identical across compilers and standard libraries.
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  uint64_t below(uint64_t n) { return gen_() % n; }
  double unit() { return double(gen_() >> 11) * 0x1.0p-53; }
  std::string letters(int n, char first) {
    std::string s;
    for (int i = 0; i < n; ++i) s += char(first + below(26));
    return s;
  }

 private:
  std::mt19937_64 gen_;
};

using Ids = std::vector<uint32_t>;

// One example before filler is added: needles go into the filler at their depths (a
// fraction of the filler, in order), then the tail follows; `answer` marks tail pieces
// that are answers.
struct Plan {
  Ids head;
  std::vector<Ids> needles;
  std::vector<double> depths;  // nondecreasing, in [0, 1]
  std::vector<Ids> tail;
  std::vector<bool> answer;
};

// Moves needle i to depth d, keeping needles in depth order.
void move_needle(Plan& p, size_t i, double d) {
  Ids needle = std::move(p.needles[i]);
  p.needles.erase(p.needles.begin() + long(i));
  p.depths.erase(p.depths.begin() + long(i));
  const auto at = std::upper_bound(p.depths.begin(), p.depths.end(), d) - p.depths.begin();
  p.needles.insert(p.needles.begin() + at, std::move(needle));
  p.depths.insert(p.depths.begin() + at, d);
}

class Planner {
 public:
  explicit Planner(const Tokenizer& tok) : tok_(tok) {}
  Ids ids(std::string_view text) const { return tok_.encode(text); }
  void tail(Plan& p, std::string_view text, bool is_answer = false) const {
    p.tail.push_back(ids(text));
    p.answer.push_back(is_answer);
  }

  Plan passkey(Rng& rng, std::optional<double> depth) const {
    Plan p;
    std::string key = std::to_string(10000 + rng.below(90000));
    p.head = ids("There is a pass key hidden inside a lot of irrelevant text. Find it and "
                 "remember it.\n");
    p.needles = {ids(fmt::format("The pass key is {0}. Remember it. {0} is the pass key. ", key))};
    p.depths = {rng.unit()};
    if (depth) move_needle(p, 0, *depth);
    tail(p, "\nWhat is the pass key? The pass key is ");
    tail(p, key, true);
    return p;
  }

  Plan niah(Rng& rng, std::optional<double> depth) const {
    Plan p;
    p.head = ids("Some special magic numbers are hidden inside the text below. Remember them.\n");
    std::set<std::string> used;
    std::vector<std::string> keys, values;
    while (int(keys.size()) < kNiahNeedles) {
      std::string key = std::string(kAdjectives[rng.below(std::size(kAdjectives))]) + "-" +
                        kNouns[rng.below(std::size(kNouns))];
      if (!used.insert(key).second) continue;
      keys.push_back(key);
      values.push_back(std::to_string(1000000 + rng.below(9000000)));
      p.needles.push_back(
          ids(fmt::format("One of the special magic numbers for {} is: {}. ", key, values.back())));
      p.depths.push_back(rng.unit());
    }
    std::sort(p.depths.begin(), p.depths.end());
    size_t q = rng.below(keys.size());
    if (depth) move_needle(p, q, *depth);
    tail(p, fmt::format("\nWhat is the special magic number for {0}? The special magic number "
                        "for {0} is: ",
                        keys[q]));
    tail(p, values[q], true);
    return p;
  }

  Plan vt(Rng& rng) const {
    Plan p;
    p.head = ids("Memorize and track the chains of variable assignments hidden in the text "
                 "below.\n");
    std::set<std::string> used;
    std::vector<std::string> names;
    while (int(names.size()) < 2 * kVtHops) {
      std::string name = rng.letters(5, 'A');
      if (used.insert(name).second) names.push_back(name);
    }
    uint64_t value = 10000 + rng.below(90000);
    uint64_t distractor = 10000 + (value - 10000 + 1 + rng.below(89999)) % 90000;
    // Chain 0 (asked for) and chain 1 (distractor) interleave at random, each in order.
    auto statement = [&](int chain, int hop) {
      const std::string& name = names[chain * kVtHops + hop];
      if (hop == 0) return fmt::format("VAR {} = {}. ", name, chain == 0 ? value : distractor);
      return fmt::format("VAR {} = VAR {}. ", name, names[chain * kVtHops + hop - 1]);
    };
    int next[2] = {0, 0};
    while (next[0] < kVtHops || next[1] < kVtHops) {
      int chain = next[0] == kVtHops ? 1 : next[1] == kVtHops ? 0 : int(rng.below(2));
      p.needles.push_back(ids(statement(chain, next[chain]++)));
      p.depths.push_back(rng.unit());
    }
    std::sort(p.depths.begin(), p.depths.end());
    tail(p, fmt::format("\nQuestion: Find all variables that are assigned the value {} in the "
                        "text above. Answer: ",
                        value));
    std::string answer = names[0];
    for (int h = 1; h < kVtHops; ++h) answer += " " + names[h];
    tail(p, answer, true);
    return p;
  }

  // The pairs come first, as many as fit ahead of the queries; filler pads the rest.
  Plan mqar(Rng& rng, int64_t length) const {
    Plan p;
    p.head = ids("Remember the value of every key.\n");
    const char* const recall = "\nRecall the values.\n";
    const size_t newline = ids("\n").size();
    std::set<std::string> used;
    std::vector<std::string> keys, values;
    size_t used_tokens = p.head.size() + ids(recall).size();
    size_t max_query = 0;  // tokens of the longest query: "key=", the value, a newline
    while (keys.size() < kMqarMaxPairs) {
      std::string key = rng.letters(4, 'a'), value = std::to_string(1000 + rng.below(9000));
      if (!used.insert(key).second) continue;
      Ids pair = ids(key + "=" + value + "\n");
      size_t cost = ids(key + "=").size() + ids(value).size() + newline;
      size_t reserve = kMqarQueries * std::max(max_query, cost);
      if (keys.size() >= kMqarQueries && used_tokens + pair.size() + reserve > size_t(length))
        break;
      keys.push_back(key);
      values.push_back(value);
      max_query = std::max(max_query, cost);
      used_tokens += pair.size();
      p.needles.push_back(std::move(pair));
      p.depths.push_back(0.0);
    }
    // Distinct queried pairs in random order: a partial Fisher-Yates shuffle.
    std::vector<size_t> order(keys.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (size_t i = 0; i < kMqarQueries; ++i) std::swap(order[i], order[i + rng.below(order.size() - i)]);
    tail(p, recall);
    for (size_t i = 0; i < kMqarQueries; ++i) {
      if (i > 0) tail(p, "\n");
      tail(p, keys[order[i]] + "=");
      tail(p, values[order[i]], true);
    }
    return p;
  }

 private:
  const Tokenizer& tok_;
};

// Appends the example: head, filler with the needles at their depths (each at the start of
// a filler sentence), tail; exactly `length` tokens.
void render(const Plan& p, const std::string& task, int64_t length,
            const std::vector<Ids>& filler_sentences, SyntheticTasks& out) {
  size_t fixed = p.head.size();
  for (const Ids& n : p.needles) fixed += n.size();
  for (const Ids& t : p.tail) fixed += t.size();
  if (fixed > size_t(length))
    throw DataError(fmt::format("synthetic task {}: an example needs at least {} tokens, longer "
                                "than the requested length {}",
                                task, fixed, length));
  const size_t budget = size_t(length) - fixed;
  Ids filler;
  std::vector<size_t> starts;  // where each filler sentence begins
  for (size_t s = 0; filler.size() < budget; ++s) {
    starts.push_back(filler.size());
    const Ids& sentence = filler_sentences[s % filler_sentences.size()];
    filler.insert(filler.end(), sentence.begin(), sentence.end());
  }
  filler.resize(budget);
  starts.push_back(budget);

  const uint64_t begin = out.tokens.size();
  Ids& t = out.tokens;
  t.insert(t.end(), p.head.begin(), p.head.end());
  size_t taken = 0;
  for (size_t i = 0; i < p.needles.size(); ++i) {
    size_t at = *(std::upper_bound(starts.begin(), starts.end(), size_t(p.depths[i] * budget)) - 1);
    at = std::max(at, taken);
    t.insert(t.end(), filler.begin() + taken, filler.begin() + at);
    t.insert(t.end(), p.needles[i].begin(), p.needles[i].end());
    taken = at;
  }
  t.insert(t.end(), filler.begin() + taken, filler.end());
  for (size_t i = 0; i < p.tail.size(); ++i) {
    uint64_t piece = t.size();
    t.insert(t.end(), p.tail[i].begin(), p.tail[i].end());
    if (p.answer[i]) out.spans.push_back({begin, piece, t.size()});
  }
}

}  // namespace

const std::vector<std::string>& synthetic_task_names() {
  static const std::vector<std::string> names = {"passkey", "niah", "mqar", "vt"};
  return names;
}

bool synthetic_task_has_depth(const std::string& task) { return task == "passkey" || task == "niah"; }

SyntheticTasks make_synthetic(const std::string& task, int64_t length, int64_t count,
                              uint64_t seed, const Tokenizer& tokenizer,
                              std::optional<double> depth) {
  const auto& names = synthetic_task_names();
  auto known = std::find(names.begin(), names.end(), task);
  if (known == names.end())
    throw DataError(fmt::format("unknown synthetic task '{}' (expected one of: {})", task,
                                fmt::join(names, ", ")));
  if (length < 1 || count < 0)
    throw DataError(fmt::format("synthetic task {}: length {} and count {} must be positive",
                                task, length, count));
  if (depth && !synthetic_task_has_depth(task))
    throw DataError(fmt::format("synthetic task {} has no single needle to place at a depth", task));
  if (depth && !(*depth >= 0 && *depth <= 1))
    throw DataError(fmt::format("synthetic task {}: depth {} is outside [0, 1]", task, *depth));
  Planner planner(tokenizer);
  std::vector<Ids> filler;
  for (const char* s : kFillerSentences) filler.push_back(tokenizer.encode(s));

  SyntheticTasks out;
  out.tokens.reserve(size_t(length) * size_t(count));
  const uint64_t task_id = uint64_t(known - names.begin());
  for (int64_t k = 0; k < count; ++k) {
    Rng rng(splitmix64(splitmix64(splitmix64(seed) ^ task_id) ^ uint64_t(k)));
    Plan p = task == "passkey" ? planner.passkey(rng, depth)
             : task == "niah"  ? planner.niah(rng, depth)
             : task == "vt"    ? planner.vt(rng)
                               : planner.mqar(rng, length);
    render(p, task, length, filler, out);
  }
  return out;
}

}  // namespace st
