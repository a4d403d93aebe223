// What a query tile is, shared by the forward and backward kernels.
//
// A tile of 64 MMA rows packs all G heads of one KV group for P = 64 / G consecutive query
// positions: row r is head g = r % G of position t = tile_t * P + r / G. Rows past P * G
// (when G does not divide 64) and positions past T are padding: never attended, never
// written. A group of 16 heads thus fills a 16-row MMA even for a single position.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "block_sparse_attention.h"
#include "bsa_device.cuh"

namespace st::kernels::dev {

struct BsaParams {
  // tensors
  const void* q;
  const void* k;
  const void* v;
  const void* o;
  void* o_lo;  // o's rounding residual (may be null): written by the forward, read by the prep
  const void* dout;
  void* out;  // o (forward) or dq (backward)
  void* dk;
  void* dv;
  float* lse;
  float* delta;
  float* dq_accum;  // [B, Hq, T, d] fp32, dQ / scale summed by atomics
  float* dk_accum;  // [B, Hkv, T, d] fp32, dK / scale, likewise
  float* dv_accum;  // [B, Hkv, T, d] fp32, dV, likewise
  float* dbias;
  // lists
  const int64_t* row_ptr;
  const int32_t* blocks;
  const float* bias;
  const int64_t* tile_ptr;
  const int32_t* tile_blocks;
  const int64_t* rev_ptr;
  const int32_t* rev_tiles;
  // sizes
  int64_t T;
  int Hq, Hkv, G, P, tiles_per_head, n_blocks, window;
  float scale;       // softmax scale on q.k
  float scale_log2;  // scale * log2(e): the kernels work in base 2
};

// The list and size fields, which the forward and backward launchers fill alike.
inline void set_lists_and_sizes(BsaParams& p, const BsaShape& s, const BsaRows& rows, const BsaPlan& plan,
                                float scale) {
  p.row_ptr = rows.row_ptr; p.blocks = rows.blocks; p.bias = rows.bias; p.window = rows.window;
  p.tile_ptr = plan.tile_ptr; p.tile_blocks = plan.tile_blocks;
  p.rev_ptr = plan.rev_ptr; p.rev_tiles = plan.rev_tiles;
  p.T = s.T; p.Hq = static_cast<int>(s.Hq); p.Hkv = static_cast<int>(s.Hkv);
  p.G = static_cast<int>(s.group()); p.P = static_cast<int>(s.tile_positions());
  p.tiles_per_head = static_cast<int>(s.tiles_per_head());
  p.n_blocks = static_cast<int>(s.n_blocks());
  p.scale = scale; p.scale_log2 = scale * kLog2e;
}

// One MMA row of a tile.
struct TileRow {
  int64_t t;    // query position
  int64_t off;  // element offset of the row in q / o / dq: ((b*Hq + h)*T + t) * d
  int64_t lrow; // row index into lse / delta: (b*Hq + h)*T + t
  int64_t list; // row index into the row lists: (b*Hkv + hkv)*T + t
  bool valid;
};

template <int D>
__device__ __forceinline__ TileRow tile_row(const BsaParams& p, int b, int hkv, int tile_t,
                                            int r) {
  TileRow x;
  const int g = r % p.G;
  x.t = static_cast<int64_t>(tile_t) * p.P + r / p.G;
  x.valid = r < p.P * p.G && x.t < p.T;
  const int64_t h = static_cast<int64_t>(b) * p.Hq + static_cast<int64_t>(hkv) * p.G + g;
  x.lrow = h * p.T + x.t;
  x.off = x.lrow * D;
  x.list = (static_cast<int64_t>(b) * p.Hkv + hkv) * p.T + x.t;
  return x;
}

// Walks one row's sorted list in step with the tile's ascending union of blocks, yielding
// the row's additive bias (base 2) for each union block: 0 on the diagonal block, the list's
// bias for a selected block, -inf otherwise.
struct RowCursor {
  int64_t cur, end;
  int next;  // blocks[cur], or INT_MAX at the end
  int diag;  // the row's own block, t / 64
  bool valid;

  __device__ __forceinline__ void init(const BsaParams& p, const TileRow& r) {
    valid = r.valid;
    diag = static_cast<int>(r.t / kBsaBlock);
    cur = valid ? p.row_ptr[r.list] : 0;
    end = valid ? p.row_ptr[r.list + 1] : 0;
    next = cur < end ? p.blocks[cur] : INT_MAX;
  }
  // Returns the bias for block j.
  __device__ __forceinline__ float step(const BsaParams& p, int j) {
    if (!valid || j > diag) return -INFINITY;
    if (j == diag) return 0.f;
    if (next != j) return -INFINITY;
    const float b = p.bias ? p.bias[cur] * kLog2e : 0.f;
    ++cur;
    next = cur < end ? p.blocks[cur] : INT_MAX;
    return b;
  }
};

// Masks a key inside an attended block: causal (key > t) and the sliding window.
__device__ __forceinline__ bool key_masked(int key, int t, int window) {
  return key > t || (window > 0 && key <= t - window);
}

}  // namespace st::kernels::dev
