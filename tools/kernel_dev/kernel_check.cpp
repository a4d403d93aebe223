// Device harness for the block-sparse attention kernels.
//   kernel_check parity [--quick]     kernel vs an fp32 ATen reference over a shape grid
//   kernel_check bench [--json FILE] [--lengths N,N,..]   timing vs LibTorch SDPA: the same code
//                                     as `sparsetrain bench attention` (attention_bench.h)
//   kernel_check profile              one forward/backward at 16K for ncu
// Exit status is non-zero when any parity case misses its tolerance.
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "attention/cuda/attention_bench.h"
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
// through `bias`) over its block's keys, 0 on the diagonal block and on the window's other
// keys, -inf elsewhere and above the diagonal.
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
  if (l.window > 0) full = full.masked_fill(torch::isinf(full) & (key > t.unsqueeze(1) - l.window), 0.f);
  full = full.masked_fill(key > t.unsqueeze(1), -INFINITY);
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
  int window;  // > 0: a sliding window on top of the lists (empty lists when !bias)
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
  if (c.window > 0 && !c.bias) {
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
  lists.window = c.window;
  Tensor bias;
  if (c.bias) bias = torch::randn({lists.blocks.numel()}, torch::TensorOptions().device(dev));
  st::cuda::Plan plan = st::cuda::make_plan(lists, c.B, Hq, c.Hkv, c.T, c.d);
  const kn::BsaDtype dt = c.dt == torch::kBFloat16 ? kn::BsaDtype::kBf16 : kn::BsaDtype::kFp16;

  // Outputs poisoned with NaN: any element the kernels fail to write shows up.
  Tensor o = torch::full_like(q, NAN), lse = torch::full({c.B, Hq, c.T}, NAN, opt.dtype(torch::kFloat32));
  CK(kn::bsa_forward(plan.shape, dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_of(lists, bias),
                     plan.view, static_cast<float>(scale), o.data_ptr(), lse.data_ptr<float>(),
                     cur_stream()));
  CK(cudaDeviceSynchronize());
  const RefOut ref = reference(q, k, v, bias, lists, dout, scale, c.grads);
  const bool bf = c.dt == torch::kBFloat16;
  const double tol_o = bf ? 1e-2 : 3e-3, tol_g = bf ? 2e-2 : 6e-3;
  report(c, "O", compare(o, ref.o), tol_o);
  report(c, "LSE", compare(lse, ref.lse), 2e-3, true);
  {
    Tensor o2 = torch::full_like(q, NAN), lse2 = torch::full_like(lse, NAN);
    CK(kn::bsa_forward(plan.shape, dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), rows_of(lists, bias),
                       plan.view, static_cast<float>(scale), o2.data_ptr(), lse2.data_ptr<float>(),
                       cur_stream(), kn::BsaPath::kPortable));
    CK(cudaDeviceSynchronize());
    report(c, "O port.", compare(o2, ref.o), tol_o);
    report(c, "LSE port", compare(lse2, ref.lse), 2e-3, true);
  }
  if (!c.grads) return;
  // Both backward paths: the default (wgmma on Hopper) and the portable mma.sync one.
  for (const kn::BsaPath path : {kn::BsaPath::kAuto, kn::BsaPath::kPortable}) {
    const char* tag = path == kn::BsaPath::kAuto ? "" : "portable ";
    auto backward = [&](Tensor& dq, Tensor& dk, Tensor& dv, Tensor* dbias, Tensor& scratch) {
      dq = torch::full_like(q, NAN), dk = torch::full_like(k, NAN), dv = torch::full_like(v, NAN);
      if (dbias) *dbias = torch::full({lists.blocks.numel()}, NAN, opt.dtype(torch::kFloat32));
      CK(kn::bsa_backward(plan.shape, dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                          lse.data_ptr<float>(), dout.data_ptr(), rows_of(lists, bias), plan.view,
                          static_cast<float>(scale), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                          dbias ? dbias->data_ptr<float>() : nullptr, scratch.data_ptr(), cur_stream(), path));
      CK(cudaDeviceSynchronize());
    };
    // Scratch poisoned: the backward must zero its dQ accumulator itself.
    Tensor scratch = torch::full({static_cast<int64_t>(kn::bsa_backward_scratch_bytes(plan.shape))}, 0xff,
                                 opt.dtype(torch::kUInt8));
    Tensor dq, dk, dv, dbias;
    backward(dq, dk, dv, c.bias ? &dbias : nullptr, scratch);
    std::printf("  %sbackward\n", tag);
    report(c, "dQ", compare(dq, ref.dq), tol_g);
    report(c, "dK", compare(dk, ref.dk), tol_g);
    report(c, "dV", compare(dv, ref.dv), tol_g);
    if (c.bias && lists.blocks.numel() > 0) report(c, "dbias", compare(dbias, ref.dbias), tol_g);
    if (c.T >= 1000) {
      // Same inputs again: only the atomics' summation order may differ (rounding-level
      // changes); anything larger is a race.
      Tensor dq2, dk2, dv2;
      backward(dq2, dk2, dv2, nullptr, scratch);
      report(c, "dQ rerun", compare(dq2, dq), 2e-3);
      report(c, "dK rerun", compare(dk2, dk), 2e-3);
      report(c, "dV rerun", compare(dv2, dv), 2e-3);
    }
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
  // Group sizes that do not divide 64 (tiles straddle KV blocks); the sliding window alone and
  // on top of biased lists (one softmax over the union).
  cases.push_back({1, 2, 3, 1000, 64, torch::kBFloat16, true, true, 0});
  cases.push_back({2, 1, 6, 777, 128, torch::kHalf, true, true, 0});
  cases.push_back({1, 2, 4, 1000, 128, torch::kBFloat16, false, true, 100});
  cases.push_back({1, 1, 16, 4096, 64, torch::kBFloat16, false, true, 512});
  cases.push_back({1, 2, 4, 1000, 128, torch::kBFloat16, true, true, 100});
  cases.push_back({2, 1, 6, 777, 64, torch::kHalf, true, true, 30});
  cases.push_back({1, 1, 16, 4096, 128, torch::kBFloat16, true, true, 2048});
  // Forward at 16K.
  cases.push_back({1, 1, 16, 16384, 128, torch::kBFloat16, true, false, 0});
  cases.push_back({1, 2, 4, 16384, 64, torch::kHalf, false, false, 0});
  for (const Case& c : cases) run_case(c, rng);
  autograd_case();
  std::printf("parity: %d failure(s)\n", g_fail);
  return g_fail ? 1 : 0;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(',', b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::printf("no CUDA device\n");
    return 0;
  }
  bool do_parity = false, do_bench = false, quick = false;
  st::cuda::AttentionBenchConfig bench;
  bench.command = "kernel_check";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    bench.command += " " + a;
    if (a == "parity") {
      do_parity = true;
    } else if (a == "bench") {
      do_bench = true;
    } else if (a == "profile") {
      // One row (16K, Hkv 8, 87.5%) for ncu: ncu --clock-control none -k regex:bsa_ ...
      do_bench = true;
      bench.lengths = {16384};
      bench.kv_heads = {8};
      bench.sparsities = {0.875};
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--json" && i + 1 < argc) {
      bench.json_path = argv[++i];
      bench.command += std::string(" ") + argv[i];
    } else if (a == "--lengths" && i + 1 < argc) {
      bench.command += std::string(" ") + argv[i + 1];
      bench.lengths.clear();
      for (const std::string& n : split(argv[++i])) bench.lengths.push_back(std::stoll(n));
    } else {
      std::printf("usage: kernel_check [parity [--quick]] [bench [--json FILE] [--lengths N,N,..]] [profile]\n");
      return 2;
    }
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, torch %s\n", prop.name, prop.multiProcessorCount, TORCH_VERSION);
  int rc = 0;
  if (do_parity) rc |= parity(quick);
  if (do_bench) st::cuda::run_attention_bench(bench);
  return rc;
}
