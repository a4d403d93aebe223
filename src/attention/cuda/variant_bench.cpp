#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/variant_bench.h"

#include <c10/core/Allocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>

#include "attention/cuda/attention_bench.h"
#include "attention/dash.h"
#include "attention/infllmv2.h"
#include "attention/nsa.h"
#include "model/rope.h"
#include "util/json.h"

namespace st::cuda {

using torch::Tensor;

namespace {

struct Inputs {
  AttentionInputs plain, grad;  // grad: q/k/v require grad
  Tensor dout;
};

Inputs make_inputs(const ModelConfig& cfg, int64_t T) {
  const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const int64_t d = cfg.head_dim_or_default();
  auto rope = rope_tables(cfg, T, torch::kCUDA);
  Inputs in;
  in.plain = {torch::randn({1, cfg.n_heads, T, d}, opt), torch::randn({1, cfg.n_kv_heads, T, d}, opt),
              torch::randn({1, cfg.n_kv_heads, T, d}, opt), torch::randn({1, T, cfg.dim}, opt.dtype(torch::kFloat32)),
              rope.cos, rope.sin};
  in.grad = in.plain;
  in.grad.q = in.plain.q.detach().requires_grad_(true);
  in.grad.k = in.plain.k.detach().requires_grad_(true);
  in.grad.v = in.plain.v.detach().requires_grad_(true);
  in.dout = torch::randn_like(in.plain.q);
  return in;
}

ModelConfig variant_config(const VariantBenchConfig& b, const std::string& variant) {
  ModelConfig cfg;
  cfg.n_heads = b.q_heads;
  cfg.n_kv_heads = b.kv_heads;
  cfg.head_dim = b.head_dim;
  cfg.dim = b.q_heads * b.head_dim;
  cfg.attention.variant = variant;
  cfg.attention.impl = "auto";
  cfg.attention.dash.route_positions = b.dash_route_positions;
  return cfg;
}

// Block counts for a target: a query at position t reads ~ (1 - sparsity) t / 2 keys on average
// over the sequence; NSA and InfLLMv2 read top-k blocks of 64 plus a window that overlaps their
// 2 forced local blocks.
int64_t blocks_for(double sparsity, int64_t T, int64_t window) {
  const double keys = (1.0 - sparsity) * T / 2.0 - (window - 128);
  return std::max<int64_t>(3, std::llround(keys / 64.0));
}

double measured_sparsity(AttentionVariant& m, const AttentionInputs& in) {
  torch::NoGradGuard no_grad;
  m.record_stats = true;
  m.forward(in);
  m.record_stats = false;
  return m.stats.sparsity();
}

// Dash's temperature for a target sparsity: bisection on log2(temperature), sparsity rising
// with the temperature, measured on the routing alone.
double dash_temperature(const ModelConfig& base, const AttentionInputs& in, double target) {
  double lo = -1.0, hi = 10.0;
  for (int it = 0; it < 7; ++it) {
    const double mid = (lo + hi) / 2;
    ModelConfig cfg = base;
    cfg.attention.dash.temperature = std::exp2(mid);
    DashAttention dash(cfg);
    dash.to(torch::kCUDA);
    torch::NoGradGuard no_grad;
    const int64_t T = in.q.size(2);
    auto rows = dash.routing(in.q, dash.chunk_summaries(in.k));
    const double causal = double(in.q.size(1)) * T * (T + 1) / 2;
    const double s = 1.0 - attended_pairs(rows, T, 64, /*window=*/0, /*offset=*/0, in.q.size(1) / in.k.size(1)) / causal;
    (s < target ? lo : hi) = mid;
  }
  return std::exp2((lo + hi) / 2);
}

struct KernelTime {
  std::string name;
  double ms = 0;
  int64_t calls = 0;
};

// One profiled run: see profile().
struct Profile {
  std::vector<KernelTime> top;
  double total_ms = 0, idle_ms = 0;
};

struct Row {
  std::string knob;
  double knob_value = 0, measured = 0, sel_f = 0, f = 0, sel_fb = 0, fb = 0;
  Profile kernels;  // with top_kernels: one profiled f+b
};

// A profile of fn's GPU work (Kineto, CUPTI activity records): the top `n` kernels by total
// time with their call counts, all kernels' total, and the GPU's idle time between its first
// and last kernel (host round trips and launch gaps). trace_path, when not empty, receives the
// whole profile as a Chrome trace (CPU ops and kernels on one timeline).
Profile profile(const std::function<void()>& fn, int n, const std::string& trace_path) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const prof::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  fn();
  torch::cuda::synchronize();
  const auto result = prof::disableProfiler();
  std::map<std::string, KernelTime> by_name;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  Profile p;
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CUDA) continue;
    KernelTime& k = by_name[e.name()];
    k.name = e.name();
    k.ms += e.durationNs() / 1e6;
    ++k.calls;
    p.total_ms += e.durationNs() / 1e6;
    spans.emplace_back(e.startNs(), e.endNs());
  }
  std::sort(spans.begin(), spans.end());
  uint64_t covered_to = spans.empty() ? 0 : spans.front().first;
  for (const auto& [start, end] : spans) {
    if (start > covered_to) p.idle_ms += (start - covered_to) / 1e6;
    covered_to = std::max(covered_to, end);
  }
  for (auto& [name, k] : by_name) p.top.push_back(k);
  std::sort(p.top.begin(), p.top.end(), [](const KernelTime& a, const KernelTime& b) { return a.ms > b.ms; });
  if (p.top.size() > size_t(n)) p.top.resize(n);
  if (!trace_path.empty()) result->save(trace_path);
  return p;
}

