// Device harness for the block-sparse attention kernels.
//   kernel_check parity [--quick]     kernel vs an fp32 ATen reference over a shape grid
//   kernel_check bench [--json FILE] [--max-t N]   timing vs LibTorch SDPA (flash), dense causal
//   kernel_check profile              one forward/backward at 16K for ncu
// Exit status is non-zero when any parity case misses its tolerance.
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention/cuda/block_sparse.h"
#include "block_sparse_attention.h"

namespace kn = st::kernels;
using torch::Tensor;

namespace {

#define CK(x)                                                                          \
  do {                                                                                 \
    int rc_ = (x);                                                                     \
    if (rc_) {                                                                         \
      std::fprintf(stderr, "%s failed: %d (%s)\n", #x, rc_,                            \
                   rc_ > 0 ? cudaGetErrorString(static_cast<cudaError_t>(rc_)) : "shape"); \
      std::exit(2);                                                                    \
    }                                                                                  \
  } while (0)

cudaStream_t cur_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

kn::BsaRows rows_of(const st::cuda::BlockLists& l, const Tensor& bias) {
  kn::BsaRows r;
  r.row_ptr = l.row_ptr.data_ptr<int64_t>();
  r.blocks = l.blocks.data_ptr<int32_t>();
  r.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  r.nnz = l.blocks.numel();
  r.window = l.window;
  return r;
}

// ---- reference ----------------------------------------------------------------------------

// Dense additive mask [B, Hkv, 1, T, T] from the lists: the entry's bias (differentiable
// through `bias`) over its block's keys, 0 on the diagonal block, -inf elsewhere and above the
// diagonal (and outside the window).
Tensor dense_bias(const st::cuda::BlockLists& l, const Tensor& bias, int64_t B, int64_t Hkv,
                  int64_t T) {
  const auto dev = l.row_ptr.device();
  const int64_t nb = (T + 63) / 64, rows = B * Hkv * T;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  Tensor counts = l.row_ptr.slice(0, 1) - l.row_ptr.slice(0, 0, rows);
  Tensor entry_row = torch::repeat_interleave(torch::arange(rows, i64), counts);
  Tensor vals = bias.defined() ? bias : torch::zeros({l.blocks.numel()}, f32);
  Tensor bb = torch::full({rows, nb}, -INFINITY, f32);
  bb = bb.index_put({entry_row, l.blocks.to(torch::kInt64)}, vals);
  Tensor t = torch::arange(rows, i64).remainder(T);
  bb = bb.index_put({torch::arange(rows, i64), t.div(64, "floor")}, torch::zeros({rows}, f32));
  Tensor full = bb.repeat_interleave(64, 1).slice(1, 0, T);  // [rows, T]
  Tensor key = torch::arange(T, i64).unsqueeze(0);
  Tensor masked = key > t.unsqueeze(1);
  if (l.window > 0) masked = masked.logical_or(key <= t.unsqueeze(1) - l.window);
  full = full.masked_fill(masked, -INFINITY);
  return full.reshape({B, Hkv, 1, T, T});
}

struct RefOut {
  Tensor o, lse, dq, dk, dv, dbias;
};

// fp32 reference on the same (rounded) inputs. With grads: full autograd; without: query
// chunks, so that T = 16384 fits.
RefOut reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                 const st::cuda::BlockLists& l, const Tensor& dout, double scale, bool grads) {
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), d = q.size(3), Hkv = k.size(1);
  const int64_t G = Hq / Hkv;
  RefOut r;
  if (grads) {
    Tensor qf = q.to(torch::kFloat32).requires_grad_(true);
    Tensor kf = k.to(torch::kFloat32).requires_grad_(true);
    Tensor vf = v.to(torch::kFloat32).requires_grad_(true);
    Tensor bf = bias.defined() ? bias.clone().requires_grad_(true) : bias;
    Tensor s = torch::matmul(qf.view({B, Hkv, G, T, d}), kf.unsqueeze(2).transpose(-1, -2)) * scale +
               dense_bias(l, bf, B, Hkv, T);
    Tensor lse = torch::logsumexp(s, -1);
    Tensor o = torch::matmul(torch::softmax(s, -1), vf.unsqueeze(2)).view({B, Hq, T, d});
    o.backward(dout.to(torch::kFloat32));
    r.o = o.detach();
    r.lse = lse.detach().view({B, Hq, T});
    r.dq = qf.grad();
    r.dk = kf.grad();
    r.dv = vf.grad();
    if (bf.defined()) r.dbias = bf.grad();
    return r;
  }
  torch::NoGradGuard ng;
  Tensor mask = dense_bias(l, bias, B, Hkv, T);
  Tensor qf = q.to(torch::kFloat32).view({B, Hkv, G, T, d});
  Tensor kt = k.to(torch::kFloat32).unsqueeze(2).transpose(-1, -2);
  Tensor vf = v.to(torch::kFloat32).unsqueeze(2);
  std::vector<Tensor> os, ls;
  const int64_t chunk = 2048;
  for (int64_t r0 = 0; r0 < T; r0 += chunk) {
    const int64_t r1 = std::min(T, r0 + chunk);
    Tensor s = torch::matmul(qf.slice(3, r0, r1), kt) * scale + mask.slice(3, r0, r1);
    ls.push_back(torch::logsumexp(s, -1));
    os.push_back(torch::matmul(torch::softmax(s, -1), vf));
  }
  r.o = torch::cat(os, 3).view({B, Hq, T, d});
  r.lse = torch::cat(ls, 3).view({B, Hq, T});
  return r;
}

