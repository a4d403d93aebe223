// Exclusive prefix sum (see bsa_scan.cuh).
#include "bsa_scan.cuh"

namespace st::kernels::dev {

constexpr int kScanThreads = 512;
constexpr int kScanPerThread = 8;
static_assert(kScanChunk == kScanThreads * kScanPerThread, "chunk size");
namespace {

// Exclusive block-wide scan of one value per thread; returns the block total via *total.
__device__ __forceinline__ int64_t block_exclusive_scan(int64_t x, int64_t* total) {
  __shared__ int64_t warp_sums[kScanThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < kScanThreads / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kScanThreads / 32) warp_sums[lane] = w;  // inclusive
  }
  __syncthreads();
  const int64_t before = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[kScanThreads / 32 - 1];
  __syncthreads();  // warp_sums may be reused by the next call
  return before + incl - x;
}

__global__ void scan_chunk_sums(const int64_t* ptr, int64_t n, int64_t* sums) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kScanChunk;
  int64_t x = 0;
  for (int i = 0; i < kScanPerThread; ++i) {
    const int64_t idx = base + static_cast<int64_t>(i) * kScanThreads + threadIdx.x;
    if (idx < n) x += ptr[idx];
  }
  int64_t total;
  block_exclusive_scan(x, &total);
  if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// One CTA: sums[i] <- exclusive prefix; ptr[n] <- grand total.
__global__ void scan_sums(int64_t* sums, int64_t n_chunks, int64_t* ptr, int64_t n) {
  int64_t carry = 0;
  for (int64_t base = 0; base < n_chunks; base += kScanThreads) {
    const int64_t idx = base + threadIdx.x;
    const int64_t x = idx < n_chunks ? sums[idx] : 0;
    int64_t total;
    const int64_t ex = block_exclusive_scan(x, &total);
    if (idx < n_chunks) sums[idx] = carry + ex;
    carry += total;
  }
  if (threadIdx.x == 0) ptr[n] = carry;
}

// Each thread scans kScanPerThread consecutive elements (a contiguous run per thread keeps
// the in-place update simple: read all, scan, write all).
__global__ void scan_apply(int64_t* ptr, int64_t n, const int64_t* sums) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kScanChunk +
                       static_cast<int64_t>(threadIdx.x) * kScanPerThread;
  int64_t v[kScanPerThread];
  int64_t x = 0;
#pragma unroll
  for (int i = 0; i < kScanPerThread; ++i) {
    v[i] = base + i < n ? ptr[base + i] : 0;
    x += v[i];
  }
  int64_t total;
  int64_t run = sums[blockIdx.x] + block_exclusive_scan(x, &total);
#pragma unroll
  for (int i = 0; i < kScanPerThread; ++i) {
    if (base + i < n) ptr[base + i] = run;
    run += v[i];
  }
}

}  // namespace

cudaError_t exclusive_scan_inplace(int64_t* ptr, int64_t n, int64_t* tmp,
                                          cudaStream_t stream) {
  const int64_t chunks = scan_chunks(n);
  if (chunks == 0) return cudaMemsetAsync(ptr, 0, sizeof(int64_t), stream);
  scan_chunk_sums<<<static_cast<unsigned>(chunks), kScanThreads, 0, stream>>>(ptr, n, tmp);
  scan_sums<<<1, kScanThreads, 0, stream>>>(tmp, chunks, ptr, n);
  scan_apply<<<static_cast<unsigned>(chunks), kScanThreads, 0, stream>>>(ptr, n, tmp);
  return cudaGetLastError();
}

}  // namespace st::kernels::dev
