// What a query tile is, shared by the forward and backward kernels.
//
// A tile of 64 MMA rows packs all G heads of one KV group for P = 64 / G consecutive query
// positions: row r is head g = r % G of position t = tile_t * P + r / G. Rows past P * G
// (when G does not divide 64) and positions past T are padding: never attended, never
// written. A group of 16 heads thus fills a 16-row MMA even for a single position.
#pragma once
#include <cuda.h>  // CUtensorMap (the type; bsa_tma.cu reaches the encoder through the runtime)
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
  const void* dout;
  void* out;  // o (forward) or dq (backward)
  void* dk;
  void* dv;
  float* lse;
  float* delta;     // per query row: dO . O from the prep, then the dQ pass's sum of P dP
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

// The first key of block j (before row t's own) that row t reads through its sliding window
// (keys t - window < key <= t), or INT_MAX when the window does not reach the block.
__device__ __forceinline__ int window_first_key(int64_t t, int j, int window) {
  const int64_t first = t - window + 1;
  return window > 0 && first < static_cast<int64_t>(j + 1) * kBsaBlock ? static_cast<int>(first) : INT_MAX;
}

// Walks one row's sorted list in step with the tile's ascending union of blocks, yielding how
// the row reads each union block: its additive bias (base 2) and the first key it reads there
// (`lo`; keys below it are masked). The diagonal block: bias 0, all causal keys. A listed
// block: the list's bias, all keys. Any other block the row's window reaches: bias 0 from the
// window's first key on. Else -inf.
struct RowCursor {
  int64_t cur, end;
  int next;  // blocks[cur], or INT_MAX at the end
  int diag;  // the row's own block, t / 64
  int64_t t;
  bool valid;

  __device__ __forceinline__ void init(const BsaParams& p, const TileRow& r) {
    valid = r.valid;
    t = r.t;
    diag = static_cast<int>(r.t / kBsaBlock);
    cur = valid ? p.row_ptr[r.list] : 0;
    end = valid ? p.row_ptr[r.list + 1] : 0;
    next = cur < end ? p.blocks[cur] : INT_MAX;
  }
  // Returns the bias for block j and sets *lo (0 where nothing is masked or nothing read).
  __device__ __forceinline__ float step(const BsaParams& p, int j, int* lo) {
    *lo = 0;
    if (!valid || j > diag) return -INFINITY;
    if (j == diag) return 0.f;
    if (next != j) {
      const int first = window_first_key(t, j, p.window);
      if (first == INT_MAX) return -INFINITY;
      *lo = first;
      return 0.f;
    }
    const float b = p.bias ? p.bias[cur] * kLog2e : 0.f;
    ++cur;
    next = cur < end ? p.blocks[cur] : INT_MAX;
    return b;
  }
};

// The dK/dV kernels' query windows: the CTAs resident at one time take one window's tiles, whose
// Q and dO rows (512 x 32 KB: 16 MB of the 50 MB L2) then stay in L2 (bsa_backward.cu).
constexpr int kWindowTiles = 512;

// How position t (row list `list`) reads KV block j, as RowCursor::step says, plus the list
// entry: the diagonal: bias 0, entry -1; a listed block (binary search in the sorted list): the
// list's bias and entry; a block only the window reaches: bias 0 from key *first on, entry -1;
// else -inf and -1. (Entries fit 32 bits: bsa_backward refuses nnz past INT32_MAX.)
__device__ __forceinline__ float block_bias(const BsaParams& p, int64_t list, int64_t t, int j, int* entry,
                                            int* first) {
  *entry = -1;
  *first = 0;
  const int diag = static_cast<int>(t / kBsaBlock);
  if (j == diag) return 0.f;
  if (j > diag) return -INFINITY;
  const int64_t end = p.row_ptr[list + 1];
  int64_t lo = p.row_ptr[list], hi = end;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (p.blocks[mid] < j)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == end || p.blocks[lo] != j) {
    const int w = window_first_key(t, j, p.window);
    if (w == INT_MAX) return -INFINITY;
    *first = w;
    return 0.f;
  }
  *entry = static_cast<int>(lo);
  return p.bias ? p.bias[lo] * kLog2e : 0.f;
}

// The dK/dV kernels' CTA for KV block j of (b, hkv) = bh and query window [w0, w1) gathers the
// tiles of j's reverse list that lie in the window into `tiles` (less w0, in no particular
// order) and returns how many. All `threads` threads of the CTA call it (it holds barriers).
__device__ __forceinline__ int gather_window_tiles(const BsaParams& p, int64_t bh, int j, int w0, int w1,
                                                   uint16_t* tiles, int* count, int tid, int threads) {
  const int64_t slot = bh * p.n_blocks + j;
  const int64_t rbeg = p.rev_ptr[slot], rend = p.rev_ptr[slot + 1];
  if (tid == 0) *count = 0;
  __syncthreads();
  for (int64_t i = rbeg + tid; i < rend; i += threads) {
    const int tile_t = p.rev_tiles[i];
    if (tile_t >= w0 && tile_t < w1) tiles[atomicAdd(count, 1)] = static_cast<uint16_t>(tile_t - w0);
  }
  __syncthreads();
  return *count;
}

// The passes bsa_forward.cu runs over a query tile's blocks (the forward and the backward's
// dQ), launched for every tile of the plan.
enum class TilePass { kForward, kDq };
int launch_tile_pass(const BsaParams& p, int64_t B, int d, bool bf16, TilePass pass, BsaPath path,
                     cudaStream_t stream);

// A 4-D TMA map of a [B, H, T, d] tensor (dims innermost first) whose box is 64 columns x `rows`
// positions x `heads` heads, 128-byte swizzled as bsa_device.cuh lays out tiles; zeros past T.
// 0 or a cudaError_t value (bsa_tma.cu).
int make_tile_map(CUtensorMap* map, const void* base, bool bf16, int64_t B, int64_t H, int64_t T, int D, int rows,
                  int heads);

// dK, dV and d(bias) by the warp-specialized Hopper kernel (bsa_dkdv_sm90.cu) over a grid of
// (KV blocks, `windows` query windows, B * Hkv); the caller checked that wgmma runs here.
int launch_dkdv_sm90(const BsaParams& p, int64_t B, int d, bool bf16, unsigned windows, cudaStream_t stream);

// Masks a key inside a block the row reads: causal (key > t) and the window's edge (key < lo).
__device__ __forceinline__ bool key_masked(int key, int t, int lo) { return key > t || key < lo; }

}  // namespace st::kernels::dev
