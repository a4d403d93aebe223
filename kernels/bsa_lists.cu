// Row-list builders: the block lists the core kernels take, from what the selection stages
// produce. Each builder is two passes (count per row, exclusive scan into row_ptr; then fill),
// so the lists take O(rows x selected) memory and no host round trip beyond reading nnz.
#include "block_sparse_attention.h"
#include "bsa_scan.cuh"

namespace st::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxTopk = 1024;  // 2 x 4 warps x k ints of shared memory

// One warp per row of ids[rows, k]. An entry is kept when 0 <= id < t/64 and no earlier
// entry has the same id; its slot in the sorted list is the number of kept entries with a
// smaller id. O(k^2 / 32) per lane: cheap for the k of NSA/InfLLMv2 (16..64).
template <bool kFill>
__global__ void topk_rows_kernel(const int32_t* ids, int k, int64_t rows, int64_t T,
                                 int64_t* row_ptr, int32_t* blocks) {
  extern __shared__ int32_t sh[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (r >= rows) return;  // whole warp leaves together; only warp-level sync below
  int32_t* in_range = sh + warp * 2 * k;  // id, or -1 when outside [0, t/64)
  int32_t* kept = in_range + k;           // id at its first occurrence, else -1
  const int diag = static_cast<int>((r % T) / kBsaBlock);
  for (int i = lane; i < k; i += 32) {
    const int id = ids[r * k + i];
    in_range[i] = (id >= 0 && id < diag) ? id : -1;
  }
  __syncwarp();
  for (int i = lane; i < k; i += 32) {
    int id = in_range[i];
    for (int i2 = 0; i2 < i && id >= 0; ++i2)
      if (in_range[i2] == id) id = -1;
    kept[i] = id;
  }
  __syncwarp();
  int n = 0;
  for (int i = lane; i < k; i += 32) {
    const int id = kept[i];
    if (id < 0) continue;
    ++n;
    if (kFill) {
      int rank = 0;
      for (int i2 = 0; i2 < k; ++i2) rank += kept[i2] >= 0 && kept[i2] < id;
      blocks[row_ptr[r] + rank] = id;
    }
  }
  if (!kFill) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    if (lane == 0) row_ptr[r] = n;
  }
}

}  // namespace

size_t bsa_scan_bytes(int64_t n) { return dev::scan_chunks(n) * sizeof(int64_t); }

int bsa_rows_count(const BsaShape& s, const int32_t* ids, int k, int64_t* row_ptr,
                   void* scan_tmp, cudaStream_t stream) {
  if (k <= 0 || k > kMaxTopk) return kBsaBadShape;
  const int64_t rows = s.B * s.Hkv * s.T;
  const unsigned grid = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  const size_t smem = kWarps * 2 * k * sizeof(int32_t);
  topk_rows_kernel<false><<<grid, kWarps * 32, smem, stream>>>(ids, k, rows, s.T, row_ptr, nullptr);
  cudaError_t e = cudaGetLastError();
  if (e) return e;
  return dev::exclusive_scan_inplace(row_ptr, rows, static_cast<int64_t*>(scan_tmp), stream);
}

int bsa_rows_fill(const BsaShape& s, const int32_t* ids, int k, const int64_t* row_ptr,
                  int32_t* blocks, cudaStream_t stream) {
  if (k <= 0 || k > kMaxTopk) return kBsaBadShape;
  const int64_t rows = s.B * s.Hkv * s.T;
  const unsigned grid = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  const size_t smem = kWarps * 2 * k * sizeof(int32_t);
  topk_rows_kernel<true><<<grid, kWarps * 32, smem, stream>>>(
      ids, k, rows, s.T, const_cast<int64_t*>(row_ptr), blocks);
  return cudaGetLastError();
}

}  // namespace st::kernels
