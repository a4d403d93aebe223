// In-place exclusive prefix sum over int64 counts: ptr[0..n) holds counts on entry;
// on exit ptr[i] = sum of counts before i and ptr[n] = total. Three launches: per-chunk sums,
// one CTA scanning the chunk sums, per-chunk scans with their offsets. Used to turn per-row,
// per-tile and per-block counts into CSR offsets on the GPU without a host round trip.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace st::kernels::dev {

constexpr int kScanChunk = 512 * 8;
inline int64_t scan_chunks(int64_t n) { return (n + kScanChunk - 1) / kScanChunk; }

// tmp: scan_chunks(n) int64 of scratch.
cudaError_t exclusive_scan_inplace(int64_t* ptr, int64_t n, int64_t* tmp, cudaStream_t stream);

}  // namespace st::kernels::dev
