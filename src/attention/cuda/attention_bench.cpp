#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/attention_bench.h"

#include <ATen/Context.h>
#include <cuda_runtime.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <numeric>
#include <random>
#include <stdexcept>

#include "attention/cuda/block_sparse.h"
#include "attention/cuda/launch.h"
#include "util/json.h"

namespace st::cuda {
namespace kn = st::kernels;
using torch::Tensor;

namespace {

// Lists shared by the 64 positions of each query block (what block-level selection produces):
// n random past blocks per query block, n chosen so that attended / causal pairs ~ 1 - sparsity.
// Built on the host. Returns the measured sparsity and the attended pairs of one KV head's
// positions (x G query heads later).
BlockLists bench_lists(int64_t Hkv, int64_t T, double sparsity, std::mt19937& rng,
                       double* measured, int64_t* attended) {
  const int64_t nb = (T + 63) / 64;
  std::vector<int64_t> row_ptr(Hkv * T + 1, 0);
  std::vector<int32_t> blocks, pool;
  int64_t att = 0, causal = 0;
  for (int64_t h = 0; h < Hkv; ++h)
    for (int64_t qb = 0; qb < nb; ++qb) {
      // Attended pairs of a query block with n past blocks: 64 n + 32.5 (diagonal, causal)
      // per position; causal pairs: 64 qb + 32.5.
      const double want = (1.0 - sparsity) * (qb + 0.508) - 0.508;
      const int64_t n = std::clamp<int64_t>(std::llround(want), 0, qb);
      pool.resize(qb);
      std::iota(pool.begin(), pool.end(), 0);
      for (int64_t i = 0; i < n; ++i) std::swap(pool[i], pool[i + rng() % (qb - i)]);
      std::sort(pool.begin(), pool.begin() + n);
      for (int64_t t = qb * 64; t < std::min(T, qb * 64 + 64); ++t) {
        blocks.insert(blocks.end(), pool.begin(), pool.begin() + n);
        row_ptr[h * T + t + 1] = static_cast<int64_t>(blocks.size());
        att += 64 * n + (t % 64) + 1;
        causal += t + 1;
      }
    }
  BlockLists l;
  l.row_ptr = torch::from_blob(row_ptr.data(), {static_cast<int64_t>(row_ptr.size())}, torch::kInt64).to(torch::kCUDA);
  l.blocks = torch::from_blob(blocks.data(), {static_cast<int64_t>(blocks.size())}, torch::kInt32).to(torch::kCUDA);
  *measured = 1.0 - static_cast<double>(att) / static_cast<double>(causal);
  *attended = att;
  return l;
}

}  // namespace

double time_ms(const std::function<void()>& fn, int reps) {
  fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> ts;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, current_stream());
    fn();
    cudaEventRecord(b, current_stream());
    cudaEventSynchronize(b);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, a, b);
    ts.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  check_launch(cudaGetLastError(), "timing");
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

void clear_grads(std::initializer_list<at::Tensor> leaves) {
  for (at::Tensor t : leaves) t.mutable_grad().reset();
}

namespace {

// LibTorch SDPA restricted to its flash backend while alive (the baseline's backend; the
// variants' own SDPA calls, NSA's masked compression branch, need the others), then restored.
class FlashOnlySdpa {
 public:
  FlashOnlySdpa()
      : flash_(ctx().userEnabledFlashSDP()), mem_efficient_(ctx().userEnabledMemEfficientSDP()),
        math_(ctx().userEnabledMathSDP()), cudnn_(ctx().userEnabledCuDNNSDP()), fa3_(ctx().userEnabledFA3SDP()) {
    set(true, false, false, false, false);
  }
  ~FlashOnlySdpa() { set(flash_, mem_efficient_, math_, cudnn_, fa3_); }
  FlashOnlySdpa(const FlashOnlySdpa&) = delete;
  FlashOnlySdpa& operator=(const FlashOnlySdpa&) = delete;

 private:
  static at::Context& ctx() { return at::globalContext(); }
  static void set(bool flash, bool mem_efficient, bool math, bool cudnn, bool fa3) {
    ctx().setSDPUseFlash(flash);
    ctx().setSDPUseMemEfficient(mem_efficient);
    ctx().setSDPUseMath(math);
    ctx().setSDPUseCuDNN(cudnn);
    ctx().setSDPUseFA3(fa3);
  }
  bool flash_, mem_efficient_, math_, cudnn_, fa3_;
};

}  // namespace

