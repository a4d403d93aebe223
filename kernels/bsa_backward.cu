// Backward of block-sparse attention, FlashAttention-2 style, in four launches:
//   prep kernel:  delta = rowsum(dO * O) per query row.
//   dQ pass:      bsa_forward.cu's walk over each query tile's blocks, recomputing S and dP
//                 (TilePass::kDq); dQ stays in registers, no atomics. It also replaces each
//                 row's delta by the row's sum of P dP (what delta stands for, to fp32
//                 rounding; the 16-bit O puts dO . O ~2^-9 relative off it, bsa_forward.cu).
//   dK/dV kernel: one CTA per (b, hkv, query window w, KV block j) takes the tiles of j's
//                 reverse list (the query tiles whose union holds j, built by bsa_plan) that lie
//                 in window w. Per tile: S^T = K Q^T and dP^T = V dO^T, P^T from the saved
//                 log-sum-exp, dS^T = P^T (dP^T - delta); dV += P^T dO and dK += dS^T Q stay in
//                 registers and are added into fp32 accumulators once per CTA (other windows'
//                 CTAs add to the same keys). d(bias) of a selected (position, block) is dS
//                 summed over the block's keys and the group's G heads: a column sum of dS^T in
//                 each warp (shuffles), then across the 4 warps in shared memory.
//   convert:      dk, dv from the accumulators, in the input dtype.
// dQ used to come from this kernel too (dS^T through shared memory, dS K per tile, fp32
// atomics): five matmuls per pair instead of seven, but L2 had to add 32 KB of atomics per
// (tile, block), which cost a third of the time on the H200 (NOTES.md, wgmma).
// Why windows: the CTAs resident at one time are the blocks of one (b, hkv, window), so the
// Q/dO tiles they read (32 KB per tile, kWindowTiles tiles) stay in L2. Walking whole reverse
// lists instead (v4 in NOTES.md) touched the whole sequence at once, re-reading Q/dO from HBM.
// Two kernels for the dK/dV part: on Hopper, bsa_dkdv_sm90.cu's warp-specialized one (a
// producer warpgroup fills stages that two wgmma warpgroups consume); this file's portable
// one (sm_80 on) has each of its 4 warps run mma.sync m16n8k16 on its 16 keys, loading Q and
// dO fragments with ldmatrix, tiles double-buffered through cp.async. Both accumulate in fp32.
#include "bsa_dkdv.cuh"
#include "bsa_tile.cuh"
#include "bsa_wgmma.cuh"

namespace st::kernels {
namespace {
using namespace dev;

constexpr int kPrepThreads = 256;

template <typename T, int D>
__global__ void __launch_bounds__(kPrepThreads) bsa_bwd_prep_kernel(const BsaParams p, int64_t rows) {
  constexpr int kLanes = D / 8;  // threads per row, 16 bytes of O and dO each
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kPrepThreads + threadIdx.x;
  const int64_t row = i / kLanes;
  float acc = 0.f;
  if (row < rows) {
    const int64_t off = i * 8;  // == row * D + (i % kLanes) * 8
    const uint4 a = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.o) + off);
    const uint4 d = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.dout) + off);
    const uint32_t av[4] = {a.x, a.y, a.z, a.w}, dv[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 fa = Elem<T>::unpack(av[e]), fd = Elem<T>::unpack(dv[e]);
      acc += fa.x * fd.x + fa.y * fd.y;
    }
  }
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (row < rows && i % kLanes == 0) p.delta[row] = acc;
}

