// NSA's and InfLLMv2's block selection: pooled block scores, then top-k lists (block_select.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "block_select.h"
#include "bsa_pipeline.cuh"
#include "bsa_tile.cuh"  // make_tile_map

namespace st::kernels {
namespace {

using namespace dev;

constexpr int kCols = 64;            // compressed blocks per column tile
constexpr int kRows = 128;           // MMA rows per CTA: two warpgroups of 64, sharing each K tile
constexpr int kThreads = 2 * kRows;  // eight warps of 16 rows
constexpr int kMaxLead = 16;         // (length - 1) / stride at most
constexpr int kPStride = kCols + 2;  // floats per row of the probability tile (shared-memory group sums)
constexpr int kRing = 2 * kCols;     // floats per position of the group sums: two column tiles, as a ring

struct ScoreParams {
  const void* k_hi;  // the group's compressed keys, [n_cmp, D]: 16-bit high part (mma.sync path)
  const void* k_lo;  // and its rounding residual
  const void* q;
  float* scores;  // [n_rows, n_blocks]
  int64_t T, t_first, n_rows, n_cmp, q_head0;
  int G, P, length, stride, m, lead, n_blocks;
  // log2 G where the group's heads are summed in registers (G a power of two up to 16), else
  // -1: through a probability tile in shared memory.
  int sum_levels;
  bool max_pool;
  float scale_log2;
};

// The sm_90 form's TMA maps of the group's k_hi and k_lo ([1, 1, n_cmp, D], 64-row boxes).
struct KMaps {
  CUtensorMap hi, lo;
};

// Shared memory: two stages of K high + low tiles on 1024-byte boundaries (wgmma's swizzle;
// the two warpgroups' Q tiles fill the second stage before its first copy), the probability
// tile when the group is summed through shared memory, each position's ring of group sums, and
// the slack that aligns the K tiles.
template <int D>
constexpr int kKBytes = 4 * 64 * D * 2;
template <int D>
int score_smem_bytes(const ScoreParams& p) {
  return kKBytes<D> + (p.sum_levels < 0 ? kRows * kPStride * 4 : 0) + p.P * kRing * 4 + 1024;
}

// One level of scatter_sum: lanes that differ in lane bit `bit` pair up; the lane with the bit
// set keeps v[kHalf ..], the other v[.. kHalf), each adding its partner's copy (to v[k < kHalf]).
template <int kHalf>
__device__ __forceinline__ void scatter_level(float (&v)[16], int lane, int bit) {
  const bool upper = (lane >> bit) & 1;
#pragma unroll
  for (int k = 0; k < kHalf; ++k) {
    const float lo = v[k], hi = v[k + kHalf];
    v[k] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, 1 << bit);
  }
}
// Sums 16 values over the 2^levels lanes that differ in lane bits 2 .. 1 + levels, halving the
// values at each level. After it, v[k < 16 >> levels] is the sum for value index k +
// scatter_offset(levels, lane).
__device__ __forceinline__ void scatter_sum(float (&v)[16], int levels, int lane) {
  if (levels > 0) scatter_level<8>(v, lane, 2);
  if (levels > 1) scatter_level<4>(v, lane, 3);
  if (levels > 2) scatter_level<2>(v, lane, 4);
}
__device__ __forceinline__ int scatter_offset(int levels, int lane) {
  int off = 0;
  for (int l = 0; l < levels; ++l) off += ((lane >> (2 + l)) & 1) * (8 >> l);
  return off;
}

// One CTA per query tile: 128 MMA rows = the G heads of the group for P positions, in two
// warpgroups of 64 rows that share each K tile (half the K reads from L2 per row, and one
// warpgroup's MMAs overlap the other's softmax). The logits' matmul: wgmma on sm_90 (kWgmma;
// Q from registers, K from shared memory by TMA), mma.sync with cp.async elsewhere. Two passes
// over the compressed blocks the tile can see, the next K tile loading while the current one
// multiplies: the first pass keeps each row's running max and sum, the second recomputes the
// logits, sums the probabilities over the group's heads (in registers where G allows) into
// each position's ring and pools the sums onto selection blocks as soon as all compressed
// blocks overlapping a selection block are known.
template <typename T, int D, bool kWgmma>
__global__ void __launch_bounds__(kThreads, 2) block_scores_kernel(ScoreParams p, const __grid_constant__ KMaps maps) {
  constexpr int kTile = 64 * D * 2;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t s_full[2];  // sm_90: per stage, its K tiles landed (TMA)
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  const uint32_t k_s = smem_addr(smem);  // stage st: hi at 2 st, lo at 2 st + 1
  auto k_tile = [&](int st, int lo) { return k_s + (2 * st + lo) * kTile; };
  float* p_s = reinterpret_cast<float*>(smem + kKBytes<D>);
  float* ring = p_s + (p.sum_levels < 0 ? kRows * kPStride : 0);

  // Row r = 16 warp + g4 + 8 i of the CTA is row r % 64 of warpgroup wg = r / 64.
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g4 = lane >> 2, c = lane & 3, wg = warp >> 2;
  const int64_t pos0 = p.t_first + static_cast<int64_t>(blockIdx.x) * p.P;
  const int n_pos = static_cast<int>(min(static_cast<int64_t>(p.P), p.t_first + p.n_rows - pos0));
  const T* q = static_cast<const T*>(p.q);
  load_tile_async<D>(  // each warpgroup its 64 rows of Q, as a 64-row tile in stage 1
      k_tile(1, wg),
      [&](int r) -> const T* {
        r += wg * 64;
        if (r >= p.P * p.G || r / p.G >= n_pos) return nullptr;
        return q + ((p.q_head0 + r % p.G) * p.T + pos0 + r / p.G) * D;
      },
      q, tid & 127);
  cp_async_commit();
  const uint32_t full = smem_addr(s_full);
  if (kWgmma && tid == 0) {
    mbar_init(full, 1);
    mbar_init(full + 8, 1);
  }
  for (int x = tid; x < p.P * kRing; x += kThreads) ring[x] = 0.f;  // before block 0: the pad

  // Compressed blocks wholly at or before position t.
  auto visible = [&](int64_t t) -> int64_t {
    return t < p.length - 1 ? 0 : min(p.n_cmp, (t - p.length + 1) / p.stride + 1);
  };
  const int64_t n_seen = visible(pos0 + n_pos - 1);
  const int n_tiles = static_cast<int>((n_seen + kCols - 1) / kCols);
  int64_t vis[2];  // this thread's rows g4 and g4 + 8 of its warp
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = warp * 16 + g4 + 8 * i;
    vis[i] = r < p.P * p.G && r / p.G < n_pos ? visible(pos0 + r / p.G) : 0;
  }
  // Step s < n_tiles is pass 1 over column tile s, then pass 2 over tile s - n_tiles.
  auto load_k = [&](int step, int st) {
    const int c0 = (step < n_tiles ? step : step - n_tiles) * kCols;
    if constexpr (kWgmma) {
      if (tid == 0) {
        mbar_arrive_expect_bytes(full + 8 * st, 2 * kTile);
        tma_load_tile_pair<D>(k_tile(st, 0), &maps.hi, k_tile(st, 1), &maps.lo, full + 8 * st, c0, 0, 0);
      }
    } else {  // warpgroup 0 copies the high part, 1 the low
      const T* src = static_cast<const T*>(wg ? p.k_lo : p.k_hi);
      load_tile_async<D>(
          k_tile(st, wg), [&](int r) -> const T* { return c0 + r < n_seen ? src + (c0 + r) * D : nullptr; }, src,
          tid & 127);
      cp_async_commit();
    }
  };

