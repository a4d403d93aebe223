// DashAttention's routing scores on wgmma (dash_scores.h).
#include "dash_scores.h"

#include <climits>

#include "bsa_pipeline.cuh"  // mbarrier, TMA
#include "bsa_tile.cuh"      // make_tile_map
#include "dash_route.h"      // dash_candidates_end, kDashTile

namespace st::kernels {
namespace {

using namespace dev;

// Query tiles per CTA: the CTA's one TMA load of its column tile's kbar parts (48 KB at d 128)
// serves this many 16 KB Q tiles.
constexpr int kQueryTilesPerCta = 16;
constexpr int kStages = 2;  // Q tiles in shared memory: the one in use and the next

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
  return (kDashScoreParts + kStages) * 64 * D * 2 + 1024;  // parts, Q stages, alignment slack
}

// One CTA per (column tile of 64 chunks, kQueryTilesPerCta query tiles). A query tile is 64
// MMA rows: the G heads of P positions (row r: head r % G, position r / G). The column tile's
// kbar parts come once by TMA (one thread; parts_map is the [3, parts_rows, D] parts as [1, 3,
// parts_rows, D], 64-row boxes, zeros past parts_rows) and stay; the query tiles that have
// candidates in it stream through kStages Q buffers by cp.async, each 3 x D / 16 wgmma with
// both operands in shared memory. The fp32 result and each row's max over its candidates in the
// tile go straight to global memory while the next Q tile loads. Two CTAs share an SM (81 KB of
// shared memory each), so one's epilogue runs under the other's MMAs. The transposed order (a
// CTA keeping its Q tile in registers and streaming 8 column tiles' parts) read 3x the bytes
// from L2 for the same MMAs and ran 2.3 ms at 64K / 87.5% / route_positions 4.
template <int D>
__global__ void __launch_bounds__(128, 2)
    dash_scores_kernel(const ScoreParams p, const __grid_constant__ CUtensorMap parts_map) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t s_full;  // the column tile's parts landed
  // Row r's Q offset from its query tile's first position's row (-1 past P G rows) and its
  // position in the tile: computed once (divisions by G).
  __shared__ int64_t s_q_row[64];
  __shared__ int s_pos[64];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  constexpr int kTile = 64 * D * 2;
  const uint32_t parts_s = smem_addr(smem), q_s = parts_s + kDashScoreParts * kTile;
  auto part_tile = [&](int part) { return parts_s + part * kTile; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g4 = lane >> 2, c = lane & 3;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 64;  // the column tile's first chunk
  // Query tile q has candidates here iff its last row's chunk t / chunk > c0; every q from
  // floor(first / P) on may (a full tile's last row is q P + P - 1).
  const int64_t first = (c0 + 1) * p.chunk - p.t0 - p.P + 1;
  const int64_t q_begin = max(static_cast<int64_t>(blockIdx.y) * kQueryTilesPerCta, first > 0 ? first / p.P : 0);
  const int64_t q_end = min(static_cast<int64_t>(blockIdx.y + 1) * kQueryTilesPerCta, (p.n + p.P - 1) / p.P);
  if (q_begin >= q_end) return;
  const int n_q = static_cast<int>(q_end - q_begin);

  if (tid < 64) {
    const bool real = tid < p.P * p.G;
    s_q_row[tid] = real ? (tid % p.G) * p.head_stride + (tid / p.G) * p.row_stride : -1;
    s_pos[tid] = real ? tid / p.G : INT_MAX;
  }
  const uint32_t full = smem_addr(&s_full);
  if (tid == 0) mbar_init(full, 1);
  __syncthreads();
  if (tid == 0) {
    mbar_arrive_expect_bytes(full, kDashScoreParts * kTile);
    for (int part = 0; part < kDashScoreParts; ++part)
#pragma unroll
      for (int slab = 0; slab < D / 64; ++slab)
        tma_load_4d(part_tile(part) + slab * kSlabBytes, &parts_map, full, slab * 64, static_cast<int>(c0), part, 0);
  }
  // Query tile q_begin + j into stage j % kStages (rows past n zeros); a group per j even past
  // n_q, so that the wait below counts alike on every step.
  auto load_q = [&](int j) {
    if (j < n_q) {
      const int64_t i0 = (q_begin + j) * p.P, left = p.n - i0;
      const __nv_bfloat16* q0 = p.q + i0 * p.row_stride;
      load_tile_async<D>(
          q_s + (j % kStages) * kTile, [&](int r) { return s_pos[r] < left ? q0 + s_q_row[r] : nullptr; }, p.q, tid);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int j = 0; j < kStages; ++j) load_q(j);

  // This thread's two rows (a quad's four lanes hold a row's 64 columns): head and position.
  int head[2], pos[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = warp * 16 + g4 + 8 * half;
    head[half] = r % p.G;
    pos[half] = r < p.P * p.G ? r / p.G : INT_MAX;
  }
  const int chunk = static_cast<int>(p.chunk);
  const int lo = static_cast<int>(min(max(p.sink - c0, int64_t(0)), int64_t(64)));  // candidates from c0 + lo
  // The first row's chunk as base + rem / chunk, 0 <= rem < chunk, advanced by P per query tile.
  const int64_t t_begin = p.t0 + q_begin * p.P;
  int64_t base = t_begin / p.chunk;
  int rem = static_cast<int>(t_begin - base * p.chunk);
  mbar_wait(full, 0);

  for (int j = 0; j < n_q; ++j, rem += p.P) {
    cp_async_wait<kStages - 1>();  // this thread's rows of query tile j landed
    fence_proxy_async();           // ... visible to the tensor cores
    __syncthreads();               // ... and every thread's
    const uint32_t q_tile = q_s + (j % kStages) * kTile;
    float s[8][4] = {};
    fence_operands(s);  // the zeroed accumulators in registers before the fence (bsa_backward.cu)
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
      for (int part = 0; part < kDashScoreParts; ++part)
        wgmma_ss<__nv_bfloat16>(s, desc_k_major(q_tile, ks), desc_k_major(part_tile(part), ks));
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
    __syncthreads();  // every warp's matmuls have read the stage
    load_q(j + kStages);

    for (; rem >= chunk; rem -= chunk) ++base;
    const int64_t i0 = (q_begin + j) * p.P;
    const int n_pos = static_cast<int>(min(static_cast<int64_t>(p.P), p.n - i0));
    // Candidates of the tile's rows are chunks before the last row's own.
    const int64_t n_cols = min(p.n_seen, base + (rem + n_pos - 1) / chunk);
    if (n_cols <= c0) continue;  // none here (the first tile or so after q_begin)
    const int cols = static_cast<int>(min(n_cols - c0, int64_t(64)));
    const bool whole_tile = cols == 64 && (p.ld & 1) == 0;  // every column stored as pairs
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const bool valid = pos[half] < n_pos;
      // The row's candidates in this tile: columns [lo, hi) (dash_candidates_end of t, with
      // t / chunk = base + (rem + pos) / chunk).
      const int64_t end = valid ? max(base + (rem + pos[half]) / chunk - p.local, p.sink) : 0;
      const int hi = static_cast<int>(min(max(end - c0, int64_t(0)), int64_t(64)));
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
      if (!valid) continue;
      const int64_t score_row = head[half] * p.n + i0 + pos[half];
      if (c == 0) p.tile_max[score_row * p.tile_max_ld + blockIdx.x] = m;
      float* out = p.scores + score_row * p.ld + c0 + 2 * c;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const float x = s[nt][2 * half], y = s[nt][2 * half + 1];
        if (whole_tile) {
          *reinterpret_cast<float2*>(out + nt * 8) = make_float2(x, y);
        } else {
          const int col = nt * 8 + 2 * c;
          if (col < cols) out[nt * 8] = x;
          if (col + 1 < cols) out[nt * 8 + 1] = y;
        }
      }
    }
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
  const int64_t query_tiles = (p.n + p.P - 1) / p.P;
  const dim3 grid(static_cast<unsigned>((p.n_seen + 63) / 64),
                  static_cast<unsigned>((query_tiles + kQueryTilesPerCta - 1) / kQueryTilesPerCta));
  dash_scores_kernel<D><<<grid, 128, kSmem, stream>>>(p, parts_map);
  return cudaGetLastError();
}

}  // namespace

bool dash_scores_runs_here() { return wgmma_runs_here(dash_scores_kernel<128>); }

int dash_scores(const DashScoreArgs& a, cudaStream_t stream) {
  if (a.G < 1 || a.G > 64 || (a.d != 64 && a.d != 128) || a.n < 0 || a.n_seen < 0 || a.parts_rows < a.n_seen ||
      a.scores_ld < a.n_seen || a.tile_max_ld < (a.n_seen + kDashTile - 1) / kDashTile || a.t0 < 0 || a.chunk <= 0 ||
      a.chunk > INT32_MAX / 2 ||
      (a.n + 64 / a.G - 1) / (64 / a.G) > 65535 * int64_t(kQueryTilesPerCta) || (a.n_seen + 63) / 64 > INT32_MAX)
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