template <typename T>
__global__ void __launch_bounds__(256) bsa_convert_kernel(const float* acc, T* out, float scale,
                                                          int64_t n8) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= n8) return;
  const float4 a = reinterpret_cast<const float4*>(acc)[2 * i];
  const float4 b = reinterpret_cast<const float4*>(acc)[2 * i + 1];
  uint4 packed;
  packed.x = Elem<T>::pack(a.x * scale, a.y * scale);
  packed.y = Elem<T>::pack(a.z * scale, a.w * scale);
  packed.z = Elem<T>::pack(b.x * scale, b.y * scale);
  packed.w = Elem<T>::pack(b.z * scale, b.w * scale);
  reinterpret_cast<uint4*>(out)[i] = packed;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) bsa_bwd_kernel(const BsaParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Tiles on 1024-byte boundaries (bsa_device.cuh's swizzle; the launch adds the slack).
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  constexpr int kTile = 64 * D * 2;
  const uint32_t sK = smem_addr(smem), sV = sK + kTile;
  auto sQ = [&](int stage) { return sK + (2 + stage) * kTile; };
  auto sdO = [&](int stage) { return sK + (4 + stage) * kTile; };
  // Per stage and tile row: bias - lse for block j (base 2; -inf where the row does not attend
  // j), delta, position (-1: padding row) and first key read in j.
  __shared__ float s_bl[2][64], s_delta[2][64];
  __shared__ int s_t[2][64], s_lo[2][64];
  // Per stage and tile position: bias (base 2), first key read and list entry for block j;
  // the tile's first position.
  __shared__ float s_pbias[2][64];
  __shared__ int s_plo[2][64];
  __shared__ int s_entry[2][64];
  __shared__ int s_t0[2];
  __shared__ float s_colsum[4][64];  // per warp: dS summed over its 16 keys, per tile row
  __shared__ uint16_t s_tiles[kWindowTiles];  // tiles of this window, less w0
  __shared__ int s_n_tiles;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int j = blockIdx.x, w = blockIdx.y;
  const int b = blockIdx.z / p.Hkv, hkv = blockIdx.z % p.Hkv;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const int w0 = w * kWindowTiles, w1 = min(w0 + kWindowTiles, p.tiles_per_head);
  // Tiles before the block's first position never select it: nothing to do.
  if ((static_cast<int64_t>(j) * kBsaBlock) / p.P >= w1) return;
  const int n_tiles = gather_window_tiles(p, bh, j, w0, w1, s_tiles, &s_n_tiles, tid, 128);
  if (n_tiles == 0) return;
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const T* kbase = static_cast<const T*>(p.k) + bh * p.T * D;
  const T* vbase = static_cast<const T*>(p.v) + bh * p.T * D;
  const int key0 = j * kBsaBlock;

  load_tile_async<D>(sK, [&](int r) { return key0 + r < p.T ? kbase + (key0 + r) * D : nullptr; }, kbase, tid);
  load_tile_async<D>(sV, [&](int r) { return key0 + r < p.T ? vbase + (key0 + r) * D : nullptr; }, vbase, tid);
  // Warps 0-1 fetch the per-row values; warps 2-3 search the positions' lists (G times fewer
  // searches than one per row; their dependent loads stall only those warps).
  auto load_tile = [&](int tile_t, int stage) {
    auto row_of = [&](int r) { return tile_row<D>(p, b, hkv, tile_t, r); };
    load_tile_async<D>(sQ(stage), [&](int r) { const TileRow x = row_of(r); return x.valid ? q + x.off : nullptr; }, q, tid);
    load_tile_async<D>(sdO(stage), [&](int r) { const TileRow x = row_of(r); return x.valid ? dout + x.off : nullptr; }, dout, tid);
    if (tid < 64) {
      const TileRow x = row_of(tid);
      s_bl[stage][tid] = x.valid ? -p.lse[x.lrow] * kLog2e : -INFINITY;
      s_delta[stage][tid] = x.valid ? p.delta[x.lrow] : 0.f;
      s_t[stage][tid] = x.valid ? static_cast<int>(x.t) : -1;
    } else if (tid - 64 < p.P) {
      const int pos = tid - 64;
      const int64_t t = static_cast<int64_t>(tile_t) * p.P + pos;
      int entry = -1, first = 0;
      s_pbias[stage][pos] = t < p.T ? block_bias(p, bh * p.T + t, t, j, &entry, &first) : -INFINITY;
      s_entry[stage][pos] = entry;
      s_plo[stage][pos] = first;
      if (pos == 0) s_t0[stage] = tile_t * p.P;
    }
  };
  // After a barrier that follows load_tile: row r's bias and first key are its position's (r / G).
  auto add_bias = [&](int stage) {
    if (tid < 64) {
      const bool real = tid < p.P * p.G;
      s_bl[stage][tid] += real ? s_pbias[stage][tid / p.G] : -INFINITY;
      s_lo[stage][tid] = real ? s_plo[stage][tid / p.G] : 0;
    }
  };
  load_tile(w0 + s_tiles[0], 0);
  cp_async_commit();
  __syncthreads();
  add_bias(0);

  const int g = lane >> 2, c = lane & 3;
  const int kw = warp * 16;  // this warp's keys within the block
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};

  for (int u = 0; u < n_tiles; ++u) {
    const int st = u & 1;
    cp_async_wait_all();
    __syncthreads();  // stage st landed and s_bl[st] is complete; stage st^1 is free
    if (u + 1 < n_tiles) {
      load_tile(w0 + s_tiles[u + 1], st ^ 1);
      cp_async_commit();
    }
    const uint32_t q_s = sQ(st), do_s = sdO(st);
    // S^T (16 keys x 64 rows per warp) and dP^T = V dO^T.
    float s[8][4] = {}, dp[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      load_a(ka, sK, kw, kk * 16, lane);
      load_a(va, sV, kw, kk * 16, lane);
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
        uint32_t bq[4], bo[4];
        load_b_nk(bq, q_s, nn * 16, kk * 16, lane);
        load_b_nk(bo, do_s, nn * 16, kk * 16, lane);
        mma<T>(s[2 * nn], ka, bq[0], bq[1]);
        mma<T>(s[2 * nn + 1], ka, bq[2], bq[3]);
        mma<T>(dp[2 * nn], va, bo[0], bo[1]);
        mma<T>(dp[2 * nn + 1], va, bo[2], bo[3]);
      }
    }
    // P^T; column n of the C fragment is tile row n.
    const TileColumns col{s_bl[st], s_delta[st], s_t[st], s_lo[st], s_t0[st]};
    probabilities_t(s, p, col, key0, kw, g, c);
    // dV += P^T dO (k-steps over the tile's rows).
    uint32_t pa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
    mma_regs_by_tile<T, D, false>(dv, pa, do_s, lane);
    // dS^T = P^T (dP^T - delta) and its column sums (d(bias)).
    grad_scores_t(dp, s, col, p.dbias ? s_colsum[warp] : nullptr, g, c);
    uint32_t da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) c_to_a<T>(da[kk], dp[2 * kk], dp[2 * kk + 1]);
    // dK += dS^T Q.
    mma_regs_by_tile<T, D, false>(dk, da, q_s, lane);
    __syncthreads();  // the column sums and the next tile's positions are visible
    if (u + 1 < n_tiles) add_bias(st ^ 1);
    if (p.dbias && tid < p.P) write_dbias(p, s_colsum, s_entry[st][tid], [&](int h) { return tid * p.G + h; });
  }

  add_dk_dv<D>(p, bh, key0, kw, dk, dv, g, c);  // other windows' CTAs add to the same keys
}

