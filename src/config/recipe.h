// The recipe: every setting of a run as plain data. Loading, validation and the YAML form
// live in recipe.cpp; nothing else parses YAML.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace st {

// A bad recipe or config: the message names the file, the key path and what was expected.
// The CLI maps it to exit code 2.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DashConfig {
  int64_t chunk = 64;                 // C: keys per chunk
  double alpha = 1.5;                 // entmax alpha in (1, 2]
  double temperature = 1.0;           // s: scale on routing scores; larger is sparser
  double sigma = 1.0;                 // prior strength: b = log-prior / sigma
  // unnormalized: log(pbar)/sigma; normalized: (log pbar - log g)/sigma, g the geometric mean
  // of the row's routed pbar. normalized is ill-conditioned for training: d(log g)/d(pbar_c) =
  // 1/(n pbar_c) grows without bound at entmax's support edge (README, DashAttention).
  std::string prior = "unnormalized";
  int64_t sink_chunks = 0;            // always-selected leading chunks
  int64_t local_chunks = 0;           // always-selected chunks just before the diagonal one
  // Consecutive query positions that share one routing: pbar is the mean over their heads and
  // positions (1: per query, DESIGN §2.2). 64 / G makes it one routing per kernel tile, which
  // then reads no block that only some of its rows routed to. Divides chunk.
  int64_t route_positions = 1;
};

struct NsaConfig {
  int64_t cmp_block = 32;             // l: compression block length
  int64_t cmp_stride = 16;            // d: compression stride
  std::string compressor = "mlp";     // mlp (with intra-block positions) | mean
  int64_t sel_block = 64;             // l': selection block length
  int64_t top_n = 16;                 // selected blocks, forced ones included
  int64_t init_blocks = 1;            // forced leading blocks
  int64_t local_blocks = 2;           // forced blocks ending at the query
  int64_t window = 512;               // sliding-window branch width
  std::string kv = "shared";          // shared | separate K/V projections per branch
};

struct InfllmConfig {
  int64_t pool_kernel = 32;           // mean-pool kernel over keys
  int64_t pool_stride = 16;           // mean-pool stride
  int64_t block = 64;                 // selection block length
  int64_t top_k = 64;                 // selected blocks, forced ones included
  int64_t init_blocks = 1;
  int64_t local_blocks = 2;
  int64_t window = 2048;              // sliding window
  int64_t dense_len = 8192;           // sequences shorter than this use dense attention
};

struct AttentionConfig {
  std::string variant = "dense";      // dense | dash | nsa | infllmv2
  std::string impl = "auto";          // auto (cuda on GPU where kernels exist) | reference | cuda
  int64_t sparsity_offset = 0;        // queries before this position are not counted in sparsity
  DashConfig dash;
  NsaConfig nsa;
  InfllmConfig infllmv2;
};

struct RopeScaling {
  std::string type = "none";          // none | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;       // llama3 only
  double high_freq_factor = 4.0;      // llama3 only
  int64_t original_max_position = 8192;  // llama3 only
};

struct ModelConfig {
  std::string config;                 // the configs/*.yaml it was loaded from, if any
  int64_t vocab_size = 512;
  int64_t dim = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 8;
  int64_t n_kv_heads = 8;
  int64_t head_dim = 0;               // 0: dim / n_heads
  int64_t ffn_dim = 0;                // 0: SwiGLU default, 8/3 dim rounded up to 64
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_embeddings = true;
  double init_std = 0.02;
  AttentionConfig attention;

  int64_t head_dim_or_default() const { return head_dim > 0 ? head_dim : dim / n_heads; }
  int64_t ffn_dim_or_default() const {
    if (ffn_dim > 0) return ffn_dim;
    int64_t f = (8 * dim / 3 + 63) / 64 * 64;
    return f;
  }
};

struct DataConfig {
  std::string train;                  // token shard (.bin) used for training
  std::string eval;                   // token shard for periodic eval; empty: no eval
};

struct OptimConfig {
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_norms_and_embeddings = false;
};

struct ScheduleConfig {
  std::string kind = "cosine";        // cosine | wsd | constant
  int64_t warmup_steps = 100;
  double min_lr_ratio = 0.1;          // floor of the decay, as a fraction of lr
  double decay_fraction = 0.2;        // wsd: the last fraction of steps decays
};

struct TrainConfig {
  int64_t steps = 0;                  // optimizer steps; 0: derived from tokens
  int64_t tokens = 0;                 // token budget; used when steps is 0
  int64_t seq_len = 1024;
  int64_t micro_batch = 1;
  int64_t grad_accum = 1;
  std::string precision = "auto";     // auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
  std::string device = "auto";        // auto | cpu | cuda
  double grad_clip = 1.0;             // 0: off
  int64_t seed = 1234;
  bool activation_checkpointing = false;
  std::string sharding = "zero3";     // multi-process runs: zero3 frees each block's gathered weights after its forward; zero2 keeps them until its backward
  int64_t max_bad_steps = 5;          // consecutive non-finite steps before stopping
  int64_t eval_every = 0;             // 0: only at the end (when data.eval is set)
  int64_t eval_batches = 8;
  std::string init_from;              // checkpoint to take model weights from (continual pretraining)

  // Optimizer steps of a run on world_size ranks: `steps`, or the token budget rounded up.
  int64_t optimizer_steps(int64_t world_size) const {
    if (steps > 0) return steps;
    const int64_t per_step = micro_batch * grad_accum * seq_len * world_size;
    return (tokens + per_step - 1) / per_step;
  }
};

struct CheckpointConfig {
  int64_t every = 0;                  // 0: only at the end
  int64_t keep = 3;                   // keep the last N step directories
};

struct LoggingConfig {
  int64_t every = 1;                  // plain progress line every N steps when not a terminal
  std::string progress = "auto";      // auto | bar | plain | off
  double peak_tflops = 0;             // for MFU; 0: from the device (see train/flops.cpp)
};

struct RunConfig {
  std::string name;
  std::string out_dir = "runs";
};

struct Recipe {
  std::string source;                 // the file it was loaded from
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  ScheduleConfig schedule;
  TrainConfig train;
  CheckpointConfig checkpoint;
  LoggingConfig logging;

  std::string run_dir() const { return run.out_dir + "/" + run.name; }
};

// Loads a recipe, applies `overrides` ("a.b.c=value", YAML scalars), resolves
// model.config, and validates. Throws ConfigError.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses a recipe from YAML text (checkpoint manifests carry the resolved recipe this way).
Recipe parse_recipe(const std::string& yaml_text, const std::string& origin);
// The fully resolved recipe as YAML, loadable by load_recipe/parse_recipe.
std::string recipe_to_yaml(const Recipe& recipe);
// Cross-field checks; throws ConfigError naming the key path.
void validate(const Recipe& recipe);

}  // namespace st