// ---- parity ---------------------------------------------------------------------------------

struct Err {
  double max_abs = 0, rel = 0;
  bool nan = false;
};
Err compare(const Tensor& out, const Tensor& ref) {
  Tensor o = out.to(torch::kFloat64), r = ref.to(torch::kFloat64);
  Err e;
  e.nan = !torch::isfinite(o).all().item<bool>();
  e.max_abs = (o - r).abs().max().item<double>();
  const double n = r.norm().item<double>();
  e.rel = (o - r).norm().item<double>() / (n > 0 ? n : 1.0);
  return e;
}

// Checks that the GPU-built CSR equals the set semantics of the top-k ids (host, small T).
bool lists_match(const Tensor& ids, const st::cuda::BlockLists& l) {
  Tensor idc = ids.cpu().contiguous(), rp = l.row_ptr.cpu(), bl = l.blocks.cpu();
  const int64_t rows = idc.size(0) * idc.size(1) * idc.size(2), k = idc.size(3), T = idc.size(2);
  const int32_t* id = idc.data_ptr<int32_t>();
  const int64_t* p = rp.data_ptr<int64_t>();
  const int32_t* b = bl.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    std::set<int> want;
    const int diag = static_cast<int>((r % T) / 64);
    for (int64_t i = 0; i < k; ++i)
      if (id[r * k + i] >= 0 && id[r * k + i] < diag) want.insert(id[r * k + i]);
    std::vector<int> got(b + p[r], b + p[r + 1]);
    if (std::vector<int>(want.begin(), want.end()) != got) return false;
  }
  return true;
}

struct Case {
  int64_t B, Hkv, G, T, d;
  torch::ScalarType dt;
  bool bias, grads;
  int window;  // > 0: sliding-window lists instead of random top-k lists
};

int g_fail = 0;

void report(const Case& c, const char* what, const Err& e, double tol, bool abs_metric = false) {
  const double m = abs_metric ? e.max_abs : e.rel;
  const bool ok = !e.nan && m <= tol;
  if (!ok) ++g_fail;
  std::printf("  %-8s max_abs %.3e  rel %.3e  tol(%s) %.0e  %s\n", what, e.max_abs, e.rel,
              abs_metric ? "abs" : "rel", tol, ok ? "ok" : "FAIL");
}

