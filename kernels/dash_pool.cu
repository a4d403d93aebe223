// DashAttention's chunk summaries, forward and backward (dash_pool.h).
#include "dash_pool.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "entmax15.cuh"  // warp_sum

namespace st::kernels {
namespace {

constexpr int kWarps = 4;  // chunks per block

// A chunk's place: its keys, and this lane's D / 32 consecutive elements of a row.
template <typename T, int D>
struct ChunkRows {
  static constexpr int V = D / 32;
  const T* keys;
  int64_t row_stride;
  int head;
  __device__ ChunkRows(const DashPoolArgs& a, const void* k, int64_t c) {
    const int64_t i = c % a.n, bh = c / a.n;
    head = static_cast<int>(bh % a.H);
    keys = static_cast<const T*>(k) + (bh / a.H) * a.batch_stride + head * a.head_stride + i * a.chunk * a.row_stride +
           (threadIdx.x & 31) * V;
    row_stride = a.row_stride;
  }
  __device__ void load(int64_t j, float (&x)[V]) const {
#pragma unroll
    for (int v = 0; v < V; ++v) x[v] = static_cast<float>(keys[j * row_stride + v]);
  }
};

template <int V>
__device__ float lane_dot(const float (&x)[V], const float (&y)[V]) {
  float s = 0.f;
#pragma unroll
  for (int v = 0; v < V; ++v) s = fmaf(x[v], y[v], s);
  return s;
}

// h / sqrt(d), this lane's part: the scores are h . k_j / sqrt(d).
template <int V>
__device__ void scaled_query(const DashPoolArgs& a, int head, float (&h)[V]) {
  const float scale = rsqrtf(static_cast<float>(a.d));
  const float* row = a.pool_query + head * a.d + (threadIdx.x & 31) * V;
#pragma unroll
  for (int v = 0; v < V; ++v) h[v] = row[v] * scale;
}

// One pass over the chunk's keys with a running max (online softmax).
template <typename T, int D>
__global__ void __launch_bounds__(32 * kWarps) pool_forward_kernel(DashPoolArgs a, float* kbar, float* lse) {
  constexpr int V = D / 32;
  const int64_t c = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  if (c >= a.B * a.H * a.n) return;
  const ChunkRows<T, D> rows(a, a.k, c);
  float h[V], acc[V] = {}, x[V];
  scaled_query(a, rows.head, h);
  float m = -INFINITY, l = 0.f;
  for (int64_t j = 0; j < a.chunk; ++j) {
    rows.load(j, x);
    const float s = warp_sum(lane_dot(x, h)), m_new = fmaxf(m, s);
    const float rescale = expf(m - m_new), e = expf(s - m_new);
    l = fmaf(l, rescale, e);
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = fmaf(acc[v], rescale, e * x[v]);
    m = m_new;
  }
  float* out = kbar + c * D + (threadIdx.x & 31) * V;
#pragma unroll
  for (int v = 0; v < V; ++v) out[v] = acc[v] / l;
  if ((threadIdx.x & 31) == 0) lse[c] = m + logf(l);
}

// d w_j = g . k_j, and since sum_i w_i k_i = kbar, d s_j = w_j (g . k_j - g . kbar); then
// d k_j = w_j g + d s_j h / sqrt(d) and d h = sum_j d s_j k_j / sqrt(d).
template <typename T, int D>
__global__ void __launch_bounds__(32 * kWarps) pool_backward_kernel(DashPoolArgs a, const float* kbar, const float* lse,
                                                                    const float* d_kbar, T* dk, float* d_pool_query) {
  constexpr int V = D / 32;
  const int64_t c = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
  if (c >= a.B * a.H * a.n) return;
  const int lane = threadIdx.x & 31;
  const ChunkRows<T, D> rows(a, a.k, c);
  T* d_rows = dk + (c / a.n * a.T + c % a.n * a.chunk) * D + lane * V;  // dk is contiguous
  float h[V], g[V], kb[V], x[V], dh[V] = {};
  scaled_query(a, rows.head, h);
#pragma unroll
  for (int v = 0; v < V; ++v) {
    g[v] = d_kbar[c * D + lane * V + v];
    kb[v] = kbar[c * D + lane * V + v];
  }
  const float g_kbar = warp_sum(lane_dot(g, kb)), chunk_lse = lse[c];
  for (int64_t j = 0; j < a.chunk; ++j) {
    rows.load(j, x);
    const float w = expf(warp_sum(lane_dot(x, h)) - chunk_lse);
    const float ds = w * (warp_sum(lane_dot(x, g)) - g_kbar);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      d_rows[j * D + v] = static_cast<T>(fmaf(w, g[v], ds * h[v]));
      dh[v] = fmaf(ds, x[v], dh[v]);
    }
  }
  const float scale = rsqrtf(static_cast<float>(a.d));
#pragma unroll
  for (int v = 0; v < V; ++v) atomicAdd(d_pool_query + rows.head * a.d + lane * V + v, dh[v] * scale);
}

bool shape_ok(const DashPoolArgs& a) {
  return (a.d == 64 || a.d == 128) && a.B >= 0 && a.H >= 1 && a.n >= 0 && a.chunk >= 1 && a.n * a.chunk <= a.T &&
         (a.B * a.H * a.n + kWarps - 1) / kWarps < (int64_t(1) << 31);
}

unsigned blocks(const DashPoolArgs& a) { return static_cast<unsigned>((a.B * a.H * a.n + kWarps - 1) / kWarps); }

template <typename T>
int forward(const DashPoolArgs& a, float* kbar, float* lse, cudaStream_t stream) {
  if (a.d == 64)
    pool_forward_kernel<T, 64><<<blocks(a), 32 * kWarps, 0, stream>>>(a, kbar, lse);
  else
    pool_forward_kernel<T, 128><<<blocks(a), 32 * kWarps, 0, stream>>>(a, kbar, lse);
  return cudaGetLastError();
}

template <typename T>
int backward(const DashPoolArgs& a, const float* kbar, const float* lse, const float* d_kbar, void* dk,
             float* d_pool_query, cudaStream_t stream) {
  if (a.d == 64)
    pool_backward_kernel<T, 64>
        <<<blocks(a), 32 * kWarps, 0, stream>>>(a, kbar, lse, d_kbar, static_cast<T*>(dk), d_pool_query);
  else
    pool_backward_kernel<T, 128>
        <<<blocks(a), 32 * kWarps, 0, stream>>>(a, kbar, lse, d_kbar, static_cast<T*>(dk), d_pool_query);
  return cudaGetLastError();
}

}  // namespace

