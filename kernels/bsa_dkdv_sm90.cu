// dK, dV and d(bias) on Hopper, warp-specialized as in FlashAttention-3. The work is that of
// bsa_backward.cu's portable kernel: one CTA per (b, hkv, query window w, KV block j) takes the
// tiles of j's reverse list that lie in w; per tile S^T = K Q^T, dP^T = V dO^T, P^T from the
// saved log-sum-exp, dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q, and d(bias) of
// each selected (position, j) as dS summed over the block's keys and the group's heads. Here
// the CTA is three warpgroups with one role each:
//   producer (warpgroup 0, 40 registers a thread): warp w fills stage w with tiles w, w + 4,
//     w + 8, ...: the Q and dO rows by TMA, and per row bias - lse, delta, position and first
//     key read (the positions' list searches: dependent loads, made before the stage is free).
//     A stage's "full" barrier completes when its copies have landed and those values are
//     stored.
//   two consumers (warpgroups 1 and 2, 232 registers): consumer c takes tiles c, c + 2, ...
//     (stages c and c + 2) with the block's K and V, loaded once for both; each keeps its own
//     dK and dV in registers and adds them into the fp32 accumulators at the end. A consumer
//     frees a stage (its "empty" barrier) once its matmuls have read the stage.
// The single-warpgroup form had its own warps issue those copies and searches for the next
// tile and meet at a barrier per tile; with two such CTAs per SM the tensor pipe ran at 23% of
// its peak and the first matmul of each tile was the warps' top stall. Here the matmul warps
// wait only on stages that are already full (H200, 64K, 87.5%: the core's backward 46.6 -> 33.3
// ms; NOTES.md has the steps).
// Row order: TMA copies a tile as one box of G heads x P positions x 64 columns (per 64-column
// slab), so row r is head r / P of position r % P here, not r % G of r / G as in the other
// kernels (bsa_tile.cuh); the per-row values and the d(bias) sums follow that order.
#include "bsa_dkdv.cuh"
#include "bsa_pipeline.cuh"
#include "bsa_tile.cuh"
#include "bsa_wgmma.cuh"