void run_case(const Case& c, std::mt19937& rng) {
  const auto dev = torch::Device(torch::kCUDA);
  const int64_t Hq = c.Hkv * c.G, nb = (c.T + 63) / 64;
  const auto opt = torch::TensorOptions().dtype(c.dt).device(dev);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  std::printf("case B=%ld Hq=%ld Hkv=%ld T=%ld d=%ld %s bias=%d window=%d grads=%d\n", c.B, Hq,
              c.Hkv, c.T, c.d, c.dt == torch::kBFloat16 ? "bf16" : "fp16", c.bias, c.window,
              c.grads);
  Tensor q = torch::randn({c.B, Hq, c.T, c.d}, opt);
  Tensor k = torch::randn({c.B, c.Hkv, c.T, c.d}, opt);
  Tensor v = torch::randn({c.B, c.Hkv, c.T, c.d}, opt);
  Tensor dout = torch::randn({c.B, Hq, c.T, c.d}, opt);

  st::cuda::BlockLists lists;
  if (c.window > 0) {
    lists = st::cuda::lists_window(c.B, c.Hkv, c.T, c.window, dev);
  } else {
    // Random top-k ids with padding, duplicates and out-of-range entries; 20% of rows empty
    // (only the diagonal block).
    const int64_t kk = std::max<int64_t>(4, std::min<int64_t>(nb, 12));
    Tensor ids = torch::randint(-1, nb + 1, {c.B, c.Hkv, c.T, kk},
                                torch::TensorOptions().dtype(torch::kInt32).device(dev));
    Tensor empty = torch::rand({c.B, c.Hkv, c.T, 1}, torch::TensorOptions().device(dev)) < 0.2;
    ids = ids.masked_fill(empty, -1);
    lists = st::cuda::lists_from_topk(ids);
    if (c.T <= 1024) {
      const bool ok = lists_match(ids, lists);
      if (!ok) ++g_fail;
      std::printf("  lists  top-k -> CSR builder %s\n", ok ? "ok" : "FAIL");
    }
  }
  Tensor bias;
  if (c.bias) bias = torch::randn({lists.blocks.numel()}, torch::TensorOptions().device(dev));
  st::cuda::Plan plan = st::cuda::make_plan(lists, c.B, Hq, c.Hkv, c.T, c.d);
  const kn::BsaDtype dt = c.dt == torch::kBFloat16 ? kn::BsaDtype::kBf16 : kn::BsaDtype::kFp16;

  // Outputs poisoned with NaN: any element the kernels fail to write shows up.
  Tensor o = torch::full_like(q, NAN), lse = torch::full({c.B, Hq, c.T}, NAN, opt.dtype(torch::kFloat32));
  CK(kn::bsa_forward(plan.shape, dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_of(lists, bias),
                     plan.view, static_cast<float>(scale), o.data_ptr(), lse.data_ptr<float>(),
                     cur_stream()));
  // The 32-rows-per-warp schedule too.
  Tensor o16 = torch::full_like(q, NAN), lse16 = torch::full_like(lse, NAN);
  CK(kn::bsa_forward(plan.shape, dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_of(lists, bias),
                     plan.view, static_cast<float>(scale), o16.data_ptr(), lse16.data_ptr<float>(),
                     cur_stream(), 32));
  Tensor dq = torch::full_like(q, NAN), dk = torch::full_like(k, NAN), dv = torch::full_like(v, NAN);
  Tensor dbias, delta = torch::full_like(lse, NAN);
  if (c.grads) {
    if (c.bias) dbias = torch::full({lists.blocks.numel()}, NAN, opt.dtype(torch::kFloat32));
    CK(kn::bsa_backward(plan.shape, dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                        lse.data_ptr<float>(), dout.data_ptr(), rows_of(lists, bias), plan.view,
                        static_cast<float>(scale), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                        c.bias ? dbias.data_ptr<float>() : nullptr, delta.data_ptr<float>(),
                        cur_stream()));
  }
  CK(cudaDeviceSynchronize());
  const RefOut ref = reference(q, k, v, bias, lists, dout, scale, c.grads);
  const bool bf = c.dt == torch::kBFloat16;
  const double tol_o = bf ? 1e-2 : 3e-3, tol_g = bf ? 2e-2 : 6e-3;
  report(c, "O", compare(o, ref.o), tol_o);
  report(c, "LSE", compare(lse, ref.lse), 2e-3, true);
  report(c, "O(r32)", compare(o16, ref.o), tol_o);
  report(c, "LSE(r32)", compare(lse16, ref.lse), 2e-3, true);
  if (c.grads) {
    report(c, "dQ", compare(dq, ref.dq), tol_g);
    report(c, "dK", compare(dk, ref.dk), tol_g);
    report(c, "dV", compare(dv, ref.dv), tol_g);
    if (c.bias && lists.blocks.numel() > 0) report(c, "dbias", compare(dbias, ref.dbias), tol_g);
  }
}

