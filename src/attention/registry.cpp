// The one place that maps model.attention.variant to a module.
#include <fmt/format.h>

#include "attention/dash.h"
#include "attention/dense.h"
#include "attention/infllmv2.h"
#include "attention/nsa.h"
#include "model/attention.h"

namespace st {

std::shared_ptr<AttentionVariant> make_attention(const ModelConfig& cfg) {
  const std::string& v = cfg.attention.variant;
  if (v == "dense") return std::make_shared<DenseAttention>(cfg);
  if (v == "dash") return std::make_shared<DashAttention>(cfg);
  if (v == "nsa") return std::make_shared<NsaAttention>(cfg);
  if (v == "infllmv2") return std::make_shared<InfllmV2Attention>(cfg);
  throw ConfigError(fmt::format("model.attention.variant: '{}' is not available in this build", v));
}

int64_t causal_pairs(int64_t T, int64_t offset) {
  // Query t sees t + 1 keys; sum over t in [offset, T).
  if (offset >= T) return 0;
  return (T * (T + 1) - offset * (offset + 1)) / 2;
}

}  // namespace st
