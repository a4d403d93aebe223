// The passes that walk a query tile's blocks: the forward of block-sparse attention and the
// backward's dQ. A CTA of 4 warps takes one query tile of the plan (64 MMA rows); each warp
// owns 16 rows. The CTA walks the ascending union of the tile's block lists (built by
// bsa_plan), double-buffering K/V blocks (by TMA on sm_90, cp.async elsewhere; the query tile
// by cp.async, once). A row that does not read a block gets -inf for it; a warp none of whose
// rows reads the block skips its MMAs. Token masks
// (causal on the diagonal block, the window's edge in a block only the window reaches) are
// applied only where a row needs one.
// Forward: the flash online softmax in fp32; writes O and the log-sum-exp.
// dQ (backward): with the saved log-sum-exp, P = exp(S - lse) directly, dP = dO V^T, dS =
// P (dP - delta) and dQ += dS K in registers, written once at the end. bsa_backward.cu's
// kernel walks the other way (a KV block's query tiles) for dK, dV and d(bias); computing dQ
// there too took fp32 atomics for every (tile, block), which L2 could not absorb (NOTES.md).
// This pass recomputes S and dP (two more matmuls per pair) and needs none.
// The dQ pass also sums P dP over each row's blocks and leaves that sum in delta for the dK/dV
// kernel, which runs after it. The prep kernel's delta = dO . O takes O as the forward wrote
// it, from P rounded to 16 bits and O rounded again: ~2^-9 relative off the sum of P dP that
// makes each row of dS sum to 0. dQ tolerates that (as in FlashAttention); d(bias), a sum of
// dS over a block, gets delta's error times the block's probability mass, which DashAttention's
// prior then amplifies (NOTES.md, Dash gradient). The sum costs one FMA per element here,
// where the alternative (P V from P's high and low 16-bit parts in the forward, and O's
// rounding residual kept for the backward) cost one more MMA per forward step.
//
// kWgmma (sm_90): the matmuls as warpgroup MMAs over the whole tile (Q, dO, K and V straight
// from shared memory, P or dS from registers, and Q from registers in the forward at d 128;
// bsa_wgmma.cuh) instead of per-warp mma.sync with ldmatrix fragments. The warpgroup runs every block of the union (no
// per-warp skip: a row that does not read the block gets probability 0 from its -inf bias).
//
// Measured and dropped (H200, 2026-11-23, NOTES.md v2b): 32 rows per warp, so that each K/V
// fragment feeds two row blocks. Half the ldmatrix traffic per MMA, but it spilled at d = 128
// and ran 10-15% slower at every length.
#include "bsa_pipeline.cuh"
#include "bsa_tile.cuh"
#include "bsa_wgmma.cuh"

