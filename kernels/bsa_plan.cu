// The plan: from per-row block lists to (1) per-tile union lists, which the forward and dQ
// kernels walk, and (2) the reverse index, for each (b, hkv, KV block) the query tiles whose
// union holds it, which the dK/dV kernel walks. All on the GPU, O(selected entries) work and
// memory; no KV block ever scans all T query positions.
//
// Per tile, the union is formed in a shared-memory bitmask over the blocks up to the tile's
// last diagonal block (n_blocks / 8 bytes at most), then compacted in ascending order.
// Each tile's union includes the diagonal block of each of its positions and, with a sliding
// window, every block the window of one of its positions reaches: the kernels then mask per
// (row, block) what the row does not read. A tile's union thus stays within its rows' list
// entries plus (P + window) / 64 + 2 blocks.
#include "block_sparse_attention.h"
#include "bsa_scan.cuh"

namespace st::kernels {
namespace {

constexpr int kThreads = 128;

struct TileSpan {
  int64_t bh, t0, t1;  // (b*Hkv + hkv), positions [t0, t1)
  int words;           // bitmask words covering blocks 0 .. (t1 - 1) / 64
};

__device__ __forceinline__ TileSpan tile_span(int64_t tile, int64_t tiles_per_head, int P,
                                              int64_t T) {
  TileSpan s;
  s.bh = tile / tiles_per_head;
  s.t0 = (tile % tiles_per_head) * P;
  s.t1 = min(s.t0 + P, T);
  s.words = static_cast<int>((s.t1 - 1) / kBsaBlock / 32 + 1);
  return s;
}

// Fills the tile's bitmask: every list entry of its positions, their diagonal blocks and the
// blocks their windows reach (keys t0 - window + 1 .. t1 - 1).
__device__ void build_mask(uint32_t* mask, const TileSpan& s, const int64_t* row_ptr,
                           const int32_t* blocks, int64_t T, int window) {
  for (int w = threadIdx.x; w < s.words; w += kThreads) mask[w] = 0;
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t t = s.t0 + warp; t < s.t1; t += kThreads / 32) {
    const int64_t r = s.bh * T + t;
    for (int64_t e = row_ptr[r] + lane; e < row_ptr[r + 1]; e += 32) {
      const int j = blocks[e];
      atomicOr(&mask[j >> 5], 1u << (j & 31));
    }
  }
  const int64_t first_key = window > 0 ? max(s.t0 - window + 1, int64_t(0)) : s.t0;
  const int first = static_cast<int>(first_key / kBsaBlock), last = static_cast<int>((s.t1 - 1) / kBsaBlock);
  for (int j = first + threadIdx.x; j <= last; j += kThreads) atomicOr(&mask[j >> 5], 1u << (j & 31));
  __syncthreads();
}

__global__ void tile_count_kernel(const int64_t* row_ptr, const int32_t* blocks, int64_t T, int window,
                                  int64_t tiles_per_head, int P, int64_t* tile_cnt) {
  extern __shared__ uint32_t mask[];
  __shared__ int total;
  const TileSpan s = tile_span(blockIdx.x, tiles_per_head, P, T);
  if (threadIdx.x == 0) total = 0;
  build_mask(mask, s, row_ptr, blocks, T, window);
  int n = 0;
  for (int w = threadIdx.x; w < s.words; w += kThreads) n += __popc(mask[w]);
  atomicAdd(&total, n);
  __syncthreads();
  if (threadIdx.x == 0) tile_cnt[blockIdx.x] = total;
}

// Writes the tile's union in ascending order and counts each block's tiles into rev_cnt.
__global__ void tile_fill_kernel(const int64_t* row_ptr, const int32_t* blocks, int64_t T, int window,
                                 int64_t tiles_per_head, int P, int n_blocks,
                                 const int64_t* tile_ptr, int32_t* tile_blocks,
                                 unsigned long long* rev_cnt) {
  extern __shared__ uint32_t mask[];
  __shared__ int warp_cnt[kThreads / 32];
  const TileSpan s = tile_span(blockIdx.x, tiles_per_head, P, T);
  build_mask(mask, s, row_ptr, blocks, T, window);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t out = tile_ptr[blockIdx.x];
  for (int base = 0; base < s.words; base += kThreads) {
    const int w = base + threadIdx.x;
    uint32_t bits = w < s.words ? mask[w] : 0u;
    const int n = __popc(bits);
    int incl = n;  // inclusive scan over the CTA's words, in word order
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) warp_cnt[warp] = incl;
    __syncthreads();
    int before = 0, chunk_total = 0;
    for (int i = 0; i < kThreads / 32; ++i) {
      if (i < warp) before += warp_cnt[i];
      chunk_total += warp_cnt[i];
    }
    int64_t pos = out + before + incl - n;
    while (bits) {
      const int j = w * 32 + __ffs(bits) - 1;
      bits &= bits - 1;
      tile_blocks[pos++] = j;
      atomicAdd(&rev_cnt[s.bh * n_blocks + j], 1ull);
    }
    out += chunk_total;
    __syncthreads();  // warp_cnt is rewritten next round
  }
}

