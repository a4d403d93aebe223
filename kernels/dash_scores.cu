// DashAttention's routing scores on wgmma (dash_scores.h).
#include "dash_scores.h"

#include <climits>

#include "bsa_pipeline.cuh"  // mbarrier, TMA
#include "bsa_tile.cuh"      // make_tile_map
#include "dash_route.h"      // dash_candidates_end, kDashTile

namespace st::kernels {
namespace {

using namespace dev;

// Column tiles of 64 chunks per CTA; the Q tile stays in registers. 8: a row's tile maxima
// from one CTA fill a 32-byte sector, written at once at the CTA's end (4 tiles with a store
// per tile: 2.8 ms at 64K / 87.5% / route_positions 4; this 2.6 before its per-row divisions
// left the loops, 2.3 since).
constexpr int kTilesPerCta = 8;

struct ScoreParams {
  const __nv_bfloat16* q;
  int64_t head_stride, row_stride;
  float* scores;
  float* tile_max;
  int64_t n, n_seen, ld, tile_max_ld, t0, chunk, sink, local;  // ld: the scores' row stride
  int G, P;  // P = 64 / G positions per query tile
};

template <int D>
constexpr int smem_bytes() {
  return kDashScoreParts * 64 * D * 2 + 1024;  // one column tile's parts, alignment slack
}

// One CTA per (query tile, kTilesPerCta column tiles): 64 MMA rows = the G heads of P
// positions (row r: head r % G, position r / G). The Q tile passes through shared memory into
// registers once; each column tile's kbar parts come by TMA (one thread; parts_map is the
// [3, parts_rows, D] parts as [1, 3, parts_rows, D], 64-row boxes, zeros past parts_rows), then 3 x D / 16
// wgmma with Q from registers, and the fp32 result goes straight to global memory while the
// next parts load; each row's max over its routing candidates in the tile goes to shared
// memory, and all of the CTA's to global memory at its end. One stage only: 49 KB of shared
// memory lets 4 CTAs share an SM, and ncu showed the two-stage form (2 CTAs) latency-bound
// (0.39 eligible warps per scheduler). Now ncu at 64K reads L2 73% busy (the parts' reads, the
// scores' stores), DRAM 47% and issue slots 19%; neither half the reads (two query tiles per
// CTA) nor a third (the transposed order: a CTA keeping one column tile's parts and streaming
// 16 query tiles, 2 CTAs per SM, 1.5x as long) made it faster (tools/kernel_dev/NOTES.md).
template <int D>
__global__ void __launch_bounds__(128, 4)
    dash_scores_kernel(const ScoreParams p, const __grid_constant__ CUtensorMap parts_map) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t s_full;  // the column tile's parts landed
  __shared__ float s_max[64][kTilesPerCta];  // the rows' tile maxima, written at the end
  // Per MMA row, once per CTA (the divisions by G and chunk kept out of the loops): its Q row's
  // offset and its score row (-1 past the query tile), and its candidates' end counted from the
  // CTA's first column.
  __shared__ int64_t s_q_row[64], s_score_row[64];
  __shared__ int s_end[64];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  constexpr int kTile = 64 * D * 2;
  const uint32_t parts_s = smem_addr(smem);
  auto part_tile = [&](int part) { return parts_s + part * kTile; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g4 = lane >> 2, c = lane & 3;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * p.P;  // first row of the tile, from t0
  const int n_pos = static_cast<int>(min(static_cast<int64_t>(p.P), p.n - i0));
  // Candidates of the tile's rows are chunks before the last row's own.
  const int64_t n_cols = min(p.n_seen, (p.t0 + i0 + n_pos - 1) / p.chunk);
  const int first_tile = blockIdx.y * kTilesPerCta;
  const int n_tiles = static_cast<int>(min(static_cast<int64_t>(kTilesPerCta), (n_cols + 63) / 64 - first_tile));
  if (n_tiles <= 0) return;
  const int64_t first_col = static_cast<int64_t>(first_tile) * 64;
  constexpr int kCtaCols = 64 * kTilesPerCta;
  auto cta_col = [&](int64_t col) {
    return static_cast<int>(min(max(col - first_col, int64_t(0)), int64_t(kCtaCols)));
  };
  if (tid < 64) {
    const int head = tid % p.G, pos = tid / p.G;
    const bool valid = tid < p.P * p.G && pos < n_pos;
    s_q_row[tid] = valid ? head * p.head_stride + (i0 + pos) * p.row_stride : -1;
    s_score_row[tid] = valid ? head * p.n + i0 + pos : -1;
    s_end[tid] = valid ? cta_col(dash_candidates_end(p.t0 + i0 + pos, p.chunk, p.sink, p.local)) : 0;
  }
  __syncthreads();

  load_tile_async<D>(
      part_tile(0), [&](int r) { return s_q_row[r] < 0 ? nullptr : p.q + s_q_row[r]; }, p.q, tid);
  cp_async_commit();
  const uint32_t full = smem_addr(&s_full);
  if (tid == 0) mbar_init(full, 1);
  cp_async_wait_all();
  __syncthreads();
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) load_a(qa[ks], part_tile(0), warp * 16, ks * 16, lane);
  fence_proxy_async();  // the reads of Q before TMA writes over them
  __syncthreads();      // every warp holds its Q fragments before the parts overwrite them

