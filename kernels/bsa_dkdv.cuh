// The element-wise steps of a (query tile, KV block) pair that the two dK/dV kernels share
// (bsa_backward.cu's portable one, bsa_dkdv_sm90.cu's warp-specialized one). Fragments are
// transposed: each warp holds S^T and dP^T for its 16 keys (rows kw + g, kw + g + 8) x the
// tile's 64 rows (columns), as float[8][4] laid out like mma.sync's C (g = lane / 4, c = lane % 4).
#pragma once
#include "bsa_tile.cuh"

namespace st::kernels::dev {

// Per tile row (column of S^T), what the kernels keep in shared memory for the tile.
struct TileColumns {
  const float* bl;     // bias - lse for block j (base 2); -inf where the row does not read j
  const float* delta;  // the row's sum of P dP
  const int* t;        // position (-1: padding row)
  const int* lo;       // first key read in block j
  int t0;              // the tile's first position
};

// S^T -> P^T in place: token masks where a row needs one (only the diagonal block and the
// window's edge: a window starts inside block j for positions key0 + window .. key0 + window
// + 62), then exp2(s * scale + bias - lse).
__device__ __forceinline__ void probabilities_t(float (&s)[8][4], const BsaParams& p, const TileColumns& col, int key0,
                                                int kw, int g, int c) {
  if (key0 + kBsaBlock - 1 > col.t0 ||
      (p.window > 0 && col.t0 + p.P > key0 + p.window && col.t0 < key0 + p.window + kBsaBlock - 1)) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = nt * 8 + 2 * c + (e & 1);
        if (key_masked(key0 + kw + g + 8 * (e >> 1), col.t[n], col.lo[n])) s[nt][e] = -INFINITY;
      }
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = fast_exp2(s[nt][e] * p.scale_log2 + col.bl[2 * c + nt * 8 + (e & 1)]);
}

// dP^T -> dS^T = P^T (dP^T - delta) in place; with colsum, also each column's sum over the
// warp's 16 keys (shuffles; lanes g == 0 write colsum[column]), for d(bias).
__device__ __forceinline__ void grad_scores_t(float (&dp)[8][4], const float (&pt)[8][4], const TileColumns& col,
                                              float* colsum, int g, int c) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dp[nt][e] = pt[nt][e] * (dp[nt][e] - col.delta[nt * 8 + 2 * c + (e & 1)]);
  if (!colsum) return;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float x = dp[nt][e] + dp[nt][e + 2];
      x += __shfl_xor_sync(0xffffffffu, x, 4);
      x += __shfl_xor_sync(0xffffffffu, x, 8);
      x += __shfl_xor_sync(0xffffffffu, x, 16);
      if (g == 0) colsum[nt * 8 + 2 * c + e] = x;
    }
  }
}

// d(bias) of the entry (position, j): the 4 warps' column sums over the position's G rows
// (row(h) = the position's row of head h), written once (entry -1: j not listed there).
template <typename RowOfHead>
__device__ __forceinline__ void write_dbias(const BsaParams& p, const float (*colsum)[64], int entry, RowOfHead row) {
  if (entry < 0) return;
  float sum = 0.f;
  for (int h = 0; h < p.G; ++h) {
    const int r = row(h);
    sum += colsum[0][r] + colsum[1][r] + colsum[2][r] + colsum[3][r];
  }
  p.dbias[entry] = sum;
}

// Adds this thread's part of dK / scale and dV (the warp's keys kw + g, kw + g + 8) into the fp32
// accumulators, which other CTAs add to as well.
template <int D>
__device__ __forceinline__ void add_dk_dv(const BsaParams& p, int64_t bh, int key0, int kw, const float (&dk)[D / 8][4],
                                          const float (&dv)[D / 8][4], int g, int c) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t key = key0 + kw + g + 8 * i;
    if (key >= p.T) continue;
    float* krow = p.dk_accum + (bh * p.T + key) * D;
    float* vrow = p.dv_accum + (bh * p.T + key) * D;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      atomic_add2(krow + nd * 8 + 2 * c, dk[nd][2 * i], dk[nd][2 * i + 1]);
      atomic_add2(vrow + nd * 8 + 2 * c, dv[nd][2 * i], dv[nd][2 * i + 1]);
    }
  }
}

}  // namespace st::kernels::dev