  // Q into registers (then its stage is free for K), the barriers initialised.
  cp_async_wait_all();
  __syncthreads();
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) load_a(qa[ks], k_tile(1, wg), (warp & 3) * 16, ks * 16, lane);
  if constexpr (kWgmma) fence_proxy_async();  // the reads of Q before TMA writes that stage
  if (n_tiles > 0) load_k(0, 0);

  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};   // pass 1: per thread
  float m_row[2], inv_l[2];                                         // pass 2: per row

  // Pools the selection blocks that column tile c0 completes from each position's ring, where
  // slot u % kRing holds the group sum of compressed block u. Selection block jb overlaps
  // compressed blocks jb m - lead .. jb m + m - 1 (before block 0: the ring's zeros).
  const int per_tile = kCols / p.m;
  const int64_t out0 = pos0 - p.t_first;
  auto pool_tile = [&](int c0) {
    __syncthreads();  // the ring holds tile c0
    for (int x = tid; x < n_pos * per_tile; x += kThreads) {
      const int pos = x / per_tile, jb = c0 / p.m + x % per_tile;
      if (jb >= p.n_blocks) continue;
      const float* src = ring + pos * kRing;
      float acc = 0.f;
      for (int u = jb * p.m - p.lead; u < jb * p.m + p.m; ++u) {
        const float v = src[u & (kRing - 1)];
        acc = p.max_pool ? fmaxf(acc, v) : acc + v;
      }
      p.scores[(out0 + pos) * p.n_blocks + jb] = acc;
    }
  };

  for (int step = 0; step < 2 * n_tiles; ++step) {
    const int st = step & 1;
    const bool first_pass = step < n_tiles;
    const int c0 = (first_pass ? step : step - n_tiles) * kCols;
    if constexpr (kWgmma) {
      mbar_wait(full + 8 * st, (step >> 1) & 1);
    } else {
      cp_async_wait_all();
    }
    __syncthreads();  // stage st landed; stage st ^ 1, p_s and the ring's older half are free
    if (step + 1 < 2 * n_tiles) load_k(step + 1, st ^ 1);

    // s = q . k_cmp (unscaled) for compressed blocks c0 .. c0 + 63 of the tile's rows.
    float s[8][4] = {};
    if constexpr (kWgmma) {
      fence_operands(s);  // the zeroed accumulators in registers before the fence (bsa_backward.cu)
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
        for (int lo = 0; lo < 2; ++lo) wgmma_rs<T, 64, 0>(s, qa[ks], desc_k_major(k_tile(st, lo), ks));
      wgmma_commit();
      wgmma_wait<0>();
      fence_operands(s);
      fence_operands(qa);
    } else {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
        for (int np = 0; np < 4; ++np)
#pragma unroll
          for (int lo = 0; lo < 2; ++lo) {
            uint32_t b[4];
            load_b_nk(b, k_tile(st, lo), np * 16, ks * 16, lane);
            mma<T>(s[2 * np], qa[ks], b[0], b[1]);
            mma<T>(s[2 * np + 1], qa[ks], b[2], b[3]);
          }
    }
    int lim[2];  // this tile's columns visible to each of the thread's rows
#pragma unroll
    for (int i = 0; i < 2; ++i) lim[i] = static_cast<int>(max(min(vis[i] - c0, int64_t{kCols}), int64_t{0}));

    if (first_pass) {  // each row's max and sum of exp2 over its visible blocks
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;  // over the unscaled logits (the scale is positive)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float x = nt * 8 + 2 * c + e < lim[i] ? s[nt][2 * i + e] : -INFINITY;
            s[nt][2 * i + e] = x;
            mx = fmaxf(mx, x);
          }
        if (mx == -INFINITY) continue;
        mx = fmaxf(m_run[i], mx * p.scale_log2);
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) sum += fast_exp2(fmaf(s[nt][2 * i + e], p.scale_log2, -mx));
        l_run[i] = l_run[i] * fast_exp2(m_run[i] - mx) + sum;
        m_run[i] = mx;
      }
      continue;
    }
    if (step == n_tiles) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        m_row[i] = quad_max(m_run[i]);
        const float l = quad_sum(m_run[i] == -INFINITY ? 0.f : l_run[i] * fast_exp2(m_run[i] - m_row[i]));
        inv_l[i] = l > 0.f ? 1.f / l : 0.f;  // a row that sees no block scores 0 everywhere
      }
    }
    float pr[2][16];  // the thread's probabilities: row i, column nt * 8 + 2 c + e at pr[i][2 nt + e]
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          pr[i][2 * nt + e] =
              nt * 8 + 2 * c + e < lim[i] ? fast_exp2(fmaf(s[nt][2 * i + e], p.scale_log2, -m_row[i])) * inv_l[i] : 0.f;
    float* ring_tile = ring + (c0 & (kRing - 1));
    if (p.sum_levels >= 0) {
      // Row r = 16 warp + g4 + 8 i is head r % G of position r / G: a position's heads are G
      // consecutive g4 lanes (G <= 8) or both rows of all 8 (G = 16).
      const bool fold = p.sum_levels == 4;
      const int levels = fold ? 3 : p.sum_levels;
      if (fold)
#pragma unroll
        for (int j = 0; j < 16; ++j) pr[0][j] += pr[1][j];
      const int off = scatter_offset(levels, lane);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (fold && i == 1) continue;
        scatter_sum(pr[i], levels, lane);
        float* dst = ring_tile + ((warp * 16 + g4 + 8 * i) >> p.sum_levels) * kRing + 2 * c;
#pragma unroll
        for (int k = 0; k < 16; ++k)
          if (k < (16 >> levels)) dst[((k + off) >> 1) * 8 + ((k + off) & 1)] = pr[i][k];
      }
    } else {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float* prow = p_s + (warp * 16 + g4 + 8 * i) * kPStride;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
          *reinterpret_cast<float2*>(prow + nt * 8 + 2 * c) = make_float2(pr[i][2 * nt], pr[i][2 * nt + 1]);
      }
      __syncthreads();
      for (int x = tid; x < n_pos * kCols; x += kThreads) {
        const int pos = x / kCols, j = x % kCols;
        float sum = 0.f;
        for (int g = 0; g < p.G; ++g) sum += p_s[(pos * p.G + g) * kPStride + j];
        ring_tile[pos * kRing + j] = sum;
      }
    }
    pool_tile(c0);
  }
  // One column tile past the last visible one (all zero) completes the blocks that overlap it.
  const int c_end = n_tiles * kCols;
  __syncthreads();  // the last tile's pooling read the ring
  for (int x = tid; x < n_pos * kCols; x += kThreads)
    ring[(x / kCols) * kRing + ((c_end + x % kCols) & (kRing - 1))] = 0.f;
  pool_tile(c_end);
  // Blocks past every visible compressed block score 0, as the reference's zero padding.
  const int64_t first_zero = static_cast<int64_t>(n_tiles + 1) * per_tile;
  const int64_t rest = p.n_blocks > first_zero ? p.n_blocks - first_zero : 0;
  for (int64_t x = tid; x < n_pos * rest; x += kThreads)
    p.scores[(out0 + x / rest) * p.n_blocks + first_zero + x % rest] = 0.f;
}