Row measure(const VariantBenchConfig& b, const std::string& variant, double target, const Inputs& in, int reps,
            const std::string& trace_path) {
  ModelConfig cfg = variant_config(b, variant);
  const int64_t T = in.plain.q.size(2);
  Row r;
  if (variant == "nsa") {
    r.knob = "top_n";
    cfg.attention.nsa.top_n = blocks_for(target, T, cfg.attention.nsa.window);
    r.knob_value = double(cfg.attention.nsa.top_n);
  } else if (variant == "infllmv2") {
    r.knob = "top_k";
    cfg.attention.infllmv2.top_k = blocks_for(target, T, cfg.attention.infllmv2.window);
    r.knob_value = double(cfg.attention.infllmv2.top_k);
  } else if (variant == "dash") {
    r.knob = "temperature";
    cfg.attention.dash.temperature = dash_temperature(cfg, in.plain, target);
    r.knob_value = cfg.attention.dash.temperature;
  }
  auto m = make_attention(cfg);
  m->to(torch::kCUDA);
  r.measured = measured_sparsity(*m, in.plain);
  // Before each timed backward: no .grad left from the last run for it to add into.
  auto clear_all_grads = [&] {
    clear_grads({in.grad.q, in.grad.k, in.grad.v});
    m->zero_grad();
  };
  // The selection stage alone, forward; with its backward where it has one (Dash).
  std::function<void()> sel_f, sel_fb;
  if (auto* dash = dynamic_cast<DashAttention*>(m.get())) {
    sel_f = [&, dash] {
      torch::NoGradGuard no_grad;
      dash->routing(in.plain.q, dash->chunk_summaries(in.plain.k));
    };
    sel_fb = [&, dash] {
      clear_all_grads();
      auto rows = dash->routing(in.grad.q, dash->chunk_summaries(in.grad.k));
      rows.bias.backward(torch::ones_like(rows.bias));
    };
  } else if (auto* nsa = dynamic_cast<NsaAttention*>(m.get())) {
    sel_f = [&, nsa] { nsa->selection(in.plain); };
  } else if (auto* inf = dynamic_cast<InfllmV2Attention*>(m.get())) {
    sel_f = [&, inf] { inf->selection(in.plain.q, in.plain.k); };
  }
  r.f = time_ms([&] {
    torch::NoGradGuard no_grad;
    m->forward(in.plain);
  }, reps);
  auto forward_backward = [&] {
    clear_all_grads();
    m->forward(in.grad).backward(in.dout);
  };
  r.fb = time_ms(forward_backward, reps);
  if (b.top_kernels > 0) r.kernels = profile(forward_backward, b.top_kernels, trace_path);
  if (sel_f) r.sel_f = time_ms(sel_f, reps);
  r.sel_fb = sel_fb ? time_ms(sel_fb, reps) : r.sel_f;
  return r;
}

}  // namespace

