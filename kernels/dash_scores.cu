// DashAttention's routing scores on wgmma (dash_scores.h).
#include "dash_scores.h"

#include <climits>

#include "bsa_wgmma.cuh"

namespace st::kernels {
namespace {

using namespace dev;

constexpr int kParts = 3;          // kbar = hi + mid + lo, each bf16
constexpr int kQTilesPerCta = 32;  // query tiles that stream past one CTA's column tile

struct ScoreParams {
  const __nv_bfloat16* q;
  int64_t head_stride, row_stride;
  const __nv_bfloat16* kbar_parts;
  float* scores;
  int64_t n, n_seen, ld, t0, chunk;  // ld: the scores' row stride
  int G, P;  // P = 64 / G positions per query tile
  int64_t q_tiles;
};

template <int D>
constexpr int smem_bytes() {
  return (kParts + 2) * 64 * D * 2 + 1024;  // the column tile's parts, two Q stages, alignment slack
}

// One CTA per (column tile of 64 chunks, run of kQTilesPerCta query tiles): the column tile's
// kbar parts come into shared memory once and the query tiles stream past them (cp.async, two
// stages): per score ~4 bytes of Q and a fraction of a byte of kbar read from L2, where one Q
// tile meeting a run of column tiles read 12 bytes of parts. A query tile is 64 MMA rows = the
// G heads of P positions (row r: head r % G, position r / G); per tile 3 x D / 16 wgmma with both
// operands in shared memory, then the fp32 scores straight to global memory.
template <int D>
__global__ void __launch_bounds__(128, 2) dash_scores_kernel(const ScoreParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  constexpr int kTile = 64 * D * 2;
  const uint32_t parts_s = smem_addr(smem);
  auto part_tile = [&](int part) { return parts_s + part * kTile; };
  auto q_tile = [&](int stage) { return parts_s + (kParts + stage) * kTile; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g4 = lane >> 2, c = lane & 3;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 64;  // the column tile's first chunk
  // Query tiles whose candidates reach chunk c0: the last row's own chunk is past c0, i.e.
  // t0 + i0 + P - 1 >= (c0 + 1) chunk for a whole tile (the store checks each tile exactly).
  const int64_t first_reader = max(int64_t{0}, (c0 + 1) * p.chunk - p.t0 - p.P + 1) / p.P;
  const int64_t qa = max(static_cast<int64_t>(blockIdx.y) * kQTilesPerCta, first_reader);
  const int64_t qb = min(static_cast<int64_t>(blockIdx.y + 1) * kQTilesPerCta, p.q_tiles);
  if (qa >= qb) return;
  const int n_chunks = static_cast<int>(min(int64_t{64}, p.n_seen - c0));  // chunks in this tile

  auto load_q = [&](int64_t qt, int stage) {
    const int64_t i0 = qt * p.P;
    load_tile_async<D>(
        q_tile(stage),
        [&](int r) {
          return r < p.P * p.G && i0 + r / p.G < p.n ? p.q + (r % p.G) * p.head_stride + (i0 + r / p.G) * p.row_stride
                                                    : nullptr;
        },
        p.q, tid);
  };
  for (int part = 0; part < kParts; ++part) {
    const __nv_bfloat16* src = p.kbar_parts + part * p.n_seen * D;
    load_tile_async<D>(part_tile(part), [&](int r) { return r < n_chunks ? src + (c0 + r) * D : nullptr; }, src, tid);
  }
  load_q(qa, 0);
  cp_async_commit();
  for (int64_t qt = qa; qt < qb; ++qt) {
    const int st = static_cast<int>(qt - qa) & 1;
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // this tile's Q (and the parts) landed; the other stage is free
    if (qt + 1 < qb) {
      load_q(qt + 1, st ^ 1);
      cp_async_commit();
    }
    float s[8][4] = {};
    fence_operands(s);  // the zeroed accumulators in registers before the fence (bsa_backward.cu)
    wgmma_fence();
#pragma unroll
    for (int part = 0; part < kParts; ++part) wgmma_tile_by_tile_t<__nv_bfloat16, D>(s, q_tile(st), part_tile(part));
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);

    const int64_t i0 = qt * p.P;
    const int n_pos = static_cast<int>(min(static_cast<int64_t>(p.P), p.n - i0));
    // Candidates of the tile's rows are chunks before the last row's own.
    const int64_t n_cols = min(p.n_seen, (p.t0 + i0 + n_pos - 1) / p.chunk);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + g4 + 8 * half;
      if (r >= p.P * p.G || r / p.G >= n_pos) continue;
      float* out = p.scores + ((r % p.G) * p.n + i0 + r / p.G) * p.ld;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int64_t col = c0 + nt * 8 + 2 * c;
        const float x = s[nt][2 * half], y = s[nt][2 * half + 1];
        if (col + 1 < n_cols && (p.ld & 1) == 0) {
          *reinterpret_cast<float2*>(out + col) = make_float2(x, y);
        } else {
          if (col < n_cols) out[col] = x;
          if (col + 1 < n_cols) out[col + 1] = y;
        }
      }
    }
  }
}

template <int D>
int launch(const ScoreParams& p, cudaStream_t stream) {
  constexpr int kSmem = smem_bytes<D>();
  cudaError_t e = cudaFuncSetAttribute(dash_scores_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>((p.n_seen + 63) / 64),
                  static_cast<unsigned>((p.q_tiles + kQTilesPerCta - 1) / kQTilesPerCta));
  dash_scores_kernel<D><<<grid, 128, kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

bool dash_scores_runs_here() { return wgmma_runs_here(dash_scores_kernel<128>); }

int dash_scores(const DashScoreArgs& a, cudaStream_t stream) {
  if (a.G < 1 || a.G > 64 || (a.d != 64 && a.d != 128) || a.n < 0 || a.n_seen < 0 || a.scores_ld < a.n_seen ||
      a.t0 < 0 || a.chunk <= 0 || (a.n_seen + 63) / 64 > INT32_MAX ||
      ((a.n + 64 / a.G - 1) / (64 / a.G) + kQTilesPerCta - 1) / kQTilesPerCta > 65535)
    return kBsaBadShape;
  if (a.n == 0 || a.n_seen == 0) return 0;
  ScoreParams p{};
  p.q = static_cast<const __nv_bfloat16*>(a.q);
  p.head_stride = a.head_stride;
  p.row_stride = a.row_stride;
  p.kbar_parts = static_cast<const __nv_bfloat16*>(a.kbar_parts);
  p.scores = a.scores;
  p.n = a.n;
  p.n_seen = a.n_seen;
  p.ld = a.scores_ld;
  p.t0 = a.t0;
  p.chunk = a.chunk;
  p.G = static_cast<int>(a.G);
  p.P = 64 / p.G;
  p.q_tiles = (p.n + p.P - 1) / p.P;
  return a.d == 64 ? launch<64>(p, stream) : launch<128>(p, stream);
}

}  // namespace st::kernels
