// Forward of block-sparse attention. A CTA of 4 warps takes MT consecutive query tiles of
// the plan (MT * 64 MMA rows); each warp owns 16 * MT rows, i.e. MT m16 row blocks. The CTA
// walks the ascending union of its tiles' block lists (built by bsa_plan), double-buffering
// K/V blocks through cp.async, and runs the flash online softmax in fp32 with mma.sync
// m16n8k16. A row that did not select a block gets -inf for it; a warp none of whose rows
// selected the block skips its MMAs.
//
// MT = 2 is the fast schedule: each K/V fragment read from shared memory feeds two row
// blocks, halving the ldmatrix traffic per MMA, which is what bounds the MT = 1 schedule
// (one 16-row block per warp: one 16-byte shared load per two MMAs). MT = 1 keeps Q in
// registers and is kept as the simple reference schedule (bsa_forward's rows_per_warp = 16).
#include "bsa_tile.cuh"

namespace st::kernels {
namespace {
using namespace dev;

template <typename T, int D, int MT>
__global__ void __launch_bounds__(128) bsa_fwd_kernel(const BsaParams p) {
  constexpr int kRows = 64 * MT;           // rows of the CTA
  constexpr int kTile = 64 * D * 2;        // bytes of one 64 x D tile
  constexpr int kKeys = (MT == 2 && D == 128) ? 32 : 64;  // keys per softmax step
  constexpr int kSteps = 64 / kKeys;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float s_bias[2][kRows];       // per stage: each row's bias (base 2) for the block
  const uint32_t sQ = smem_addr(smem);     // MT tiles of Q, then K stages, then V stages
  // Arithmetic, not arrays: a run-time index into a register array would go to local memory.
  auto sK = [&](int stage) { return sQ + (MT + stage) * kTile; };
  auto sV = [&](int stage) { return sQ + (MT + 2 + stage) * kTile; };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int ctas_per_head = (p.tiles_per_head + MT - 1) / MT;
  const int cta_t = ctas_per_head - 1 - blockIdx.x;  // longest (latest) tiles first
  const int hkv = blockIdx.y, b = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(b) * p.Hkv + hkv;
  const T* q = static_cast<const T*>(p.q);
  const T* kbase = static_cast<const T*>(p.k) + bh * p.T * D;
  const T* vbase = static_cast<const T*>(p.v) + bh * p.T * D;
  // CTA row R is row R % 64 of tile cta_t * MT + R / 64.
  auto row_of = [&](int R) { return tile_row<D>(p, b, hkv, cta_t * MT + R / 64, R % 64); };

  // Merge of the MT tiles' sorted union lists, identical in every thread.
  int64_t ucur[MT], uend[MT];
  int unext[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int tile_t = cta_t * MT + m;
    const int64_t tile = bh * p.tiles_per_head + tile_t;
    ucur[m] = tile_t < p.tiles_per_head ? p.tile_ptr[tile] : 0;
    uend[m] = tile_t < p.tiles_per_head ? p.tile_ptr[tile + 1] : 0;
    unext[m] = ucur[m] < uend[m] ? p.tile_blocks[ucur[m]] : INT_MAX;
  }
  auto pop = [&]() {
    int j = INT_MAX;
#pragma unroll
    for (int m = 0; m < MT; ++m) j = min(j, unext[m]);
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (unext[m] == j && j != INT_MAX) {
        ++ucur[m];
        unext[m] = ucur[m] < uend[m] ? p.tile_blocks[ucur[m]] : INT_MAX;
      }
    return j;
  };

  // Thread tid < kRows walks CTA row tid's list and publishes its bias per block in s_bias,
  // so the MMA threads carry no list state.
  RowCursor cursor;
  if (tid < kRows) cursor.init(p, row_of(tid));
  auto publish_bias = [&](int j, int stage) {
    int64_t unused;
    if (tid < kRows) s_bias[stage][tid] = cursor.step(p, j, &unused);
  };

  auto load_kv = [&](int j, int stage) {
    const int64_t key0 = static_cast<int64_t>(j) * kBsaBlock;
    load_tile_async<D>(sK(stage), [&](int r) { return key0 + r < p.T ? kbase + (key0 + r) * D : nullptr; }, kbase, tid);
    load_tile_async<D>(sV(stage), [&](int r) { return key0 + r < p.T ? vbase + (key0 + r) * D : nullptr; }, vbase, tid);
  };
#pragma unroll
  for (int m = 0; m < MT; ++m)
    load_tile_async<D>(sQ + m * kTile, [&](int r) {
      const TileRow x = row_of(m * 64 + r);
      return x.valid ? q + x.off : nullptr;
    }, q, tid);
  int j_next = pop();
  load_kv(j_next, 0);
  cp_async_commit();
  publish_bias(j_next, 0);

  // This thread's rows: g and g + 8 of each of its warp's MT row blocks.
  const int g = lane >> 2, c = lane & 3;
  const int wrow = warp * 16 * MT;  // first CTA row of this warp
  int t_row[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) t_row[mt][i] = static_cast<int>(row_of(wrow + mt * 16 + g + 8 * i).t);

  float acc[MT][D / 8][4] = {};
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) m_run[mt][i] = -INFINITY, l_run[mt][i] = 0.f;
  uint32_t qf[MT == 1 ? D / 16 : 1][4];  // MT = 1 keeps Q in registers

