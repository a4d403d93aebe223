// Backward of block-sparse attention, two kernels, no atomics on gradients:
//   dq kernel:   one CTA per query tile (the forward's tiling), walks the tile's union of
//                blocks: recomputes P from the saved log-sum-exp, dP = dO V^T,
//                dS = P (dP - delta), dQ += dS K, and d(bias) for each selected (row, block) =
//                the sum of dS over the block's keys and the group's G heads. It first
//                computes delta = rowsum(dO * O) for its rows and stores it for the next kernel.
//   dkv kernel:  one CTA per (b, hkv, KV block), walks the block's reverse list (the query
//                tiles whose union holds it, built by bsa_plan): S^T = K Q^T, P^T, dV += P^T dO,
//                dP^T = V dO^T, dS^T, dK += dS^T Q. Each warp owns 16 keys of the block.
// Both use mma.sync m16n8k16 with fp32 accumulation and double-buffered cp.async tiles.
#include "bsa_tile.cuh"

namespace st::kernels {
namespace {
using namespace dev;

template <typename T, int D>
__global__ void __launch_bounds__(128) bsa_dq_kernel(const BsaParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kTile = 64 * D * 2;
  const uint32_t sQ = smem_addr(smem), sdO = sQ + kTile;
  auto sK = [&](int stage) { return sQ + (2 + stage) * kTile; };
  auto sV = [&](int stage) { return sQ + (4 + stage) * kTile; };
  __shared__ float s_lse[64], s_delta[64], s_rowsum[64];
  __shared__ int64_t s_entry[64];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int tile_t = p.tiles_per_head - 1 - blockIdx.x;
  const int hkv = blockIdx.y, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const int64_t tile = bh * p.tiles_per_head + tile_t;
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const T* kbase = static_cast<const T*>(p.k) + bh * p.T * D;
  const T* vbase = static_cast<const T*>(p.v) + bh * p.T * D;
  const int64_t ubeg = p.tile_ptr[tile];
  const int n_union = static_cast<int>(p.tile_ptr[tile + 1] - ubeg);

  auto load_kv = [&](int j, int stage) {
    const int64_t key0 = static_cast<int64_t>(j) * kBsaBlock;
    load_tile_async<D>(sK(stage), [&](int r) { return key0 + r < p.T ? kbase + (key0 + r) * D : nullptr; }, kbase, tid);
    load_tile_async<D>(sV(stage), [&](int r) { return key0 + r < p.T ? vbase + (key0 + r) * D : nullptr; }, vbase, tid);
  };
  auto row_of = [&](int r) { return tile_row<D>(p, b, hkv, tile_t, r); };
  load_tile_async<D>(sQ, [&](int r) { const TileRow x = row_of(r); return x.valid ? q + x.off : nullptr; }, q, tid);
  load_tile_async<D>(sdO, [&](int r) { const TileRow x = row_of(r); return x.valid ? dout + x.off : nullptr; }, dout, tid);
  int j_next = p.tile_blocks[ubeg];
  load_kv(j_next, 0);
  cp_async_commit();

  // delta = rowsum(dO * O): two threads per row, 16-byte loads.
  {
    const int r = tid >> 1, half = tid & 1;
    const TileRow x = row_of(r);
    float acc = 0.f;
    if (x.valid) {
      const uint4* o4 = reinterpret_cast<const uint4*>(static_cast<const T*>(p.o) + x.off) + half * (D / 16);
      const uint4* d4 = reinterpret_cast<const uint4*>(dout + x.off) + half * (D / 16);
#pragma unroll
      for (int i = 0; i < D / 16; ++i) {
        const uint4 a = o4[i], d = d4[i];
        const uint32_t av[4] = {a.x, a.y, a.z, a.w}, dv[4] = {d.x, d.y, d.z, d.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 fa = Elem<T>::unpack(av[e]), fd = Elem<T>::unpack(dv[e]);
          acc += fa.x * fd.x + fa.y * fd.y;
        }
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    if (half == 0) {
      s_delta[r] = acc;
      s_lse[r] = x.valid ? p.lse[x.lrow] * kLog2e : 0.f;
      if (x.valid) p.delta[x.lrow] = acc;
    }
  }

  const int g = lane >> 2, c = lane & 3;
  RowCursor cursor[2];
  int t_row[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const TileRow x = row_of(warp * 16 + g + 8 * i);
    cursor[i].init(p, x);
    t_row[i] = static_cast<int>(x.t);
  }
  float dq[D / 8][4] = {};
  uint32_t qf[D / 16][4];
  float lse2[2], dl[2];

  for (int u = 0; u < n_union; ++u) {
    const int j = j_next;
    cp_async_wait_all();
    __syncthreads();
    if (u == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qf[kk], sQ, warp * 16, kk * 16, lane);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        lse2[i] = s_lse[warp * 16 + g + 8 * i];
        dl[i] = s_delta[warp * 16 + g + 8 * i];
      }
    }
    if (u + 1 < n_union) {
      j_next = p.tile_blocks[ubeg + u + 1];
      load_kv(j_next, (u + 1) & 1);
      cp_async_commit();
    }
    float bias2[2];
    int64_t entry[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      bias2[i] = cursor[i].step(p, j, &entry[i]);
      const int r = warp * 16 + g + 8 * i;
      if (p.dbias && c == 0 && r < p.P * p.G && r % p.G == 0) s_entry[r / p.G] = entry[i];
    }
    const uint32_t k_s = sK(u & 1), v_s = sV(u & 1);
    if (__any_sync(0xffffffffu, bias2[0] != -INFINITY || bias2[1] != -INFINITY)) {
      float s[8][4] = {}, dp[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t da[4];
        load_a<D>(da, sdO, warp * 16, kk * 16, lane);
#pragma unroll
        for (int nn = 0; nn < 4; ++nn) {
          uint32_t bk[4], bv[4];
          load_b_nk<D>(bk, k_s, nn * 16, kk * 16, lane);
          load_b_nk<D>(bv, v_s, nn * 16, kk * 16, lane);
          mma<T>(s[2 * nn], qf[kk], bk[0], bk[1]);
          mma<T>(s[2 * nn + 1], qf[kk], bk[2], bk[3]);
          mma<T>(dp[2 * nn], da, bv[0], bv[1]);
          mma<T>(dp[2 * nn + 1], da, bv[2], bv[3]);
        }
      }
      const int key0 = j * kBsaBlock + 2 * c;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const bool need_mask = j == cursor[i].diag || p.window > 0;
        float rsum = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float x = s[nt][2 * i + e] * p.scale_log2 + bias2[i] - lse2[i];
            if (need_mask && key_masked(key0 + nt * 8 + e, t_row[i], p.window)) x = -INFINITY;
            const float ds = fast_exp2(x) * (dp[nt][2 * i + e] - dl[i]);
            s[nt][2 * i + e] = ds;
            rsum += ds;
          }
        }
        rsum = quad_sum(rsum);
        if (p.dbias && c == 0) s_rowsum[warp * 16 + g + 8 * i] = rsum;
      }
      // dQ += dS K  (the softmax scale is applied once at the end)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        c_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
          uint32_t bk[4];
          load_b_kn<D>(bk, k_s, kk * 16, nd * 16, lane);
          mma<T>(dq[2 * nd], a, bk[0], bk[1]);
          mma<T>(dq[2 * nd + 1], a, bk[2], bk[3]);
        }
      }
    }
    if (p.dbias) {
      // A position that selected block j has all its G rows attending it, so every row
      // summed below was written by a warp that did not skip.
      __syncthreads();
      if (tid < p.P) {
        const int64_t e = s_entry[tid];
        if (e >= 0) {
          float sum = 0.f;
          for (int h = 0; h < p.G; ++h) sum += s_rowsum[tid * p.G + h];
          p.dbias[e] = sum;
        }
      }
    }
  }

  T* dqo = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const TileRow x = row_of(warp * 16 + g + 8 * i);
    if (!x.valid) continue;
    uint32_t* drow = reinterpret_cast<uint32_t*>(dqo + x.off);
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      drow[nd * 4 + c] = Elem<T>::pack(dq[nd][2 * i] * p.scale, dq[nd][2 * i + 1] * p.scale);
  }
}

