#include "train/trainer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "data/loader.h"
#include "dist/comm.h"
#include "dist/fsdp.h"
#include "train/activation_checkpoint.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/flops.h"
#include "train/model_state.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/runtime.h"
#include "train/schedule.h"
#include "util/json.h"

namespace st {
namespace fs = std::filesystem;
namespace {

// SIGINT / SIGTERM finish the current step, write a checkpoint and return.
std::atomic<bool> g_stop_requested{false};
void request_stop(int) { g_stop_requested = true; }

struct SignalGuard {
  using Handler = void (*)(int);
  Handler old_int, old_term;
  SignalGuard() : old_int(std::signal(SIGINT, request_stop)), old_term(std::signal(SIGTERM, request_stop)) {
    g_stop_requested = false;
  }
  ~SignalGuard() {
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
  }
};

std::shared_ptr<TokenShard> open_shard(const std::string& path, const ModelConfig& m, const char* key) {
  auto shard = std::make_shared<TokenShard>(path);
  if (shard->vocab_size() > uint64_t(m.vocab_size))
    throw ConfigError(fmt::format("{}: {}'s tokenizer vocabulary ({}) is larger than model.vocab_size ({})", path, key,
                                  shard->vocab_size(), m.vocab_size));
  return shard;
}

TensorMap rng_state() {
  TensorMap s;
  s["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
  return s;
}

}  // namespace

TrainSummary train(const Recipe& recipe, const TrainOptions& options) {
  const DistEnv env = dist_env_from_environment();
  const bool lead = env.rank == 0;  // the rank that reports and writes the run's files
  Runtime rt = make_runtime(recipe.train);
  if (env.distributed() && rt.device_kind == "cuda") {
    const int64_t gpus = int64_t(torch::cuda::device_count());
    if (env.local_rank >= gpus)
      throw ConfigError(fmt::format("LOCAL_RANK {} needs GPU {}, but {} CUDA devices are visible: start at most {} "
                                    "ranks per node (or set train.device=cpu)",
                                    env.local_rank, env.local_rank, gpus, gpus));
    rt.device = torch::Device(torch::kCUDA, env.local_rank);
  }
  // Ranks sharing a CPU share its cores, as torchrun's OMP_NUM_THREADS default does.
  if (env.distributed() && rt.device_kind == "cpu" && !std::getenv("OMP_NUM_THREADS"))
    at::set_num_threads(std::max<int>(1, int(std::thread::hardware_concurrency() / env.local_world_size)));
  const int64_t steps = recipe.train.optimizer_steps(env.world_size);
  const fs::path run_dir = recipe.run_dir();
  const std::string ckpt_root = (run_dir / "ckpt").string();
  const TrainConfig& tc = recipe.train;

  // Everything that can fail on bad input is checked before the run folder is created.
  auto train_shard = open_shard(recipe.data.train, recipe.model, "data.train");
  std::shared_ptr<TokenShard> eval_shard;
  if (!recipe.data.eval.empty()) eval_shard = open_shard(recipe.data.eval, recipe.model, "data.eval");
  Loader loader(train_shard, {tc.seq_len, tc.micro_batch, tc.grad_accum, tc.seed, env.rank, env.world_size});

  std::string resume = options.resume;
  if (resume == "auto") resume = fs::exists(fs::path(ckpt_root) / "latest") ? ckpt_root : "";
  std::optional<CheckpointData> resumed;
  if (!resume.empty()) resumed = load_checkpoint(resume, /*with_optimizer=*/true);

  torch::manual_seed(uint64_t(tc.seed));
  Transformer model(recipe.model);
  model->init_weights(uint64_t(tc.seed));
  Progress progress(lead ? recipe.logging.progress : "off", recipe.logging.every);
  if (!resumed && !tc.init_from.empty()) {
    CheckpointData init = load_checkpoint(tc.init_from, /*with_optimizer=*/false);
    auto fresh = load_model_state(model, init.model, /*allow_new_variant_params=*/true, tc.init_from);
    progress.message(fmt::format("initialised from {} (step {}); newly initialised: {}", tc.init_from, init.step,
                                 fresh.empty() ? "none" : fmt::format("{}", fmt::join(fresh, ", "))));
  }
  if (resumed) load_model_state(model, resumed->model, /*allow_new_variant_params=*/false, resume);

  // Sharded (world size > 1): every rank holds 1/N of the weights, gradients and optimizer
  // state, and the optimizer steps on those slices.
  Comm comm(env, rt.device);
  std::unique_ptr<ShardedModel> sharded;
  std::vector<NamedParameter> params;
  if (env.distributed()) {
    const ShardingOptions so{rt.device, rt.precision == "bf16" ? at::kBFloat16 : at::kFloat, tc.sharding == "zero3"};
    sharded = std::make_unique<ShardedModel>(model, comm, so);
    params = sharded->local_parameters();
  } else {
    model->to(rt.device);
    for (auto& p : model->named_parameters()) params.push_back({p.key(), p.value()});
  }
  AdamW optimizer(params, recipe.optim);
  int64_t start_step = 0, tokens = 0;
  if (resumed) {
    if (resumed->optim.empty()) throw IoError(fmt::format("{}: has no optimizer state to resume from", resume));
    optimizer.load_state(sharded ? sharded->local_slices(resumed->optim) : resumed->optim);
    if (auto it = resumed->state.find("rng.cpu"); it != resumed->state.end()) {
      at::Generator cpu = at::detail::getDefaultCPUGenerator();  // a handle to the global one
      cpu.set_state(it->second);
    }
    start_step = resumed->step;
    tokens = resumed->tokens;
    progress.message(fmt::format("resumed from {} at step {}", resolve_checkpoint(resume), start_step));
  }

  const std::string recipe_yaml = recipe_to_yaml(recipe);
  std::ofstream metrics;
  if (lead) {
    fs::create_directories(run_dir);
    std::ofstream(run_dir / "recipe.resolved.yaml") << recipe_yaml;
    metrics.open(run_dir / "metrics.jsonl", std::ios::app);
  }

  const double flops_per_token = training_flops_per_token(recipe.model, tc.seq_len);
  const double peak = peak_flops(rt.device_kind, rt.precision, recipe.logging.peak_tflops) * double(env.world_size);
  const int64_t tokens_per_step = tc.micro_batch * tc.grad_accum * tc.seq_len * env.world_size;
  progress.message(fmt::format("run {}: {} parameters, {} steps x {} tokens on {}{}, {}", recipe.run.name,
                               parameter_count(recipe.model), steps, tokens_per_step, rt.describe(),
                               env.distributed() ? fmt::format(" x {} ranks, sharded", env.world_size) : "",
                               run_dir.string()));

  BlockRunner runner = tc.activation_checkpointing ? BlockRunner(checkpointed_block) : BlockRunner();
  if (sharded) runner = sharded->runner(runner);
  auto checkpoint = [&](int64_t step_done) {
    CheckpointData c{step_done, tokens, env.world_size, recipe_yaml, {}, optimizer.state(), rng_state()};
    std::string dir;
    if (sharded) {
      c.model = sharded->local_weights();
      dir = save_sharded_checkpoint(ckpt_root, c, {env.rank, sharded->shapes(), [&] { comm.barrier(); }},
                                    recipe.checkpoint.keep);
    } else {
      c.model = model_state(model);
      dir = save_checkpoint(ckpt_root, c, recipe.checkpoint.keep);
    }
    progress.message(fmt::format("checkpoint {}", dir));
    return dir;
  };
  // Sharded runs evaluate on every rank with the whole model gathered: the same batches, so
  // the same result everywhere.
  auto run_eval = [&](int64_t step_done) {
    if (sharded) sharded->gather_all();
    EvalResult e = evaluate(model, *eval_shard, rt, tc.seq_len, tc.micro_batch, tc.eval_batches);
    if (sharded) sharded->release_all();
    if (lead) metrics << JsonObject().add("step", step_done).add("eval_loss", e.loss).add("eval_ppl", std::exp(e.loss))
                   .add("sparsity", e.sparsity()).add("layer_sparsity", e.layer_sparsity()).str() << "\n" << std::flush;
    progress.message(fmt::format("eval step {}: loss {:.4f} ppl {:.2f} sparsity {:.4f}", step_done, e.loss, std::exp(e.loss), e.sparsity()));
    return e.loss;
  };

  SignalGuard signals;
  TrainSummary summary;
  summary.lead = lead;
  summary.run_dir = run_dir.string();
  summary.eval_loss = std::nan("");
  int64_t bad_in_a_row = 0, skipped = 0;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t step = start_step;
  const int64_t end = options.stop_after > 0 ? std::min(steps, options.stop_after) : steps;
  model->train();
  auto variants = model->attention_variants();
  const bool record = recipe.model.attention.variant != "dense";
  while (step < end) {
    const auto ts = std::chrono::steady_clock::now();
    const double lr = learning_rate(recipe.schedule, recipe.optim.lr, step, steps);
    double loss_sum = 0;
    AttentionStats attn;
    for (auto& v : variants) v->record_stats = record;  // evaluate() switches it off after itself
    if (sharded) sharded->begin_step();
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      Batch b = loader.batch(step, micro);
      torch::Tensor loss;
      {
        AutocastScope autocast(rt);
        loss = next_token_loss(model(b.inputs.to(rt.device), runner), b.targets.to(rt.device));
      }
      if (sharded) sharded->begin_micro_batch(micro + 1 == tc.grad_accum);
      (loss / double(tc.grad_accum)).backward();
      loss_sum += loss.item<double>();
      if (record) for (auto& v : variants) attn += v->stats;
    }
    double loss = loss_sum / double(tc.grad_accum);
    double grad_norm = 0;
    if (sharded) {
      sharded->reduce_gradients();
      loss = comm.sum(loss) / double(env.world_size);
      grad_norm = sharded->clip_grad_norm(tc.grad_clip);
      if (record) attn = {int64_t(comm.sum(double(attn.attended))), int64_t(comm.sum(double(attn.causal)))};
    } else {
      std::vector<torch::Tensor> with_grad;
      for (auto& p : params) if (p.param.grad().defined()) with_grad.push_back(p.param);
      grad_norm = torch::nn::utils::clip_grad_norm_(with_grad, tc.grad_clip > 0 ? tc.grad_clip : INFINITY);
    }
    ++step;
    tokens += tokens_per_step;
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      optimizer.zero_grad();
      ++skipped;
      progress.message(fmt::format("step {}: non-finite loss {} / grad norm {}; update skipped ({} in a row)", step, loss,
                                   grad_norm, ++bad_in_a_row));
      if (bad_in_a_row >= tc.max_bad_steps)
        throw TrainingError(fmt::format("{} non-finite steps in a row (train.max_bad_steps); stopping at step {}. "
                                        "Lower optim.lr or check the data; the last checkpoint is in {}",
                                        bad_in_a_row, step, ckpt_root));
    } else {
      bad_in_a_row = 0;
      optimizer.step(lr);
      optimizer.zero_grad();
    }
    if (rt.device_kind == "cuda") torch::cuda::synchronize();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double tps = double(tokens_per_step) / dt;
    const double mfu = tps * flops_per_token / peak;
    JsonObject line;
    line.add("step", step).add("loss", loss).add("lr", lr).add("grad_norm", grad_norm).add("tokens", tokens)
        .add("tokens_per_s", tps).add("mfu", mfu).add("step_time_s", dt).add("skipped_steps", skipped);
    if (record) line.add("sparsity", attn.sparsity());
    if (rt.device_kind == "cuda") line.add("peak_mem_gib", double(peak_device_memory(rt)) / double(1ll << 30));
    if (lead) metrics << line.str() << "\n" << std::flush;
    summary.last_loss = loss;
    progress.step({step, steps, loss, lr, grad_norm, tps, mfu, elapsed});

    // Every rank stops at the same step, whichever of them got the signal.
    const bool stop = env.distributed() ? comm.any(g_stop_requested) : bool(g_stop_requested);
    const bool last = step == end || stop;
    if (eval_shard && ((tc.eval_every > 0 && step % tc.eval_every == 0) || (step == steps)))
      summary.eval_loss = run_eval(step);
    if (last || (recipe.checkpoint.every > 0 && step % recipe.checkpoint.every == 0)) summary.checkpoint = checkpoint(step);
    if (stop) {
      progress.message(fmt::format("stopped by signal after step {}; resume with --resume auto", step));
      break;
    }
  }
  progress.finish();
  summary.steps_done = step;
  return summary;
}

}  // namespace st