Sdpa time_sdpa(const Tensor& q, const Tensor& dout, int reps) {
  const FlashOnlySdpa flash_only;
  const auto opt = q.options();
  const int64_t Hq = q.size(1), T = q.size(2), d = q.size(3);
  Tensor k = torch::randn({1, Hq, T, d}, opt), v = torch::randn({1, Hq, T, d}, opt);
  Sdpa s;
  {
    torch::NoGradGuard ng;
    s.fwd_ms = time_ms([&] { at::scaled_dot_product_attention(q, k, v, {}, 0.0, true); }, reps);
  }
  Tensor qg = q.detach().requires_grad_(true), kg = k.requires_grad_(true), vg = v.requires_grad_(true);
  s.fwd_bwd_ms = time_ms(
      [&] {
        clear_grads({qg, kg, vg});
        at::scaled_dot_product_attention(qg, kg, vg, {}, 0.0, true).backward(dout);
      },
      reps);
  const double pairs = static_cast<double>(Hq) * T * (T + 1) / 2;
  s.fwd_tflops = 4.0 * d * pairs / s.fwd_ms / 1e9;
  s.bwd_tflops = 10.0 * d * pairs / (s.fwd_bwd_ms - s.fwd_ms) / 1e9;
  return s;
}

int bench_reps(int64_t T) { return T <= 32768 ? 10 : (T <= 65536 ? 5 : 3); }