constexpr int kTopKWarps = 4;

// One warp per query row: the k-th largest key among the causal blocks by an 8-bit radix
// select (4 passes over the row), then the entries in ascending order. Keys are the scores'
// bits (scores are >= 0, so their bit patterns order as the values) and +inf for forced
// blocks; the threshold's ties go to the earliest blocks, as the reference's stable sort.
__global__ void __launch_bounds__(32 * kTopKWarps) select_top_k_kernel(TopKArgs a) {
  __shared__ int hist_all[kTopKWarps][256];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTopKWarps + warp;
  if (i >= a.n_rows) return;  // the whole warp leaves; only warp-level syncs below
  int* hist = hist_all[warp];
  const int own = static_cast<int>((a.t_first + i) / a.block);
  const int n_causal = min(own + 1, a.n_blocks);
  const int k = min(a.top_k, a.n_blocks);
  const float* row = a.scores + i * a.n_blocks;
  auto key = [&](int c) -> uint32_t {
    return c < a.init_blocks || c > own - a.local_blocks ? 0x7f800000u : __float_as_uint(row[c]);
  };
  constexpr unsigned kAll = 0xffffffffu;
  const bool take_all = n_causal <= k;
  uint32_t thr = 0;  // chosen: key > thr, plus the first `ties` blocks with key == thr
  int ties = 0;
  if (!take_all && k > 0) {
    uint32_t prefix = 0, mask = 0;
    int remaining = k;  // still to choose among the keys matching prefix under mask
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int x = lane; x < 256; x += 32) hist[x] = 0;
      __syncwarp();
      for (int cc = lane; cc < n_causal; cc += 32) {
        const uint32_t kc = key(cc);
        if ((kc & mask) == prefix) atomicAdd(&hist[(kc >> shift) & 255], 1);
      }
      __syncwarp();
      // Lane L holds digits 255 - 8L .. 248 - 8L (descending); scan the counts from the top.
      int mine = 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) mine += hist[255 - 8 * lane - u];
      int incl = mine;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kAll, incl, o);
        if (lane >= o) incl += y;
      }
      const int src = __ffs(__ballot_sync(kAll, incl >= remaining)) - 1;
      int digit = 0, above = 0;
      if (lane == src) {
        int cum = incl - mine;
        for (int u = 0; u < 8; ++u) {
          const int n = hist[255 - 8 * lane - u];
          if (cum + n >= remaining) {
            digit = 255 - 8 * lane - u;
            above = cum;
            break;
          }
          cum += n;
        }
      }
      digit = __shfl_sync(kAll, digit, src);
      remaining -= __shfl_sync(kAll, above, src);
      prefix |= static_cast<uint32_t>(digit) << shift;
      mask |= 255u << shift;
      __syncwarp();
    }
    thr = prefix;
    ties = remaining;
  }
  const unsigned lower = (1u << lane) - 1;
  int64_t n = 0;
  int ties_seen = 0;
  int32_t* out = a.ids + i * a.cap;
  for (int base = 0; base < own && k > 0; base += 32) {  // list entries: blocks before the own one
    const int cc = base + lane;
    bool chosen = false, tie = false;
    if (cc < own) {
      const uint32_t kc = take_all ? 0u : key(cc);
      chosen = take_all || kc > thr;
      tie = !take_all && kc == thr;
    }
    const unsigned tie_mask = __ballot_sync(kAll, tie);
    if (tie) chosen = ties_seen + __popc(tie_mask & lower) < ties;
    ties_seen += __popc(tie_mask);
    const unsigned chosen_mask = __ballot_sync(kAll, chosen);
    if (chosen) out[n + __popc(chosen_mask & lower)] = cc;
    n += __popc(chosen_mask);
  }
  if (lane == 0) a.counts[i] = n;
}