namespace st::kernels {
namespace {
using namespace dev;

// TMA maps of k and v (64 columns x 64 keys), for the sm_90 form.
struct KvMaps {
  CUtensorMap k, v;
};

// The forward on sm_90 at d 128 keeps Q in registers (the A operand of S = Q K^T) instead of
// shared memory: 64 KB of K/V stages per CTA, so three CTAs fit on an SM instead of two. Not at
// d 64, where shared memory does not limit occupancy, and where ptxas (CUDA 13.0) reused Q's
// registers inside the block loop after the first wgmma (SASS: the A registers of S = Q K^T
// rewritten by the mask arithmetic and by P), so every block after a tile's first was wrong.
template <int D, TilePass kPass, bool kWgmma>
constexpr bool kQInRegisters = (kWgmma && kPass == TilePass::kForward && D == 128);

template <typename T, int D, TilePass kPass, bool kWgmma>
__global__ void __launch_bounds__(128, kQInRegisters<D, kPass, kWgmma> ? 3 : 1)
    bsa_tile_kernel(const BsaParams p, const __grid_constant__ KvMaps maps) {
  constexpr bool kDq = kPass == TilePass::kDq, kQRegs = kQInRegisters<D, kPass, kWgmma>;
  constexpr int kTile = 64 * D * 2;        // bytes of one 64 x D tile
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Tiles on 1024-byte boundaries, as wgmma's swizzle needs (the launch adds the slack).
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  __shared__ float s_bias[2][64];          // per stage: each row's bias (base 2) for the block
  __shared__ int s_lo[2][64];              // ... and the first key it reads there
  __shared__ __align__(8) uint64_t s_kv_full[2];  // sm_90: per stage, K and V landed (TMA)
  // Q (unless kQRegs), then two K stages, two V stages (and dO). kQRegs: Q is staged where V's
  // second stage goes and read into registers before that stage's first copy.
  const uint32_t base = smem_addr(smem), kv0 = kQRegs ? base : base + kTile;
  // Arithmetic, not arrays: a run-time index into a register array would go to local memory.
  auto sK = [&](int stage) { return kv0 + stage * kTile; };
  auto sV = [&](int stage) { return kv0 + (2 + stage) * kTile; };
  const uint32_t sQ = kQRegs ? sV(1) : base, sdO = base + 5 * kTile;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int tile_t = p.tiles_per_head - 1 - blockIdx.x;  // longest (latest) tiles first
  const int hkv = blockIdx.y, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const int64_t tile = bh * p.tiles_per_head + tile_t;
  const T* q = static_cast<const T*>(p.q);
  const T* kbase = static_cast<const T*>(p.k) + bh * p.T * D;
  const T* vbase = static_cast<const T*>(p.v) + bh * p.T * D;
  auto row_of = [&](int r) { return tile_row<D>(p, b, hkv, tile_t, r); };
  const int64_t ubeg = p.tile_ptr[tile];
  const int n_union = static_cast<int>(p.tile_ptr[tile + 1] - ubeg);

  // Thread tid < 64 walks tile row tid's list and publishes its bias and first key per block
  // in shared memory, so the MMA threads carry no list state.
  RowCursor cursor;
  if (tid < 64) cursor.init(p, row_of(tid));
  auto publish_bias = [&](int j, int stage) {
    if (tid < 64) s_bias[stage][tid] = cursor.step(p, j, &s_lo[stage][tid]);
  };
  // sm_90: one thread has TMA copy the block (zeros past T), its bytes completing the stage's
  // barrier; else all threads issue cp.async.
  const uint32_t kv_full = smem_addr(s_kv_full);
  if (kWgmma && tid == 0) {
    mbar_init(kv_full, 1);
    mbar_init(kv_full + 8, 1);
  }
  if constexpr (kWgmma) __syncthreads();  // the barriers are initialised before any copy or wait
  auto load_kv = [&](int j, int stage) {
    const int64_t key0 = static_cast<int64_t>(j) * kBsaBlock;
    if constexpr (kWgmma) {
      if (tid == 0) {
        mbar_arrive_expect_bytes(kv_full + 8 * stage, 2 * kTile);
        tma_load_tile_pair<D>(sK(stage), &maps.k, sV(stage), &maps.v, kv_full + 8 * stage, static_cast<int>(key0), hkv,
                              b);
      }
    } else {
      load_tile_async<D>(
          sK(stage), [&](int r) { return key0 + r < p.T ? kbase + (key0 + r) * D : nullptr; }, kbase, tid);
      load_tile_async<D>(
          sV(stage), [&](int r) { return key0 + r < p.T ? vbase + (key0 + r) * D : nullptr; }, vbase, tid);
    }
  };
  load_tile_async<D>(sQ, [&](int r) { const TileRow x = row_of(r); return x.valid ? q + x.off : nullptr; }, q, tid);
  if constexpr (kDq) {
    const T* dout = static_cast<const T*>(p.dout);
    load_tile_async<D>(sdO, [&](int r) { const TileRow x = row_of(r); return x.valid ? dout + x.off : nullptr; }, dout, tid);
  }
  int j_next = p.tile_blocks[ubeg];
  load_kv(j_next, 0);
  cp_async_commit();
  publish_bias(j_next, 0);

  // This thread's rows: g and g + 8 of its warp's 16.
  const int g = lane >> 2, c = lane & 3;
  const int wrow = warp * 16;
  int t_row[2];
  float lse2[2] = {}, delta2[2] = {};  // dQ: the row's log-sum-exp (base 2) and delta
  float p_dp[2] = {};                  // dQ: this thread's part of the row's sum of P dP
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const TileRow row = row_of(wrow + g + 8 * i);
    t_row[i] = static_cast<int>(row.t);
    if (kDq && row.valid) {
      lse2[i] = p.lse[row.lrow] * kLog2e;
      delta2[i] = p.delta[row.lrow];
    }
  }

  float acc[D / 8][4] = {};  // O (forward) or dQ / scale
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  uint32_t qf[kWgmma && !kQRegs ? 1 : D / 16][4];  // Q's A fragments, unless wgmma reads it from shared memory
  if constexpr (kQRegs) {
    cp_async_wait_all();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a(qf[kk], sQ, wrow, kk * 16, lane);
    // These reads before the TMA copy into V's second stage (after the loop's first barrier).
    fence_proxy_async();
  }