namespace st::kernels::dev {
namespace {

// Tile u goes through stage u % 4, filled by producer warp u % 4 and consumed by consumer u % 2.
// A stage has one producer warp, which fills it in order: so each wait on its "empty" barrier is
// for the phase after the last one that warp saw complete (mbarrier waits go by parity only).
// Five stages would fit in shared memory but not that rule.
constexpr int kStages = 4;
constexpr int kConsumers = 2;  // warpgroups running the matmuls
constexpr int kThreads = 128 * (1 + kConsumers);
// 40 x 128 + 232 x 256 = 168 x 384, what the launch gives the CTA (ptxas: no spills; 224 for
// the consumers spills, 24 for the producer too).
constexpr int kProducerRegs = 40, kConsumerRegs = 232;

// What the producer stores with a stage's Q and dO rows, per tile row and per position.
struct StageValues {
  float bl[64];     // bias - lse for block j (base 2); -inf where the row does not read j
  float delta[64];  // the row's sum of P dP (the dQ pass's)
  int t[64];        // the row's position; -1: padding row
  int lo[64];       // first key the row reads in j
  int entry[64];    // per position: list entry of (position, j), -1 where j is not listed
  int t0;           // the tile's first position
};

// Tile row r of (b, hkv) reads lse row lrow0[r] + the tile's first position, and is position
// pos[r] of the tile (computed once per CTA); lrow0 -1: padding row.
struct RowTable {
  int64_t lrow0[64];
  int pos[64];
};

// The tensor maps of q and dout (boxes of 64 columns x P positions x G heads) and of k and v
// (64 columns x 64 keys).
struct TileMaps {
  CUtensorMap q, dout, k, v;
};

template <int D>
__device__ __forceinline__ void produce(const BsaParams& p, const TileMaps& maps, int b, int hkv, int j, int w0,
                                        int n_tiles, const uint16_t* tiles, const RowTable& rows, uint32_t stage0,
                                        StageValues* values, uint32_t full0, uint32_t empty0) {
  constexpr int kTile = 64 * D * 2;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const uint32_t box_bytes = 64 * 2 * p.P * p.G;  // one slab of one tile (zeros past T included)
  const int st = warp;
  const uint32_t full = full0 + 8 * st, sQ = stage0 + 2 * st * kTile, sdO = sQ + kTile;
  StageValues& m = values[st];
  for (int u = warp; u < n_tiles; u += kStages) {
    const int64_t t0 = static_cast<int64_t>(w0 + tiles[u]) * p.P;
    // First what needs no stage (its dependent loads overlap the wait below): positions lane
    // and lane + 32, their bias (base 2), first key and list entry for block j; ...
    float pbias[2];
    int plo[2], entry[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int pos = lane + 32 * h;
      const int64_t t = t0 + pos;
      entry[h] = -1;
      plo[h] = 0;
      pbias[h] = pos < p.P && t < p.T ? block_bias(p, bh * p.T + t, t, j, &entry[h], &plo[h]) : -INFINITY;
    }
    // ... and rows lane and lane + 32, with their position's values from the lane that searched it.
    float bl[2], delta[2];
    int row_t[2], row_lo[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = lane + 32 * h, pos = rows.pos[r];
      const float bias0 = __shfl_sync(0xffffffffu, pbias[0], pos & 31),
                  bias1 = __shfl_sync(0xffffffffu, pbias[1], pos & 31);
      const int lo0 = __shfl_sync(0xffffffffu, plo[0], pos & 31), lo1 = __shfl_sync(0xffffffffu, plo[1], pos & 31);
      const int64_t lrow = rows.lrow0[r] + t0;
      const bool valid = rows.lrow0[r] >= 0 && t0 + pos < p.T;
      bl[h] = valid ? (pos < 32 ? bias0 : bias1) - p.lse[lrow] * kLog2e : -INFINITY;
      delta[h] = valid ? p.delta[lrow] : 0.f;
      row_t[h] = valid ? static_cast<int>(t0 + pos) : -1;
      row_lo[h] = valid ? (pos < 32 ? lo0 : lo1) : 0;
    }
    if (u >= kStages) mbar_wait(empty0 + 8 * st, (u / kStages - 1) & 1);
    if (lane == 0) {
      mbar_arrive_expect_bytes(full, 2 * (D / 64) * box_bytes);
      tma_load_tile_pair<D>(sQ, &maps.q, sdO, &maps.dout, full, static_cast<int>(t0), hkv * p.G, b);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = lane + 32 * h;
      m.bl[r] = bl[h];
      m.delta[r] = delta[h];
      m.t[r] = row_t[h];
      m.lo[r] = row_lo[h];
      if (r < p.P) m.entry[r] = entry[h];
    }
    if (lane == 0) m.t0 = static_cast<int>(t0);
    mbar_arrive(full);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    bsa_dkdv_sm90_kernel(const BsaParams p, const __grid_constant__ TileMaps maps) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Tiles on 1024-byte boundaries, as wgmma's swizzle needs (the launch adds the slack).
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  constexpr int kTile = 64 * D * 2;
  // K, V, then per stage Q and dO.
  const uint32_t sK = smem_addr(smem), sV = sK + kTile, stage0 = sK + 2 * kTile;
  __shared__ StageValues s_values[kStages];
  __shared__ __align__(8) uint64_t s_full[kStages], s_empty[kStages], s_kv;
  // Per consumer, two buffers (tiles alternate), per warp: dS summed over its 16 keys, per row.
  __shared__ float s_colsum[kConsumers][2][4][64];
  __shared__ uint16_t s_tiles[kWindowTiles];
  __shared__ RowTable s_rows;
  __shared__ int s_n_tiles;

  const int tid = threadIdx.x, wg = tid >> 7;
  const int j = blockIdx.x, w = blockIdx.y;
  const int b = blockIdx.z / p.Hkv, hkv = blockIdx.z % p.Hkv;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const int w0 = w * kWindowTiles, w1 = min(w0 + kWindowTiles, p.tiles_per_head);
  // Tiles before the block's first position never select it: nothing to do.
  if ((static_cast<int64_t>(j) * kBsaBlock) / p.P >= w1) return;
  const uint32_t full0 = smem_addr(s_full), empty0 = smem_addr(s_empty), kv = smem_addr(&s_kv);
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full0 + 8 * s, 33);  // each producer lane (values stored), and the copies' bytes
      mbar_init(empty0 + 8 * s, 4);  // each warp of the stage's consumer
    }
    mbar_init(kv, 128);  // each producer thread (padding rows zeroed), and K's and V's bytes
  }
  if (tid < 64) {  // visible after the gather's barriers
    const bool real = tid < p.P * p.G;
    s_rows.pos[tid] = real ? tid % p.P : 0;
    s_rows.lrow0[tid] = real ? (static_cast<int64_t>(b) * p.Hq + hkv * p.G + tid / p.P) * p.T + tid % p.P : -1;
  }
  const int n_tiles = gather_window_tiles(p, bh, j, w0, w1, s_tiles, &s_n_tiles, tid, kThreads);
  if (n_tiles == 0) return;
  const int key0 = j * kBsaBlock;