int dash_pool_forward(const DashPoolArgs& a, float* kbar, float* lse, cudaStream_t stream) {
  if (!shape_ok(a)) return kBsaBadShape;
  if (a.B * a.H * a.n == 0) return 0;
  switch (a.dtype) {
    case DashQType::kBf16:
      return forward<__nv_bfloat16>(a, kbar, lse, stream);
    case DashQType::kF16:
      return forward<__half>(a, kbar, lse, stream);
    case DashQType::kF32:
      return forward<float>(a, kbar, lse, stream);
  }
  return kBsaBadShape;
}

int dash_pool_backward(const DashPoolArgs& a, const float* kbar, const float* lse, const float* d_kbar, void* dk,
                       float* d_pool_query, cudaStream_t stream) {
  if (!shape_ok(a)) return kBsaBadShape;
  if (a.B * a.H * a.n == 0) return 0;
  switch (a.dtype) {
    case DashQType::kBf16:
      return backward<__nv_bfloat16>(a, kbar, lse, d_kbar, dk, d_pool_query, stream);
    case DashQType::kF16:
      return backward<__half>(a, kbar, lse, d_kbar, dk, d_pool_query, stream);
    case DashQType::kF32:
      return backward<float>(a, kbar, lse, d_kbar, dk, d_pool_query, stream);
  }
  return kBsaBadShape;
}

}  // namespace st::kernels