template <typename T>
cudaError_t convert(const float* acc, void* out, float scale, int64_t n, cudaStream_t stream) {
  const int64_t n8 = n / 8;
  bsa_convert_kernel<T><<<static_cast<unsigned>((n8 + 255) / 256), 256, 0, stream>>>(
      acc, static_cast<T*>(out), scale, n8);
  return cudaGetLastError();
}

template <typename T, int D>
int launch(const BsaParams& p, int64_t B, BsaPath path, cudaStream_t stream) {
  // K, V, 2 x (Q, dO), and the slack that puts them on 1024-byte boundaries.
  constexpr int kSmem = 6 * 64 * D * 2 + 1024;
  const int64_t rows = B * p.Hq * p.T, kv_elems = B * p.Hkv * p.T * D;
  cudaError_t e;
  if ((e = cudaMemsetAsync(p.dk_accum, 0, 2 * kv_elems * sizeof(float), stream))) return e;
  const int64_t prep_threads = rows * (D / 8);
  bsa_bwd_prep_kernel<T, D><<<static_cast<unsigned>((prep_threads + kPrepThreads - 1) / kPrepThreads),
                              kPrepThreads, 0, stream>>>(p, rows);
  if ((e = cudaGetLastError())) return e;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  auto kernel = bsa_bwd_kernel<T, D>;
  const unsigned windows = static_cast<unsigned>((p.tiles_per_head + kWindowTiles - 1) / kWindowTiles);
  // The dQ pass first: it leaves the rows' sums of P dP in delta for the dK/dV kernel.
  if (const int rc = launch_tile_pass(p, B, D, kBf16, TilePass::kDq, path, stream)) return rc;
  // Every kernel of the build has the same architectures: the portable one's tell whether the
  // sm_90a code runs here.
  if (path == BsaPath::kAuto && wgmma_runs_here(kernel)) {
    if (const int rc = launch_dkdv_sm90(p, B, D, kBf16, windows, stream)) return rc;
  } else {
    if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem))) return e;
    // Two CTAs per SM need nearly all of the 228 KB: ask for the largest shared-memory carveout.
    if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100))) return e;
    kernel<<<dim3(p.n_blocks, windows, static_cast<unsigned>(B * p.Hkv)), 128, kSmem, stream>>>(p);
    if ((e = cudaGetLastError())) return e;
  }
  if ((e = convert<T>(p.dk_accum, p.dk, p.scale, kv_elems, stream))) return e;
  return convert<T>(p.dv_accum, p.dv, 1.f, kv_elems, stream);
}

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