template <typename T, int D>
int launch_scores(const ScoreParams& p, BsaPath path, cudaStream_t stream) {
  const bool hopper = path == BsaPath::kAuto && wgmma_runs_here(block_scores_kernel<T, D, true>);
  auto kernel = hopper ? block_scores_kernel<T, D, true> : block_scores_kernel<T, D, false>;
  KMaps maps{};
  if (hopper && p.n_cmp > 0) {
    constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
    if (const int rc = make_tile_map(&maps.hi, p.k_hi, kBf16, 1, 1, p.n_cmp, D, kCols, 1)) return rc;
    if (const int rc = make_tile_map(&maps.lo, p.k_lo, kBf16, 1, 1, p.n_cmp, D, kCols, 1)) return rc;
  }
  const int smem = score_smem_bytes<D>(p);
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  // Two CTAs per SM take ~140 KB of shared memory at d 128: ask for the largest carveout.
  if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100))) return e;
  const unsigned grid = static_cast<unsigned>((p.n_rows + p.P - 1) / p.P);
  kernel<<<grid, kThreads, smem, stream>>>(p, maps);
  return cudaGetLastError();
}

}  // namespace

int block_scores(const BlockScoreArgs& a, cudaStream_t stream) {
  if (a.Hkv <= 0 || a.Hq % a.Hkv || a.Hq / a.Hkv > 64 || (a.d != 64 && a.d != 128) || a.stride <= 0 ||
      a.length <= 0 || a.block % a.stride || kCols % (a.block / a.stride) || (a.length - 1) / a.stride > kMaxLead ||
      a.n_rows < 0 || a.t_first < 0 || a.t_first + a.n_rows > a.T || a.n_blocks <= 0)
    return kBsaBadShape;
  if (a.n_rows == 0) return 0;
  ScoreParams p{};
  p.q = a.q;
  const int64_t k_off = (a.b * a.Hkv + a.hkv) * a.n_cmp * a.d * 2;  // bytes
  p.k_hi = static_cast<const unsigned char*>(a.k_hi) + k_off;
  p.k_lo = static_cast<const unsigned char*>(a.k_lo) + k_off;
  p.scores = a.scores;
  p.T = a.T; p.t_first = a.t_first; p.n_rows = a.n_rows; p.n_cmp = a.n_cmp;
  p.G = static_cast<int>(a.Hq / a.Hkv);
  p.P = kRows / p.G;
  p.q_head0 = a.b * a.Hq + a.hkv * p.G;
  p.length = a.length; p.stride = a.stride; p.m = a.block / a.stride; p.lead = (a.length - 1) / a.stride;
  p.n_blocks = a.n_blocks;
  p.sum_levels = -1;
  for (int l = 0; l <= 4; ++l)
    if (p.G == 1 << l) p.sum_levels = l;
  p.max_pool = a.pool == SelectPool::kMax;
  p.scale_log2 = static_cast<float>(kLog2e / std::sqrt(static_cast<double>(a.d)));
  if (a.d == 64)
    return a.fp16 ? launch_scores<__half, 64>(p, a.path, stream) : launch_scores<__nv_bfloat16, 64>(p, a.path, stream);
  return a.fp16 ? launch_scores<__half, 128>(p, a.path, stream) : launch_scores<__nv_bfloat16, 128>(p, a.path, stream);
}

int select_top_k(const TopKArgs& a, cudaStream_t stream) {
  if (a.n_rows < 0 || a.n_blocks <= 0 || a.block <= 0 || a.cap < std::min(a.top_k, a.n_blocks)) return kBsaBadShape;
  if (a.n_rows == 0) return 0;
  const unsigned grid = static_cast<unsigned>((a.n_rows + kTopKWarps - 1) / kTopKWarps);
  select_top_k_kernel<<<grid, 32 * kTopKWarps, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace st::kernels