  // Columns past n_cols (up to the tile's end) multiply too; their results are not stored.
  auto load_parts = [&](int tile) {
    if (tid != 0) return;
    mbar_arrive_expect_bytes(full, kDashScoreParts * kTile);
    for (int part = 0; part < kDashScoreParts; ++part)
#pragma unroll
      for (int slab = 0; slab < D / 64; ++slab)
        tma_load_4d(part_tile(part) + slab * kSlabBytes, &parts_map, full, slab * 64, (first_tile + tile) * 64, part,
                    0);
  };
  load_parts(0);
  const int sink = cta_col(p.sink), cols = cta_col(n_cols);
  float* out[2];
  int end[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {  // a quad's four lanes hold row r's 64 columns
    const int r = warp * 16 + g4 + 8 * half;
    out[half] = s_score_row[r] < 0 ? nullptr : p.scores + s_score_row[r] * p.ld + first_col + 2 * c;
    end[half] = s_end[r];
  }
  for (int u = 0; u < n_tiles; ++u) {
    mbar_wait(full, u & 1);  // column tile u's parts landed
    float s[8][4] = {};
    fence_operands(s);  // the zeroed accumulators in registers before the fence (bsa_backward.cu)
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
      for (int part = 0; part < kDashScoreParts; ++part)
        wgmma_rs<__nv_bfloat16, 64, 0>(s, qa[ks], desc_k_major(part_tile(part), ks));
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
    fence_operands(qa);
    __syncthreads();  // every warp's matmuls have read the parts
    if (u + 1 < n_tiles) load_parts(u + 1);

    const int c0 = u * 64;                                       // from the CTA's first column
    const bool whole_tile = c0 + 64 <= cols && (p.ld & 1) == 0;  // every column stored as pairs
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // The row's candidates in this tile: columns [lo, hi) counted from c0.
      const int lo = min(max(sink - c0, 0), 64), hi = min(max(end[half] - c0, 0), 64);
      float mm[2] = {-INFINITY, -INFINITY};  // two chains
      if (lo == 0 && hi == 64) {             // the whole tile (most tiles of most rows)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) mm[nt & 1] = fmaxf(mm[nt & 1], fmaxf(s[nt][2 * half], s[nt][2 * half + 1]));
      } else {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = nt * 8 + 2 * c + e;
            if (col >= lo && col < hi) mm[nt & 1] = fmaxf(mm[nt & 1], s[nt][2 * half + e]);
          }
      }
      const float m = quad_max(fmaxf(mm[0], mm[1]));
      if (out[half] == nullptr) continue;
      if (c == 0) s_max[warp * 16 + g4 + 8 * half][u] = m;
      float* o = out[half] + c0;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const float x = s[nt][2 * half], y = s[nt][2 * half + 1];
        if (whole_tile) {
          *reinterpret_cast<float2*>(o + nt * 8) = make_float2(x, y);
        } else {
          const int col = c0 + nt * 8 + 2 * c;
          if (col < cols) o[nt * 8] = x;
          if (col + 1 < cols) o[nt * 8 + 1] = y;
        }
      }
    }
  }
  __syncthreads();
  for (int i = tid; i < 64 * kTilesPerCta; i += 128) {
    const int r = i / kTilesPerCta, u = i % kTilesPerCta;
    if (s_score_row[r] >= 0 && u < n_tiles) p.tile_max[s_score_row[r] * p.tile_max_ld + first_tile + u] = s_max[r][u];
  }
}

template <int D>
int launch(const ScoreParams& p, const void* kbar_parts, int64_t parts_rows, cudaStream_t stream) {
  constexpr int kSmem = smem_bytes<D>();
  CUtensorMap parts_map{};
  if (const int rc = make_tile_map(&parts_map, kbar_parts, /*bf16=*/true, 1, kDashScoreParts, parts_rows, D, 64, 1))
    return rc;
  cudaError_t e = cudaFuncSetAttribute(dash_scores_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (e != cudaSuccess) return e;
  const int64_t col_tiles = (p.n_seen + 63) / 64;
  const dim3 grid(static_cast<unsigned>((p.n + p.P - 1) / p.P),
                  static_cast<unsigned>((col_tiles + kTilesPerCta - 1) / kTilesPerCta));
  dash_scores_kernel<D><<<grid, 128, kSmem, stream>>>(p, parts_map);
  return cudaGetLastError();
}

}  // namespace

bool dash_scores_runs_here() { return wgmma_runs_here(dash_scores_kernel<128>); }

int dash_scores(const DashScoreArgs& a, cudaStream_t stream) {
  if (a.G < 1 || a.G > 64 || (a.d != 64 && a.d != 128) || a.n < 0 || a.n_seen < 0 || a.parts_rows < a.n_seen ||
      a.scores_ld < a.n_seen || a.tile_max_ld < (a.n_seen + kDashTile - 1) / kDashTile || a.t0 < 0 || a.chunk <= 0 ||
      (a.n + 64 / a.G - 1) / (64 / a.G) > INT32_MAX || (a.n_seen + 64 * kTilesPerCta - 1) / (64 * kTilesPerCta) > 65535)
    return kBsaBadShape;
  if (a.n == 0 || a.n_seen == 0) return 0;
  ScoreParams p{};
  p.q = static_cast<const __nv_bfloat16*>(a.q);
  p.head_stride = a.head_stride;
  p.row_stride = a.row_stride;
  p.scores = a.scores;
  p.tile_max = a.tile_max;
  p.tile_max_ld = a.tile_max_ld;
  p.sink = a.sink_chunks;
  p.local = a.local_chunks;
  p.n = a.n;
  p.n_seen = a.n_seen;
  p.ld = a.scores_ld;
  p.t0 = a.t0;
  p.chunk = a.chunk;
  p.G = static_cast<int>(a.G);
  p.P = 64 / p.G;
  return a.d == 64 ? launch<64>(p, a.kbar_parts, a.parts_rows, stream)
                   : launch<128>(p, a.kbar_parts, a.parts_rows, stream);
}

}  // namespace st::kernels
