// DashAttention's routing scores q . kbar on Hopper tensor cores at fp32 accuracy: q is exact
// in bf16, and the fp32 chunk summaries kbar enter as three bf16 parts (kbar rounded, then each
// part the rounding residual of the rest), so the three bf16 products, accumulated in fp32,
// carry kbar's 24 mantissa bits. The cuBLAS fp32 GEMM that src/attention/dash.cpp runs
// elsewhere is the reference; this replaces it where q is bf16 on an sm_90 device.
#pragma once
#include <cstdint>

#include <cuda_runtime_api.h>

#include "block_sparse_attention.h"  // kBsaBadShape

namespace st::kernels {

constexpr int kDashScoreParts = 3;  // kbar's bf16 parts: hi, mid, lo (24 mantissa bits)

struct DashScoreArgs {
  // Query rows t0 .. t0 + n of one KV group's G heads (bf16): row i of head h at
  // q + h * head_stride + i * row_stride, d contiguous elements.
  const void* q;
  int64_t head_stride, row_stride;
  const void* kbar_parts;  // [3, parts_rows, d] bf16: hi, mid, lo with kbar = hi + mid + lo
  int64_t parts_rows;      // >= n_seen: the parts may hold later chunks too (a whole sequence's)
  float* scores;           // out: [G, n, n_seen], rows scores_ld >= n_seen floats apart
  // out: [G, n, tiles] (rows tile_max_ld >= ceil(n_seen / 64) apart): each row's max over its
  // routing candidates (dash_route.h: chunks sink_chunks <= c < dash_candidates_end) in each
  // tile of 64 chunks, -inf where it has none: dash_route.h's DashRoutingArgs::tile_max.
  float* tile_max;
  int64_t G, n, n_seen, scores_ld, tile_max_ld, t0, chunk, sink_chunks, local_chunks, d;
};

// Whether this device and build run dash_scores (an sm_90 GPU, sm_90a code in the build).
bool dash_scores_runs_here();

// scores[h, i, c] = q_h(t0 + i) . kbar_c for every chunk c before the own chunk of the last row
// of i's query tile (64 / G consecutive rows, as the attention kernels pack them): every
// routing candidate of row i; with the tile maxima of every tile that holds a candidate of row
// i. Other entries are left unwritten. d 64 or 128, G <= 64. Returns 0,
// a cudaError_t, or kBsaBadShape.
int dash_scores(const DashScoreArgs& a, cudaStream_t stream);

}  // namespace st::kernels