// The autograd Function against the raw launchers' reference, once.
void autograd_case() {
  const auto dev = torch::Device(torch::kCUDA);
  const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(dev);
  const int64_t B = 1, Hkv = 2, G = 4, T = 700, d = 64, nb = (T + 63) / 64;
  Tensor q = torch::randn({B, Hkv * G, T, d}, opt).requires_grad_(true);
  Tensor k = torch::randn({B, Hkv, T, d}, opt).requires_grad_(true);
  Tensor v = torch::randn({B, Hkv, T, d}, opt).requires_grad_(true);
  Tensor ids = torch::randint(-1, nb, {B, Hkv, T, 6}, torch::TensorOptions().dtype(torch::kInt32).device(dev));
  st::cuda::BlockLists lists = st::cuda::lists_from_topk(ids);
  Tensor bias = torch::randn({lists.blocks.numel()}, torch::TensorOptions().device(dev)).requires_grad_(true);
  Tensor dout = torch::randn({B, Hkv * G, T, d}, opt);
  Tensor o = st::cuda::block_sparse_attention(q, k, v, bias, lists);
  o.backward(dout);
  const RefOut ref = reference(q.detach(), k.detach(), v.detach(), bias.detach(), lists, dout,
                               1.0 / std::sqrt(double(d)), true);
  Case c{B, Hkv, G, T, d, torch::kBFloat16, true, true, 0};
  std::printf("case autograd Function (bf16, B=1 Hq=8 Hkv=2 T=700 d=64, bias)\n");
  report(c, "O", compare(o, ref.o), 1e-2);
  report(c, "dQ", compare(q.grad(), ref.dq), 2e-2);
  report(c, "dK", compare(k.grad(), ref.dk), 2e-2);
  report(c, "dV", compare(v.grad(), ref.dv), 2e-2);
  report(c, "dbias", compare(bias.grad(), ref.dbias), 2e-2);
}

int parity(bool quick) {
  std::mt19937 rng(1234);
  torch::manual_seed(1234);
  std::vector<Case> cases;
  const int64_t Ts[] = {1, 63, 64, 1000, 4096};
  for (int64_t T : Ts)
    for (int64_t G : {1, 4, 16})
      for (int64_t d : {64, 128})
        for (auto dt : {torch::kBFloat16, torch::kHalf}) {
          if (quick && (dt == torch::kHalf || d == 64) && T > 64) continue;
          const int64_t Hkv = G == 16 ? 1 : 2;
          const int64_t B = (T <= 1000 && G != 4) ? 2 : 1;
          cases.push_back({B, Hkv, G, T, d, dt, /*bias=*/(T + G + d) % 2 == 0 || G == 16, true, 0});
        }
  // Group sizes that do not divide 64 (tiles straddle KV blocks), and the sliding window.
  cases.push_back({1, 2, 3, 1000, 64, torch::kBFloat16, true, true, 0});
  cases.push_back({2, 1, 6, 777, 128, torch::kHalf, true, true, 0});
  cases.push_back({1, 2, 4, 1000, 128, torch::kBFloat16, false, true, 100});
  cases.push_back({1, 1, 16, 4096, 64, torch::kBFloat16, false, true, 512});
  // Forward at 16K.
  cases.push_back({1, 1, 16, 16384, 128, torch::kBFloat16, true, false, 0});
  cases.push_back({1, 2, 4, 16384, 64, torch::kHalf, false, false, 0});
  for (const Case& c : cases) run_case(c, rng);
  autograd_case();
  std::printf("parity: %d failure(s)\n", g_fail);
  return g_fail ? 1 : 0;
}