  for (int u = 0; u < n_union; ++u) {
    const int j = j_next, st = u & 1;
    if constexpr (kWgmma) {
      if (u == 0) {
        cp_async_wait_all();  // Q (and dO), by cp.async
        fence_proxy_async();
      }
      mbar_wait(kv_full + 8 * st, (u >> 1) & 1);
    } else {
      cp_async_wait_all();
    }
    __syncthreads();  // stage st landed and s_bias[st] is published; stage st^1 is free
    if (!kWgmma && u == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a(qf[kk], sQ, wrow, kk * 16, lane);
    }
    if (u + 1 < n_union) {
      j_next = p.tile_blocks[ubeg + u + 1];
      load_kv(j_next, st ^ 1);
      cp_async_commit();
      publish_bias(j_next, st ^ 1);
    }
    float bias2[2];
    int lo2[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      bias2[i] = s_bias[st][wrow + g + 8 * i];
      lo2[i] = s_lo[st][wrow + g + 8 * i];
    }
    if (!kWgmma && !__any_sync(0xffffffffu, bias2[0] != -INFINITY || bias2[1] != -INFINITY)) continue;

    // S = Q K^T for 16 rows x 64 keys per warp (and for dQ, dP = dO V^T).
    const uint32_t k_s = sK(st), v_s = sV(st);
    float s[8][4] = {}, dp[kDq ? 8 : 1][4] = {};
    if constexpr (kWgmma) {
      fence_operands(s);  // the zeroed accumulators in registers before the fence (bsa_backward.cu)
      fence_operands(dp);
      wgmma_fence();
      if constexpr (kQRegs)
        wgmma_regs_by_tile_t<T, D>(s, qf, k_s);
      else
        wgmma_tile_by_tile_t<T, D>(s, sQ, k_s);
      if constexpr (kDq) wgmma_tile_by_tile_t<T, D>(dp, sdO, v_s);
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(s);
      fence_operands(dp);
    } else {
      if constexpr (kDq) {
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t da[4];
          load_a(da, sdO, wrow, kk * 16, lane);
#pragma unroll
          for (int nn = 0; nn < 4; ++nn) {
            uint32_t bf[4];
            load_b_nk(bf, v_s, nn * 16, kk * 16, lane);
            mma<T>(dp[2 * nn], da, bf[0], bf[1]);
            mma<T>(dp[2 * nn + 1], da, bf[2], bf[3]);
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int nn = 0; nn < 4; ++nn) {
          uint32_t bf[4];
          load_b_nk(bf, k_s, nn * 16, kk * 16, lane);
          mma<T>(s[2 * nn], qf[kk], bf[0], bf[1]);
          mma<T>(s[2 * nn + 1], qf[kk], bf[2], bf[3]);
        }
      }
    }
    // Scale, bias, mask; online softmax in base 2 (dQ: P from the saved log-sum-exp and dS).
    // Only the diagonal block and the window's edge need the token mask.
    const int key0 = j * kBsaBlock + 2 * c;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int t = t_row[i];
      const bool need_mask = j * kBsaBlock + kBsaBlock - 1 > t || lo2[i] > j * kBsaBlock;
      if (need_mask) {  // a real branch: blocks read whole skip the compares
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (key_masked(key0 + nt * 8 + e, t, lo2[i])) s[nt][2 * i + e] = -INFINITY;
      }
      if constexpr (kDq) {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = fast_exp2(s[nt][2 * i + e] * p.scale_log2 + bias2[i] - lse2[i]);
            p_dp[i] += pe * dp[nt][2 * i + e];
            s[nt][2 * i + e] = pe * (dp[nt][2 * i + e] - delta2[i]);
          }
      } else {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float x = s[nt][2 * i + e] * p.scale_log2 + bias2[i];
            s[nt][2 * i + e] = x;
            mx = fmaxf(mx, x);
          }
        }
        const float m_new = fmaxf(m_run[i], quad_max(mx));
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = fast_exp2(m_run[i] - m_use);
        float rs = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = fast_exp2(s[nt][2 * i + e] - m_use);
            s[nt][2 * i + e] = pe;
            rs += pe;
          }
        }
        l_run[i] = l_run[i] * alpha + rs;
        m_run[i] = m_new;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          acc[nd][2 * i] *= alpha;
          acc[nd][2 * i + 1] *= alpha;
        }
      }
    }
    // O += P V, or dQ += dS K (s holds dS then).
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
    if constexpr (kWgmma) wgmma_fence();
    mma_regs_by_tile<T, D, kWgmma>(acc, pa, kDq ? k_s : v_s, lane);
    if constexpr (kWgmma) {
      wgmma_commit();
      wgmma_wait<0>();  // before the next iteration's barrier: that iteration refills this stage
      fence_operands(acc);
      fence_operands(pa);
    }
  }

  // Normalise and write O and the log-sum-exp (natural log); or write dQ (scaled) and the
  // row's sum of P dP into delta (which only this warp read in this pass, before its loop).
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float row_sum = quad_sum(kDq ? p_dp[i] : l_run[i]);  // every lane: the sum shuffles
    const TileRow row = row_of(wrow + g + 8 * i);
    if (!row.valid) continue;
    const float mul = kDq ? p.scale : 1.f / row_sum;
    uint32_t* orow = reinterpret_cast<uint32_t*>(out + row.off);
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) orow[nd * 4 + c] = Elem<T>::pack(acc[nd][2 * i] * mul, acc[nd][2 * i + 1] * mul);
    if (c == 0) {
      if constexpr (kDq) p.delta[row.lrow] = row_sum;
      else p.lse[row.lrow] = (m_run[i] + log2f(row_sum)) * 0.6931471805599453f;
    }
  }
}