// Bias (base 2) of tile row x for KV block j: 0 on the diagonal, the list's bias when x
// selected j (binary search in the row's sorted list), -inf otherwise.
__device__ __forceinline__ float row_block_bias(const BsaParams& p, const TileRow& x, int j) {
  if (!x.valid) return -INFINITY;
  const int diag = static_cast<int>(x.t / kBsaBlock);
  if (j == diag) return 0.f;
  if (j > diag) return -INFINITY;
  int64_t lo = p.row_ptr[x.list], hi = p.row_ptr[x.list + 1];
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (p.blocks[mid] < j) lo = mid + 1; else hi = mid;
  }
  if (lo == p.row_ptr[x.list + 1] || p.blocks[lo] != j) return -INFINITY;
  return p.bias ? p.bias[lo] * kLog2e : 0.f;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) bsa_dkv_kernel(const BsaParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kTile = 64 * D * 2;
  const uint32_t sK = smem_addr(smem), sV = sK + kTile;
  auto sQ = [&](int stage) { return sK + (2 + stage) * kTile; };
  auto sdO = [&](int stage) { return sK + (4 + stage) * kTile; };
  __shared__ float s_bias[2][64], s_lse[2][64], s_delta[2][64];
  __shared__ int s_t[2][64];

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int j = blockIdx.x, hkv = blockIdx.y, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const int64_t slot = bh * p.n_blocks + j;
  const int64_t rbeg = p.rev_ptr[slot];
  const int n_tiles = static_cast<int>(p.rev_ptr[slot + 1] - rbeg);
  const T* q = static_cast<const T*>(p.q);
  const T* dout = static_cast<const T*>(p.dout);
  const T* kbase = static_cast<const T*>(p.k) + bh * p.T * D;
  const T* vbase = static_cast<const T*>(p.v) + bh * p.T * D;
  const int64_t key0 = static_cast<int64_t>(j) * kBsaBlock;

  load_tile_async<D>(sK, [&](int r) { return key0 + r < p.T ? kbase + (key0 + r) * D : nullptr; }, kbase, tid);
  load_tile_async<D>(sV, [&](int r) { return key0 + r < p.T ? vbase + (key0 + r) * D : nullptr; }, vbase, tid);
  auto load_tile = [&](int tile_t, int stage) {
    auto row_of = [&](int r) { return tile_row<D>(p, b, hkv, tile_t, r); };
    load_tile_async<D>(sQ(stage), [&](int r) { const TileRow x = row_of(r); return x.valid ? q + x.off : nullptr; }, q, tid);
    load_tile_async<D>(sdO(stage), [&](int r) { const TileRow x = row_of(r); return x.valid ? dout + x.off : nullptr; }, dout, tid);
    if (tid < 64) {
      const TileRow x = row_of(tid);
      s_bias[stage][tid] = row_block_bias(p, x, j);
      s_lse[stage][tid] = x.valid ? p.lse[x.lrow] * kLog2e : 0.f;
      s_delta[stage][tid] = x.valid ? p.delta[x.lrow] : 0.f;
      s_t[stage][tid] = x.valid ? static_cast<int>(x.t) : -1;
    }
  };
  if (n_tiles > 0) load_tile(p.rev_tiles[rbeg], 0);
  cp_async_commit();

  const int g = lane >> 2, c = lane & 3;
  const int kw = warp * 16;  // this warp's keys within the block
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};

  for (int u = 0; u < n_tiles; ++u) {
    const int st = u & 1;
    cp_async_wait_all();
    __syncthreads();
    if (u + 1 < n_tiles) {
      load_tile(p.rev_tiles[rbeg + u + 1], st ^ 1);
      cp_async_commit();
    }
    const uint32_t q_s = sQ(st), do_s = sdO(st);
    // S^T (16 keys x 64 rows) and dP^T = V dO^T.
    float s[8][4] = {}, dp[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4], va[4];
      load_a<D>(ka, sK, kw, kk * 16, lane);
      load_a<D>(va, sV, kw, kk * 16, lane);
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
        uint32_t bq[4], bo[4];
        load_b_nk<D>(bq, q_s, nn * 16, kk * 16, lane);
        load_b_nk<D>(bo, do_s, nn * 16, kk * 16, lane);
        mma<T>(s[2 * nn], ka, bq[0], bq[1]);
        mma<T>(s[2 * nn + 1], ka, bq[2], bq[3]);
        mma<T>(dp[2 * nn], va, bo[0], bo[1]);
        mma<T>(dp[2 * nn + 1], va, bo[2], bo[3]);
      }
    }
    // P^T and dS^T; column n of the C fragment is tile row n.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = nt * 8 + 2 * c + (e & 1);
        const int key = static_cast<int>(key0) + kw + g + 8 * (e >> 1);
        float x = s[nt][e] * p.scale_log2 + s_bias[st][n] - s_lse[st][n];
        if (key_masked(key, s_t[st][n], p.window)) x = -INFINITY;
        const float pe = fast_exp2(x);
        s[nt][e] = pe;
        dp[nt][e] = pe * (dp[nt][e] - s_delta[st][n]);
      }
    }
    // dV += P^T dO and dK += dS^T Q (k-steps over the tile's rows).
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[4], da[4];
      c_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
      c_to_a<T>(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int nd = 0; nd < D / 16; ++nd) {
        uint32_t bo[4], bq[4];
        load_b_kn<D>(bo, do_s, kk * 16, nd * 16, lane);
        load_b_kn<D>(bq, q_s, kk * 16, nd * 16, lane);
        mma<T>(dv[2 * nd], pa, bo[0], bo[1]);
        mma<T>(dv[2 * nd + 1], pa, bo[2], bo[3]);
        mma<T>(dk[2 * nd], da, bq[0], bq[1]);
        mma<T>(dk[2 * nd + 1], da, bq[2], bq[3]);
      }
    }
  }

  T* dko = static_cast<T*>(p.dk);
  T* dvo = static_cast<T*>(p.dv);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t key = key0 + kw + g + 8 * i;
    if (key >= p.T) continue;
    uint32_t* krow = reinterpret_cast<uint32_t*>(dko + (bh * p.T + key) * D);
    uint32_t* vrow = reinterpret_cast<uint32_t*>(dvo + (bh * p.T + key) * D);
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      krow[nd * 4 + c] = Elem<T>::pack(dk[nd][2 * i] * p.scale, dk[nd][2 * i + 1] * p.scale);
      vrow[nd * 4 + c] = Elem<T>::pack(dv[nd][2 * i], dv[nd][2 * i + 1]);
    }
  }
}