void write_bench_json(const std::string& path, const std::string& command, const std::vector<std::string>& rows) {
  cudaDeviceProp prop;
  check_launch(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%MZ", std::gmtime(&now));
  std::ofstream js(path);
  if (!js) throw std::runtime_error("cannot write " + path);
  js << "{\"device\": " << json_quote(prop.name) << ", \"sms\": " << prop.multiProcessorCount
     << ", \"torch\": " << json_quote(TORCH_VERSION) << ", \"date\": " << json_quote(date)
     << ", \"command\": " << json_quote(command) << ", \"dtype\": \"bf16\", \"batch\": 1,\n \"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) js << "  " << rows[i] << (i + 1 < rows.size() ? ",\n" : "\n");
  js << "]}\n";
  std::printf("\nwrote %s\n", path.c_str());
}

void run_attention_bench(const AttentionBenchConfig& cfg) {
  if (!torch::cuda::is_available())
    throw std::runtime_error("bench attention needs a CUDA GPU; none is visible to LibTorch");
  torch::manual_seed(7);
  std::mt19937 rng(7);
  const int64_t Hq = cfg.q_heads, d = cfg.head_dim;
  const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  cudaDeviceProp prop;
  check_launch(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%MZ", std::gmtime(&now));
  std::printf("device %s (%d SMs), torch %s, %s\n", prop.name, prop.multiProcessorCount, TORCH_VERSION, date);
  std::printf("block-sparse core (plan + kernels: wgmma on sm_90, mma.sync elsewhere) vs SDPA flash, dense causal; Hq %ld, d %ld, batch 1, bf16\n",
              Hq, d);
  std::printf("TF/s on attended pairs (fwd 4 d, bwd 10 d FLOPs per pair); f+b includes the plan; "
              "spd = SDPA time / core time; ideal = 1 / (1 - sparsity)\n\n");
  std::printf("%7s %4s %6s | %8s %6s %5s | %8s %6s %5s | %8s %6s | %6s %6s %6s %6s\n", "T", "Hkv", "sparse",
              "fwd ms", "TF/s", "%SDPA", "bwd ms", "TF/s", "%SDPA", "f+b ms", "plan", "spd f", "spd fb", "ideal",
              "fb/id");
  std::vector<std::string> rows;
  for (const int64_t T : cfg.lengths) {
    const int reps = bench_reps(T);
    Tensor q = torch::randn({1, Hq, T, d}, opt), dout = torch::randn({1, Hq, T, d}, opt);
    const Sdpa sd = time_sdpa(q, dout, reps);
    std::printf("%7ld %4s %6s | %8.2f %6.1f %5s | %8.2f %6.1f %5s | %8.2f %6s |\n", T, "SDPA", "dense", sd.fwd_ms,
                sd.fwd_tflops, "", sd.fwd_bwd_ms - sd.fwd_ms, sd.bwd_tflops, "", sd.fwd_bwd_ms, "");
    std::fflush(stdout);
    for (const int64_t Hkv : cfg.kv_heads) {
      Tensor k = torch::randn({1, Hkv, T, d}, opt), v = torch::randn({1, Hkv, T, d}, opt);
      Tensor o = torch::empty_like(q), dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
      Tensor lse = torch::empty({1, Hq, T}, opt.dtype(torch::kFloat32));
      const kn::BsaShape shape{1, Hq, Hkv, T, d};
      Tensor scratch = torch::empty({static_cast<int64_t>(kn::bsa_backward_scratch_bytes(shape))},
                                    opt.dtype(torch::kUInt8));
      for (const double sp : cfg.sparsities) {
        double measured;
        int64_t att_kv;
        const BlockLists lists = bench_lists(Hkv, T, sp, rng, &measured, &att_kv);
        const double pairs = static_cast<double>(att_kv) * (Hq / Hkv);
        kn::BsaRows rows_k;
        rows_k.row_ptr = lists.row_ptr.data_ptr<int64_t>();
        rows_k.blocks = lists.blocks.data_ptr<int32_t>();
        rows_k.nnz = lists.blocks.numel();
        Plan plan = make_plan(lists, 1, Hq, Hkv, T, d);
        auto fwd = [&] {
          check_launch(
              kn::bsa_forward(shape, kn::BsaDtype::kBf16, q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_k, plan.view,
                              scale, o.data_ptr(), lse.data_ptr<float>(), current_stream()),
              "bsa_forward");
        };
        auto bwd = [&] {
          check_launch(
              kn::bsa_backward(shape, kn::BsaDtype::kBf16, q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                               lse.data_ptr<float>(), dout.data_ptr(), rows_k, plan.view, scale, dq.data_ptr(),
                               dk.data_ptr(), dv.data_ptr(), nullptr, scratch.data_ptr(), current_stream()),
              "bsa_backward");
        };
        const double plan_ms = time_ms([&] { plan = make_plan(lists, 1, Hq, Hkv, T, d); }, reps);
        const double f_ms = time_ms(fwd, reps);
        const double b_ms = time_ms(bwd, reps);
        const double fb_ms = time_ms([&] {
          plan = make_plan(lists, 1, Hq, Hkv, T, d);
          fwd();
          bwd();
        }, reps);
        const double f_tf = 4.0 * d * pairs / f_ms / 1e9, b_tf = 10.0 * d * pairs / b_ms / 1e9;
        const double ideal = 1.0 / (1.0 - measured);
        const double spd_f = sd.fwd_ms / f_ms, spd_fb = sd.fwd_bwd_ms / fb_ms;
        std::printf("%7ld %4ld %6.4f | %8.2f %6.1f %4.0f%% | %8.2f %6.1f %4.0f%% | %8.2f %6.2f | %6.2f %6.2f %6.2f %6.2f\n",
                    T, Hkv, measured, f_ms, f_tf, 100 * f_tf / sd.fwd_tflops, b_ms, b_tf, 100 * b_tf / sd.bwd_tflops,
                    fb_ms, plan_ms, spd_f, spd_fb, ideal, spd_fb / ideal);
        std::fflush(stdout);
        rows.push_back(JsonObject()
                           .add("T", T).add("Hq", Hq).add("Hkv", Hkv).add("d", d)
                           .add("target_sparsity", sp).add("measured_sparsity", measured)
                           .add("attended_pairs", pairs).add("plan_ms", plan_ms).add("fwd_ms", f_ms)
                           .add("bwd_ms", b_ms).add("fwd_bwd_ms", fb_ms).add("fwd_tflops", f_tf)
                           .add("bwd_tflops", b_tf).add("sdpa_fwd_ms", sd.fwd_ms)
                           .add("sdpa_fwd_bwd_ms", sd.fwd_bwd_ms).add("sdpa_fwd_tflops", sd.fwd_tflops)
                           .add("sdpa_bwd_tflops", sd.bwd_tflops).add("speedup_fwd", spd_f)
                           .add("speedup_fwd_bwd", spd_fb).add("ideal_speedup", ideal)
                           .str());
      }
    }
  }
  if (!cfg.json_path.empty()) write_bench_json(cfg.json_path, cfg.command, rows);
}

}  // namespace st::cuda
#endif  // SPARSETRAIN_CUDA