void run_variant_bench(const VariantBenchConfig& b) {
  if (!torch::cuda::is_available())
    throw std::runtime_error("bench attention needs a CUDA GPU; none is visible to LibTorch");
  torch::manual_seed(7);
  std::printf("whole attention variants (selection + core, impl auto) vs SDPA flash dense causal; Hq %ld, Hkv %ld, "
              "d %ld, batch 1, bf16 q/k/v; Dash route_positions %ld\n",
              long(b.q_heads), long(b.kv_heads), long(b.head_dim), long(b.dash_route_positions));
  std::printf("sel = the selection stage alone (its share of the variant's time in %%); spd = SDPA / variant; "
              "ideal = 1 / (1 - measured sparsity)\n\n");
  std::printf("%-8s %7s %6s %8s %6s | %8s %8s %5s | %8s %8s %5s | %8s %8s | %6s %6s %6s %6s\n", "variant", "T",
              "target", "knob", "sparse", "sel f", "fwd ms", "sel%", "sel f+b", "f+b ms", "sel%", "SDPA f", "SDPA fb",
              "spd f", "spd fb", "ideal", "fb/id");
  std::vector<std::string> rows;
  for (const int64_t T : b.lengths) {
    const int reps = bench_reps(T);
    ModelConfig shape = variant_config(b, "dense");
    Inputs in = make_inputs(shape, T);
    const Sdpa sd = time_sdpa(in.plain.q, in.dout, reps);
    for (const std::string& variant : b.variants) {
      const std::vector<double> targets = variant == "dense" ? std::vector<double>{0.0} : b.sparsities;
      for (const double target : targets) {
        JsonObject js;
        js.add("variant", variant).add("T", T).add("Hq", b.q_heads).add("Hkv", b.kv_heads).add("d", b.head_dim)
            .add("target_sparsity", target).add("sdpa_fwd_ms", sd.fwd_ms).add("sdpa_fwd_bwd_ms", sd.fwd_bwd_ms);
        try {
          const std::string trace =
              b.trace_dir.empty() ? "" : fmt::format("{}/{}-{}-{:g}.json", b.trace_dir, variant, T, target);
          const Row r = measure(b, variant, target, in, reps, trace);
          const double ideal = 1.0 / (1.0 - r.measured);
          std::printf("%-8s %7ld %6.4f %8.3g %6.4f | %8.2f %8.2f %4.0f%% | %8.2f %8.2f %4.0f%% | %8.2f %8.2f | %6.2f %6.2f "
                      "%6.2f %6.2f\n",
                      variant.c_str(), long(T), target, r.knob_value, r.measured, r.sel_f, r.f, 100 * r.sel_f / r.f,
                      r.sel_fb, r.fb, 100 * r.sel_fb / r.fb, sd.fwd_ms, sd.fwd_bwd_ms, sd.fwd_ms / r.f,
                      sd.fwd_bwd_ms / r.fb, ideal, sd.fwd_bwd_ms / r.fb / ideal);
          if (!r.knob.empty()) js.add(r.knob, r.knob_value);
          js.add("measured_sparsity", r.measured).add("selection_fwd_ms", r.sel_f).add("fwd_ms", r.f)
              .add("selection_share_fwd", r.sel_f / r.f).add("selection_fwd_bwd_ms", r.sel_fb).add("fwd_bwd_ms", r.fb)
              .add("selection_share_fwd_bwd", r.sel_fb / r.fb).add("speedup_fwd", sd.fwd_ms / r.f)
              .add("speedup_fwd_bwd", sd.fwd_bwd_ms / r.fb).add("ideal_speedup", ideal);
          if (!r.kernels.top.empty()) {
            const Profile& p = r.kernels;
            std::printf("  kernels of one profiled f+b: %.2f ms in all; the GPU idle %.2f ms between them\n",
                        p.total_ms, p.idle_ms);
            JsonObject kernels;
            for (const KernelTime& k : p.top) {
              std::printf("  %9.2f ms %5ld x %4.1f%%  %.110s\n", k.ms, long(k.calls), 100 * k.ms / p.total_ms,
                          k.name.c_str());
              kernels.add(k.name, JsonObject().add("ms", k.ms).add("calls", k.calls));
            }
            js.add("kernels_total_ms", p.total_ms).add("gpu_idle_ms", p.idle_ms).add("top_kernels", kernels);
            if (!trace.empty()) js.add("trace", trace);
          }
        } catch (const c10::OutOfMemoryError&) {
          std::printf("%-8s %7ld %6.4f  out of GPU memory\n", variant.c_str(), long(T), target);
          js.add("error", "out of GPU memory");
          c10::cuda::CUDACachingAllocator::emptyCache();
        }
        std::fflush(stdout);
        rows.push_back(js.str());
      }
    }
  }
  if (!b.json_path.empty()) write_bench_json(b.json_path, b.command, rows);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