// Places each tile in the reverse list of every block of its union (order within a block's
// list follows atomics, so it varies run to run; the dK/dV sums are fp32 either way).
__global__ void rev_fill_kernel(const int64_t* tile_ptr, const int32_t* tile_blocks,
                                int64_t tiles_per_head, int n_blocks, const int64_t* rev_ptr,
                                int* cursor, int32_t* rev_tiles) {
  const int64_t tile = blockIdx.x;
  const int64_t bh = tile / tiles_per_head;
  const int tile_t = static_cast<int>(tile % tiles_per_head);
  for (int64_t e = tile_ptr[tile] + threadIdx.x; e < tile_ptr[tile + 1]; e += kThreads) {
    const int64_t slot = bh * n_blocks + tile_blocks[e];
    rev_tiles[rev_ptr[slot] + atomicAdd(&cursor[slot], 1)] = tile_t;
  }
}

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

struct Layout {
  size_t tile_ptr, rev_ptr, cursor, scan, tile_blocks, rev_tiles, total;
  int64_t n_tiles, n_rev, capacity;
};

Layout layout(const BsaShape& s, int64_t nnz, int window) {
  Layout l;
  l.n_tiles = s.B * s.Hkv * s.tiles_per_head();
  l.n_rev = s.B * s.Hkv * s.n_blocks();
  // A union is at most its rows' entries plus the blocks from its first window key (or first
  // position) to its last position: keys t1 - 1 - (t0 - window + 1) < P + window apart.
  const int64_t span = window > 0 ? (s.tile_positions() + window - 2) / kBsaBlock + 2 : 2;
  l.capacity = nnz + span * l.n_tiles;
  size_t off = 0;
  auto take = [&](size_t bytes) { const size_t at = off; off += align256(bytes); return at; };
  l.tile_ptr = take((l.n_tiles + 1) * sizeof(int64_t));
  l.rev_ptr = take((l.n_rev + 1) * sizeof(int64_t));
  l.cursor = take(l.n_rev * sizeof(int));
  l.scan = take(std::max(dev::scan_chunks(l.n_tiles), dev::scan_chunks(l.n_rev)) * sizeof(int64_t));
  l.tile_blocks = take(l.capacity * sizeof(int32_t));
  l.rev_tiles = take(l.capacity * sizeof(int32_t));
  l.total = off;
  return l;
}

}  // namespace

size_t bsa_plan_bytes(const BsaShape& s, int64_t nnz, int window) { return layout(s, nnz, window).total; }

int bsa_plan(const BsaShape& s, const BsaRows& rows, void* workspace, BsaPlan* plan,
             cudaStream_t stream) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv || s.group() > 16 || s.T <= 0 || s.B <= 0 || rows.window < 0) return kBsaBadShape;
  const Layout l = layout(s, rows.nnz, rows.window);
  const size_t mask_bytes = ((s.n_blocks() + 31) / 32) * sizeof(uint32_t);
  if (mask_bytes > 48 * 1024 || l.n_tiles > INT32_MAX) return kBsaBadShape;
  char* base = static_cast<char*>(workspace);
  plan->tile_ptr = reinterpret_cast<int64_t*>(base + l.tile_ptr);
  plan->rev_ptr = reinterpret_cast<int64_t*>(base + l.rev_ptr);
  plan->tile_blocks = reinterpret_cast<int32_t*>(base + l.tile_blocks);
  plan->rev_tiles = reinterpret_cast<int32_t*>(base + l.rev_tiles);
  plan->capacity = l.capacity;
  int* cursor = reinterpret_cast<int*>(base + l.cursor);
  int64_t* scan_tmp = reinterpret_cast<int64_t*>(base + l.scan);
  const int P = static_cast<int>(s.tile_positions());
  const int nb = static_cast<int>(s.n_blocks());
  const unsigned grid = static_cast<unsigned>(l.n_tiles);

  cudaError_t e;
  if ((e = cudaMemsetAsync(plan->rev_ptr, 0, (l.n_rev + 1) * sizeof(int64_t), stream))) return e;
  if ((e = cudaMemsetAsync(cursor, 0, l.n_rev * sizeof(int), stream))) return e;
  tile_count_kernel<<<grid, kThreads, mask_bytes, stream>>>(rows.row_ptr, rows.blocks, s.T, rows.window,
                                                             s.tiles_per_head(), P, plan->tile_ptr);
  if ((e = dev::exclusive_scan_inplace(plan->tile_ptr, l.n_tiles, scan_tmp, stream))) return e;
  tile_fill_kernel<<<grid, kThreads, mask_bytes, stream>>>(
      rows.row_ptr, rows.blocks, s.T, rows.window, s.tiles_per_head(), P, nb, plan->tile_ptr,
      plan->tile_blocks, reinterpret_cast<unsigned long long*>(plan->rev_ptr));
  if ((e = dev::exclusive_scan_inplace(plan->rev_ptr, l.n_rev, scan_tmp, stream))) return e;
  rev_fill_kernel<<<grid, kThreads, 0, stream>>>(plan->tile_ptr, plan->tile_blocks,
                                                 s.tiles_per_head(), nb, plan->rev_ptr, cursor,
                                                 plan->rev_tiles);
  return cudaGetLastError();
}

}  // namespace st::kernels