template <typename T, int D>
int launch(const BsaParams& p, int64_t B, cudaStream_t stream) {
  constexpr int kSmem = 6 * 64 * D * 2;
  cudaError_t e;
  if ((e = cudaFuncSetAttribute(bsa_dq_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem))) return e;
  if ((e = cudaFuncSetAttribute(bsa_dkv_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem))) return e;
  bsa_dq_kernel<T, D><<<dim3(p.tiles_per_head, p.Hkv, static_cast<unsigned>(B)), 128, kSmem, stream>>>(p);
  if ((e = cudaGetLastError())) return e;
  bsa_dkv_kernel<T, D><<<dim3(p.n_blocks, p.Hkv, static_cast<unsigned>(B)), 128, kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int bsa_backward(const BsaShape& s, BsaDtype dt, const void* q, const void* k, const void* v,
                 const void* o, const float* lse, const void* dout, const BsaRows& rows,
                 const BsaPlan& plan, float scale, void* dq, void* dk, void* dv, float* dbias,
                 float* delta, cudaStream_t stream) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv || s.group() > 16 || (s.d != 64 && s.d != 128) || s.T <= 0 ||
      s.B <= 0 || s.T > INT32_MAX / 2 || s.Hkv > 65535 || s.B > 65535)
    return kBsaBadShape;
  if (dbias && rows.nnz > 0) {
    // Entries that no tile visits (invalid ids) keep a defined zero gradient.
    cudaError_t e = cudaMemsetAsync(dbias, 0, rows.nnz * sizeof(float), stream);
    if (e) return e;
  }
  dev::BsaParams p{};
  p.q = q; p.k = k; p.v = v; p.o = o; p.dout = dout; p.out = dq; p.dk = dk; p.dv = dv;
  p.lse = const_cast<float*>(lse); p.delta = delta; p.dbias = dbias;
  p.row_ptr = rows.row_ptr; p.blocks = rows.blocks; p.bias = rows.bias; p.window = rows.window;
  p.tile_ptr = plan.tile_ptr; p.tile_blocks = plan.tile_blocks;
  p.rev_ptr = plan.rev_ptr; p.rev_tiles = plan.rev_tiles;
  p.T = s.T; p.Hq = static_cast<int>(s.Hq); p.Hkv = static_cast<int>(s.Hkv);
  p.G = static_cast<int>(s.group()); p.P = static_cast<int>(s.tile_positions());
  p.tiles_per_head = static_cast<int>(s.tiles_per_head());
  p.n_blocks = static_cast<int>(s.n_blocks());
  p.scale = scale; p.scale_log2 = scale * dev::kLog2e;
  const bool bf = dt == BsaDtype::kBf16;
  if (s.d == 64) return bf ? launch<__nv_bfloat16, 64>(p, s.B, stream) : launch<__half, 64>(p, s.B, stream);
  return bf ? launch<__nv_bfloat16, 128>(p, s.B, stream) : launch<__half, 128>(p, s.B, stream);
}

}  // namespace st::kernels