template <typename T, int D, TilePass kPass>
int launch(const BsaParams& p, int64_t B, BsaPath path, cudaStream_t stream) {
  const bool hopper = path == BsaPath::kAuto && wgmma_runs_here(bsa_tile_kernel<T, D, kPass, true>);
  auto kernel = hopper ? bsa_tile_kernel<T, D, kPass, true> : bsa_tile_kernel<T, D, kPass, false>;
  // Q (unless in registers), two K and two V stages, dO for the dQ pass, alignment slack.
  const int tiles = kPass == TilePass::kDq ? 6 : hopper && kQInRegisters<D, kPass, true> ? 4 : 5;
  const int smem = tiles * 64 * D * 2 + 1024;
  KvMaps maps{};
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if (hopper) {
    if (const int rc = make_tile_map(&maps.k, p.k, kBf16, B, p.Hkv, p.T, D, kBsaBlock, 1)) return rc;
    if (const int rc = make_tile_map(&maps.v, p.v, kBf16, B, p.Hkv, p.T, D, kBsaBlock, 1)) return rc;
  }
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  // Three forward CTAs per SM need 3 x 65 KB: ask for the largest shared-memory carveout.
  if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100))) return e;
  kernel<<<dim3(p.tiles_per_head, p.Hkv, static_cast<unsigned>(B)), 128, smem, stream>>>(p, maps);
  return cudaGetLastError();
}

template <typename T, int D>
int launch(const BsaParams& p, int64_t B, TilePass pass, BsaPath path, cudaStream_t stream) {
  switch (pass) {
    case TilePass::kForward: return launch<T, D, TilePass::kForward>(p, B, path, stream);
    case TilePass::kDq: return launch<T, D, TilePass::kDq>(p, B, path, stream);
  }
  return kBsaBadShape;
}

}  // namespace

namespace dev {
int launch_tile_pass(const BsaParams& p, int64_t B, int d, bool bf16, TilePass pass, BsaPath path,
                     cudaStream_t stream) {
  if (d == 64)
    return bf16 ? launch<__nv_bfloat16, 64>(p, B, pass, path, stream) : launch<__half, 64>(p, B, pass, path, stream);
  return bf16 ? launch<__nv_bfloat16, 128>(p, B, pass, path, stream) : launch<__half, 128>(p, B, pass, path, stream);
}
}  // namespace dev

int bsa_forward(const BsaShape& s, BsaDtype dt, const void* q, const void* k, const void* v,
                const BsaRows& rows, const BsaPlan& plan, float scale, void* o, float* lse,
                cudaStream_t stream, BsaPath path) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv || s.group() > 16 || (s.d != 64 && s.d != 128) || s.T <= 0 ||
      s.B <= 0 || s.T > INT32_MAX / 2 || s.tiles_per_head() > INT32_MAX / 2 || s.Hkv > 65535 || s.B > 65535)
    return kBsaBadShape;
  dev::BsaParams p{};
  p.q = q; p.k = k; p.v = v; p.out = o; p.lse = lse;
  dev::set_lists_and_sizes(p, s, rows, plan, scale);
  return dev::launch_tile_pass(p, s.B, static_cast<int>(s.d), dt == BsaDtype::kBf16, dev::TilePass::kForward,
                               path, stream);
}

}  // namespace st::kernels