// ---- bench ----------------------------------------------------------------------------------

// Median over reps of fn, in ms, with CUDA events.
template <typename F>
double time_ms(F fn, int reps) {
  fn();  // warm-up
  std::vector<double> ts;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, cur_stream());
    fn();
    cudaEventRecord(b, cur_stream());
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    ts.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// Lists shared by the 64 positions of each query block (as block-level selection produces),
// random past blocks, count chosen so attended/causal pairs ~ 1 - sparsity. Built on the host.
st::cuda::BlockLists bench_lists(int64_t Hkv, int64_t T, double sparsity, std::mt19937& rng,
                                 double* measured, int64_t* attended_pairs) {
  const int64_t nb = (T + 63) / 64;
  std::vector<int64_t> row_ptr(Hkv * T + 1, 0);
  std::vector<int32_t> blocks;
  std::vector<int32_t> pool;
  int64_t att = 0, causal = 0;
  for (int64_t h = 0; h < Hkv; ++h)
    for (int64_t qb = 0; qb < nb; ++qb) {
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
  st::cuda::BlockLists l;
  l.row_ptr = torch::from_blob(row_ptr.data(), {(int64_t)row_ptr.size()}, torch::kInt64).to(torch::kCUDA);
  l.blocks = torch::from_blob(blocks.data(), {(int64_t)blocks.size()}, torch::kInt32).to(torch::kCUDA);
  *measured = 1.0 - double(att) / double(causal);
  *attended_pairs = att;  // per KV head's query positions; x G heads later
  return l;
}

int bench(const std::string& json_path, int64_t max_t) {
  std::mt19937 rng(7);
  torch::manual_seed(7);
  auto& ctx = at::globalContext();
  ctx.setSDPUseFlash(true);
  ctx.setSDPUseFA3(false);
  ctx.setSDPUseMemEfficient(false);
  ctx.setSDPUseMath(false);
  ctx.setSDPUseCuDNN(false);
  const int64_t Hq = 32, d = 128;
  const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::FILE* js = json_path.empty() ? nullptr : std::fopen(json_path.c_str(), "w");
  if (js) std::fprintf(js, "{\"device\": \"%s\", \"rows\": [\n", prop.name);
  bool first_row = true;
  std::printf("\n%-6s %-4s %-8s %-7s | %9s %9s %7s | %9s %9s %7s | %7s %7s %6s | %6s %8s\n", "T", "Hkv",
              "target", "meas.", "fwd ms", "fwd TF/s", "vsSDPA", "f+b ms", "bwd TF/s", "vsSDPA",
              "spd fwd", "spd f+b", "ideal", "plan", "fwd r32");
  for (int64_t T : {8192, 16384, 32768, 65536, 131072}) {
    if (T > max_t) continue;
    const int reps = T <= 32768 ? 10 : (T <= 65536 ? 5 : 3);
    // SDPA dense causal, flash backend; K/V expanded to Hq heads (same FLOPs as GQA).
    Tensor q = torch::randn({1, Hq, T, d}, opt), dout = torch::randn({1, Hq, T, d}, opt);
    Tensor kx = torch::randn({1, Hq, T, d}, opt), vx = torch::randn({1, Hq, T, d}, opt);
    const double dense_pairs = double(Hq) * T * (T + 1) / 2;
    double sdpa_f, sdpa_fb;
    {
      torch::NoGradGuard ng;
      sdpa_f = time_ms([&] { at::scaled_dot_product_attention(q, kx, vx, {}, 0.0, true); }, reps);
    }
    {
      Tensor qg = q.detach().requires_grad_(true), kg = kx.detach().requires_grad_(true),
             vg = vx.detach().requires_grad_(true);
      sdpa_fb = time_ms([&] {
        Tensor o = at::scaled_dot_product_attention(qg, kg, vg, {}, 0.0, true);
        o.backward(dout);
      }, reps);
    }
    const double sdpa_f_tf = 4.0 * d * dense_pairs / sdpa_f / 1e9;
    const double sdpa_b_tf = 10.0 * d * dense_pairs / (sdpa_fb - sdpa_f) / 1e9;
    std::printf("%-6ld %-4s %-8s %-7s | %9.2f %9.1f %7s | %9.2f %9.1f %7s |\n", T, "SDPA", "dense",
                "0", sdpa_f, sdpa_f_tf, "", sdpa_fb, sdpa_b_tf, "");
    kx = Tensor();
    vx = Tensor();
    for (int64_t Hkv : {2, 8}) {
      Tensor k = torch::randn({1, Hkv, T, d}, opt), v = torch::randn({1, Hkv, T, d}, opt);
      for (double sp : {0.75, 0.875, 0.9375}) {
        double measured;
        int64_t att_kv;
        st::cuda::BlockLists lists = bench_lists(Hkv, T, sp, rng, &measured, &att_kv);
        const double pairs = double(att_kv) * (Hq / Hkv);
        st::cuda::Plan plan;
        const double plan_ms = time_ms([&] { plan = st::cuda::make_plan(lists, 1, Hq, Hkv, T, d); }, reps);
        Tensor o = torch::empty_like(q), dq = torch::empty_like(q), dk = torch::empty_like(k),
               dv = torch::empty_like(v);
        Tensor lse = torch::empty({1, Hq, T}, opt.dtype(torch::kFloat32)), delta = torch::empty_like(lse);
        const kn::BsaRows rows = rows_of(lists, Tensor());
        auto fwd_rows = [&](int rows_per_warp) {
          CK(kn::bsa_forward(plan.shape, kn::BsaDtype::kBf16, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                             rows, plan.view, 1.f / std::sqrt(float(d)), o.data_ptr(),
                             lse.data_ptr<float>(), cur_stream(), rows_per_warp));
        };
        auto fwd = [&] { fwd_rows(16); };
        const double f32_ms = time_ms([&] { fwd_rows(32); }, reps);
        auto bwd = [&] {
          CK(kn::bsa_backward(plan.shape, kn::BsaDtype::kBf16, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                              o.data_ptr(), lse.data_ptr<float>(), dout.data_ptr(), rows, plan.view,
                              1.f / std::sqrt(float(d)), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                              nullptr, delta.data_ptr<float>(), cur_stream()));
        };
        const double f_ms = time_ms(fwd, reps);
        const double fb_ms = time_ms([&] { fwd(); bwd(); }, reps);
        const double f_tf = 4.0 * d * pairs / f_ms / 1e9;
        const double b_tf = 10.0 * d * pairs / (fb_ms - f_ms) / 1e9;
        const double ideal = 1.0 / (1.0 - measured);
        std::printf("%-6ld %-4ld %-8.4f %-7.4f | %9.2f %9.1f %6.0f%% | %9.2f %9.1f %6.0f%% | %7.2f %7.2f %6.2f | %6.2f %8.2f\n",
                    T, Hkv, sp, measured, f_ms, f_tf, 100 * f_tf / sdpa_f_tf, fb_ms, b_tf,
                    100 * b_tf / sdpa_b_tf, sdpa_f / f_ms, sdpa_fb / fb_ms, ideal, plan_ms, f32_ms);
        std::fflush(stdout);
        if (js) {
          std::fprintf(js,
                       "%s  {\"T\": %ld, \"Hq\": %ld, \"Hkv\": %ld, \"d\": %ld, \"target_sparsity\": %.4f, "
                       "\"measured_sparsity\": %.6f, \"attended_pairs\": %.0f, \"fwd_ms\": %.4f, "
                       "\"fwd_bwd_ms\": %.4f, \"plan_ms\": %.4f, \"fwd_ms_rows32\": %.4f, \"fwd_tflops\": %.2f, \"bwd_tflops\": %.2f, "
                       "\"sdpa_fwd_ms\": %.4f, \"sdpa_fwd_bwd_ms\": %.4f, \"sdpa_fwd_tflops\": %.2f, "
                       "\"sdpa_bwd_tflops\": %.2f, \"speedup_fwd\": %.3f, \"speedup_fwd_bwd\": %.3f, "
                       "\"ideal_speedup\": %.3f}",
                       first_row ? "" : ",\n", T, Hq, Hkv, d, sp, measured, pairs, f_ms, fb_ms, plan_ms, f32_ms,
                       f_tf, b_tf, sdpa_f, sdpa_fb, sdpa_f_tf, sdpa_b_tf, sdpa_f / f_ms, sdpa_fb / fb_ms,
                       ideal);
          first_row = false;
        }
      }
    }
  }
  if (js) {
    std::fprintf(js, "\n]}\n");
    std::fclose(js);
  }
  return 0;
}

// One forward (both schedules) and one backward at T = 16384, Hq 32, Hkv 8, d 128, 87.5%
// sparsity: a short run for ncu to profile (ncu --clock-control none -k regex:bsa_ ...).
int profile() {
  std::mt19937 rng(11);
  const int64_t Hq = 32, Hkv = 8, T = 16384, d = 128;
  const auto opt = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  double measured;
  int64_t att;
  st::cuda::BlockLists lists = bench_lists(Hkv, T, 0.875, rng, &measured, &att);
  st::cuda::Plan plan = st::cuda::make_plan(lists, 1, Hq, Hkv, T, d);
  Tensor q = torch::randn({1, Hq, T, d}, opt), k = torch::randn({1, Hkv, T, d}, opt),
         v = torch::randn({1, Hkv, T, d}, opt), dout = torch::randn({1, Hq, T, d}, opt);
  Tensor o = torch::empty_like(q), dq = torch::empty_like(q), dk = torch::empty_like(k),
         dv = torch::empty_like(v);
  Tensor lse = torch::empty({1, Hq, T}, opt.dtype(torch::kFloat32)), delta = torch::empty_like(lse);
  const kn::BsaRows rows = rows_of(lists, Tensor());
  const float scale = 1.f / std::sqrt(float(d));
  for (int rpw : {32, 16})
    CK(kn::bsa_forward(plan.shape, kn::BsaDtype::kBf16, q.data_ptr(), k.data_ptr(), v.data_ptr(), rows,
                       plan.view, scale, o.data_ptr(), lse.data_ptr<float>(), cur_stream(), rpw));
  CK(kn::bsa_backward(plan.shape, kn::BsaDtype::kBf16, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                      o.data_ptr(), lse.data_ptr<float>(), dout.data_ptr(), rows, plan.view, scale,
                      dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), nullptr, delta.data_ptr<float>(),
                      cur_stream()));
  CK(cudaDeviceSynchronize());
  std::printf("profile: done (measured sparsity %.4f)\n", measured);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  bool do_parity = false, do_bench = false, quick = false;
  std::string json;
  int64_t max_t = 131072;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "parity") do_parity = true;
    else if (a == "bench") do_bench = true;
    else if (a == "--quick") quick = true;
    else if (a == "profile") return profile();
    else if (a == "--json" && i + 1 < argc) json = argv[++i];
    else if (a == "--max-t" && i + 1 < argc) max_t = std::stoll(argv[++i]);
    else {
      std::printf("usage: kernel_check [parity [--quick]] [bench [--json FILE] [--max-t N]]\n");
      return 2;
    }
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, torch %s\n", prop.name, prop.multiProcessorCount, TORCH_VERSION);
  int rc = 0;
  if (do_parity) rc |= parity(quick);
  if (do_bench) rc |= bench(json, max_t);
  return rc;
}