  for (int u = 0; j_next != INT_MAX; ++u) {
    const int j = j_next, st = u & 1;
    cp_async_wait_all();
    __syncthreads();  // stage st landed and s_bias[st] is published; stage st^1 is free
    if (MT == 1 && u == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qf[MT == 1 ? kk : 0], sQ, wrow, kk * 16, lane);
    }
    j_next = pop();
    if (j_next != INT_MAX) {
      load_kv(j_next, st ^ 1);
      cp_async_commit();
      publish_bias(j_next, st ^ 1);
    }
    float bias2[MT][2];
    bool any = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        bias2[mt][i] = s_bias[st][wrow + mt * 16 + g + 8 * i];
        any |= bias2[mt][i] != -INFINITY;
      }
    if (!__any_sync(0xffffffffu, any)) continue;

    // The block's 64 keys go in kSteps steps of kKeys: with MT = 2 and d = 128 a whole
    // block's scores would not fit in registers next to the 2 x 16 x 128 accumulators.
    const uint32_t k_s = sK(st), v_s = sV(st);
#pragma unroll 1
    for (int step = 0; step < kSteps; ++step) {
      const int kbase_row = step * kKeys;  // first key of this step within the block
      // S = Q K^T for MT row blocks x kKeys keys.
      float s[MT][kKeys / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (MT == 1) {
#pragma unroll
            for (int x = 0; x < 4; ++x) qa[mt][x] = qf[kk][x];
          } else {
            load_a<D>(qa[mt], sQ + ((wrow + mt * 16) / 64) * kTile, (wrow + mt * 16) % 64, kk * 16, lane);
          }
        }
#pragma unroll
        for (int nn = 0; nn < kKeys / 16; ++nn) {
          uint32_t bf[4];
          load_b_nk<D>(bf, k_s, kbase_row + nn * 16, kk * 16, lane);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma<T>(s[mt][2 * nn], qa[mt], bf[0], bf[1]);
            mma<T>(s[mt][2 * nn + 1], qa[mt], bf[2], bf[3]);
          }
        }
      }
      // Scale, bias, mask; online softmax in base 2. Only the diagonal block (or a window)
      // needs the token mask.
      const int key0 = j * kBsaBlock + kbase_row + 2 * c;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int t = t_row[mt][i];
          const bool need_mask = key0 - 2 * c + kKeys - 1 > t || p.window > 0;
          if (need_mask) {  // a real branch: off-diagonal blocks skip the compares
#pragma unroll
            for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e)
                if (key_masked(key0 + nt * 8 + e, t, p.window)) s[mt][nt][2 * i + e] = -INFINITY;
          }
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float x = s[mt][nt][2 * i + e] * p.scale_log2 + bias2[mt][i];
              s[mt][nt][2 * i + e] = x;
              mx = fmaxf(mx, x);
            }
          }
          const float m_new = fmaxf(m_run[mt][i], quad_max(mx));
          const float m_use = m_new == -INFINITY ? 0.f : m_new;
          const float alpha = fast_exp2(m_run[mt][i] - m_use);
          float rs = 0.f;
#pragma unroll
          for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pe = fast_exp2(s[mt][nt][2 * i + e] - m_use);
              s[mt][nt][2 * i + e] = pe;
              rs += pe;
            }
          }
          l_run[mt][i] = l_run[mt][i] * alpha + rs;
          m_run[mt][i] = m_new;