// Scratch layout: dk_accum and dv_accum [B,Hkv,T,d] (adjacent, one memset), delta [B,Hq,T];
// all fp32.
struct Scratch {
  size_t dk, dv, delta, total;
};
Scratch scratch_layout(const BsaShape& s) {
  const size_t kv_elems = static_cast<size_t>(s.B * s.Hkv * s.T * s.d);
  Scratch l;
  l.dk = 0;
  l.dv = l.dk + kv_elems * sizeof(float);
  l.delta = align256(l.dv + kv_elems * sizeof(float));
  l.total = l.delta + align256(static_cast<size_t>(s.B * s.Hq * s.T) * sizeof(float));
  return l;
}

}  // namespace

size_t bsa_backward_scratch_bytes(const BsaShape& s) { return scratch_layout(s).total; }

int bsa_backward(const BsaShape& s, BsaDtype dt, const void* q, const void* k, const void* v,
                 const void* o, const float* lse, const void* dout, const BsaRows& rows,
                 const BsaPlan& plan, float scale, void* dq, void* dk, void* dv, float* dbias,
                 void* scratch, cudaStream_t stream, BsaPath path) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv || s.group() > 16 || (s.d != 64 && s.d != 128) || s.T <= 0 ||
      s.B <= 0 || s.T > INT32_MAX / 2 || s.B * s.Hkv > 65535 || rows.nnz > INT32_MAX)
    return kBsaBadShape;
  if (dbias && rows.nnz > 0) {
    // Entries that no tile visits (invalid ids) keep a defined zero gradient.
    cudaError_t e = cudaMemsetAsync(dbias, 0, rows.nnz * sizeof(float), stream);
    if (e) return e;
  }
  dev::BsaParams p{};
  p.q = q; p.k = k; p.v = v; p.o = o; p.dout = dout; p.out = dq; p.dk = dk; p.dv = dv;
  p.lse = const_cast<float*>(lse); p.dbias = dbias;
  const Scratch l = scratch_layout(s);
  char* base = static_cast<char*>(scratch);
  p.dk_accum = reinterpret_cast<float*>(base + l.dk);
  p.dv_accum = reinterpret_cast<float*>(base + l.dv);
  p.delta = reinterpret_cast<float*>(base + l.delta);
  dev::set_lists_and_sizes(p, s, rows, plan, scale);
  const bool bf = dt == BsaDtype::kBf16;
  if (s.d == 64)
    return bf ? launch<__nv_bfloat16, 64>(p, s.B, path, stream) : launch<__half, 64>(p, s.B, path, stream);
  return bf ? launch<__nv_bfloat16, 128>(p, s.B, path, stream) : launch<__half, 128>(p, s.B, path, stream);
}

}  // namespace st::kernels