  if (wg == 0) {
    warpgroup_regs_down<kProducerRegs>();
    // Rows past P x G (G not dividing 64) are never copied: zero them once, so that no stale
    // value (NaN, say) meets their zero probabilities in a matmul.
    for (int i = p.P * p.G * 8 + tid; i < 64 * 8; i += 128)  // 16-byte chunks of one slab
      for (int t = 0; t < 2 * kStages * (D / 64); ++t)
        *reinterpret_cast<uint4*>(smem + 2 * kTile + t * kSlabBytes + i * 16) = make_uint4(0, 0, 0, 0);
    fence_proxy_async();  // seen by the consumers' wgmma, after the kv barrier
    if (tid == 0) {
      mbar_arrive_expect_bytes(kv, 2 * kTile);
      tma_load_tile_pair<D>(sK, &maps.k, sV, &maps.v, kv, key0, hkv, b);
    } else {
      mbar_arrive(kv);
    }
    produce<D>(p, maps, b, hkv, j, w0, n_tiles, s_tiles, s_rows, stage0, s_values, full0, empty0);
    return;
  }
  warpgroup_regs_up<kConsumerRegs>();
  const int c = wg - 1, ctid = tid & 127, warp = ctid >> 5, lane = tid & 31;
  const int g = lane >> 2, cq = lane & 3;
  const int kw = warp * 16;  // this warp's keys within the block
  if (c >= n_tiles) return;
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  mbar_wait(kv, 0);
  for (int u = c; u < n_tiles; u += kConsumers) {
    const int st = u % kStages;
    const StageValues& m = s_values[st];
    float(&colsum)[4][64] = s_colsum[c][(u / kConsumers) & 1];
    const uint32_t q_s = stage0 + 2 * st * kTile, do_s = q_s + kTile;
    mbar_wait(full0 + 8 * st, (u / kStages) & 1);
    // S^T (16 keys x 64 rows per warp) and dP^T = V dO^T, two groups: P (below) overlaps the
    // dP^T matmul and dV's the dS^T math.
    float s[8][4] = {}, dp[8][4] = {};
    // The zeroed accumulators in their registers before the fence, so that ptxas need not
    // insert a warpgroup arrive/wait of its own for them.
    fence_operands(s);
    fence_operands(dp);
    wgmma_fence();
    wgmma_tile_by_tile_t<T, D>(s, sK, q_s);
    wgmma_commit();
    wgmma_tile_by_tile_t<T, D>(dp, sV, do_s);
    wgmma_commit();
    wgmma_wait<1>();
    fence_operands(s);
    // P^T; column n of the C fragment is tile row n.
    const TileColumns col{m.bl, m.delta, m.t, m.lo, m.t0};
    probabilities_t(s, p, col, key0, kw, g, cq);
    // dV += P^T dO (k-steps over the tile's rows).
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
    wgmma_fence();
    mma_regs_by_tile<T, D, true>(dv, pa, do_s, lane);
    wgmma_commit();
    wgmma_wait<1>();  // dP^T is done (dV may still run)
    fence_operands(dp);
    // dS^T = P^T (dP^T - delta) and its column sums (d(bias)).
    grad_scores_t(dp, s, col, p.dbias ? colsum[warp] : nullptr, g, cq);
    uint32_t da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) c_to_a<T>(da[kk], dp[2 * kk], dp[2 * kk + 1]);
    // dK += dS^T Q.
    wgmma_fence();
    mma_regs_by_tile<T, D, true>(dk, da, q_s, lane);
    wgmma_commit();
    if (p.dbias) {
      named_barrier(1 + c, 128);  // the consumer's column sums are visible
      if (ctid < p.P) write_dbias(p, colsum, m.entry[ctid], [&](int h) { return h * p.P + ctid; });
    }
    wgmma_wait<0>();  // the stage's last reader (dK's Q) is done
    fence_operands(dv);
    fence_operands(dk);
    fence_operands(pa);
    fence_operands(da);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty0 + 8 * st);
  }

  add_dk_dv<D>(p, bh, key0, kw, dk, dv, g, cq);  // the other consumer and other windows' CTAs add too
}

template <typename T, int D>
int launch(const BsaParams& p, int64_t B, unsigned windows, cudaStream_t stream) {
  // K, V, the stages' Q and dO, and the slack that puts them on 1024-byte boundaries.
  constexpr int kSmem = (2 + 2 * kStages) * 64 * D * 2 + 1024;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  TileMaps maps;
  int rc;
  if ((rc = make_tile_map(&maps.q, p.q, kBf16, B, p.Hq, p.T, D, p.P, p.G)) ||
      (rc = make_tile_map(&maps.dout, p.dout, kBf16, B, p.Hq, p.T, D, p.P, p.G)) ||
      (rc = make_tile_map(&maps.k, p.k, kBf16, B, p.Hkv, p.T, D, kBsaBlock, 1)) ||
      (rc = make_tile_map(&maps.v, p.v, kBf16, B, p.Hkv, p.T, D, kBsaBlock, 1)))
    return rc;
  auto kernel = bsa_dkdv_sm90_kernel<T, D>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (e != cudaSuccess) return e;
  if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100))) return e;
  kernel<<<dim3(p.n_blocks, windows, static_cast<unsigned>(B * p.Hkv)), kThreads, kSmem, stream>>>(p, maps);
  return cudaGetLastError();
}

}  // namespace

int launch_dkdv_sm90(const BsaParams& p, int64_t B, int d, bool bf16, unsigned windows, cudaStream_t stream) {
  if (d == 64)
    return bf16 ? launch<__nv_bfloat16, 64>(p, B, windows, stream) : launch<__half, 64>(p, B, windows, stream);
  return bf16 ? launch<__nv_bfloat16, 128>(p, B, windows, stream) : launch<__half, 128>(p, B, windows, stream);
}

}  // namespace st::kernels::dev