#pragma unroll
          for (int nd = 0; nd < D / 8; ++nd) {
            acc[mt][nd][2 * i] *= alpha;
            acc[mt][nd][2 * i + 1] *= alpha;
          }
        }
      }
      // O += P V: each V fragment feeds the MT row blocks.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) c_to_a<T>(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
          uint32_t bf[4];
          load_b_kn<D>(bf, v_s, kbase_row + kk * 16, nd * 16, lane);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma<T>(acc[mt][2 * nd], pa[mt], bf[0], bf[1]);
            mma<T>(acc[mt][2 * nd + 1], pa[mt], bf[2], bf[3]);
          }
        }
      }
    }
  }

  // Normalise and write O and the log-sum-exp (natural log).
  T* o = static_cast<T*>(p.out);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float lsum = quad_sum(l_run[mt][i]);
      const TileRow row = row_of(wrow + mt * 16 + g + 8 * i);
      if (!row.valid) continue;
      const float inv = 1.f / lsum;
      uint32_t* orow = reinterpret_cast<uint32_t*>(o + row.off);
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd)
        orow[nd * 4 + c] = Elem<T>::pack(acc[mt][nd][2 * i] * inv, acc[mt][nd][2 * i + 1] * inv);
      if (c == 0) p.lse[row.lrow] = (m_run[mt][i] + log2f(lsum)) * 0.6931471805599453f;
    }
  }
}

template <typename T, int D, int MT>
int launch(const BsaParams& p, int64_t B, cudaStream_t stream) {
  constexpr int kSmem = (MT + 4) * 64 * D * 2;  // Q tiles + two K and two V stages
  auto kernel = bsa_fwd_kernel<T, D, MT>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (e != cudaSuccess) return e;
  const dim3 grid((p.tiles_per_head + MT - 1) / MT, p.Hkv, static_cast<unsigned>(B));
  kernel<<<grid, 128, kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int bsa_forward(const BsaShape& s, BsaDtype dt, const void* q, const void* k, const void* v,
                const BsaRows& rows, const BsaPlan& plan, float scale, void* o, float* lse,
                cudaStream_t stream, int rows_per_warp) {
  if ((rows_per_warp != 16 && rows_per_warp != 32) || s.Hkv <= 0 || s.Hq % s.Hkv || s.group() > 16 || (s.d != 64 && s.d != 128) || s.T <= 0 ||
      s.B <= 0 || s.T > INT32_MAX / 2 || s.tiles_per_head() > INT32_MAX / 2 || s.Hkv > 65535 || s.B > 65535)
    return kBsaBadShape;
  dev::BsaParams p{};
  p.q = q; p.k = k; p.v = v; p.out = o; p.lse = lse;
  p.row_ptr = rows.row_ptr; p.blocks = rows.blocks; p.bias = rows.bias; p.window = rows.window;
  p.tile_ptr = plan.tile_ptr; p.tile_blocks = plan.tile_blocks;
  p.T = s.T; p.Hq = static_cast<int>(s.Hq); p.Hkv = static_cast<int>(s.Hkv);
  p.G = static_cast<int>(s.group()); p.P = static_cast<int>(s.tile_positions());
  p.tiles_per_head = static_cast<int>(s.tiles_per_head());
  p.n_blocks = static_cast<int>(s.n_blocks());
  p.scale = scale; p.scale_log2 = scale * dev::kLog2e;
  const bool bf = dt == BsaDtype::kBf16;
  if (rows_per_warp == 16) {
    if (s.d == 64) return bf ? launch<__nv_bfloat16, 64, 1>(p, s.B, stream) : launch<__half, 64, 1>(p, s.B, stream);
    return bf ? launch<__nv_bfloat16, 128, 1>(p, s.B, stream) : launch<__half, 128, 1>(p, s.B, stream);
  }
  if (s.d == 64) return bf ? launch<__nv_bfloat16, 64, 2>(p, s.B, stream) : launch<__half, 64, 2>(p, s.B, stream);
  return bf ? launch<__nv_bfloat16, 128, 2>(p, s.B, stream) : launch<__half, 128, 2>(p, s.B, stream);
}

}  // namespace st::kernels
