// GQA-grouped block-sparse flash attention: the one core kernel behind DashAttention, NSA
// selection, InfLLMv2 and sliding-window attention (DESIGN.md §3).
//
// Plain C++ interface: raw device pointers, sizes and a stream. Nothing here knows LibTorch;
// src/attention/cuda/ wraps these launchers in autograd Functions.
//
// Layouts (all contiguous, row-major):
//   q, o, do, dq      [B, Hq,  T, d]   bf16 or fp16
//   k, v, dk, dv      [B, Hkv, T, d]   same dtype
//   lse, delta        [B, Hq,  T]      fp32 (lse in natural-log units of the scaled logits)
//   row lists (CSR over rows r = (b*Hkv + hkv)*T + t, i.e. one list per query position
//   shared by the G = Hq/Hkv heads of the group):
//     row_ptr [B*Hkv*T + 1] int64, blocks [nnz] int32, bias [nnz] fp32 (optional).
//   Block j holds keys [64 j, 64 j + 64). A row's list names the selected blocks strictly
//   before the row's own (diagonal) block t/64, sorted ascending, without duplicates
//   (bsa_rows_count/fill build such lists). The diagonal block is always attended, bias 0,
//   with the token-level causal mask (key <= t).
//   window > 0 adds a sliding window: every key with t - window < key <= t is attended too,
//   at bias 0 where its block is not listed (a listed block's bias covers all its keys). So a
//   row reads the union of its listed blocks, its diagonal block and its window, in one
//   softmax (InfLLMv2); empty lists plus a window are sliding-window attention (NSA's window
//   branch; for windows under 64 keys the whole causal part of the diagonal block is read).
//
// Logits: s = scale * q.k + bias(row, block); o = softmax(s) v over the attended keys.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace st::kernels {

constexpr int kBsaBlock = 64;  // keys per KV block and MMA rows per query tile

enum class BsaDtype { kBf16, kFp16 };

struct BsaShape {
  int64_t B = 0, Hq = 0, Hkv = 0, T = 0, d = 0;
  int64_t group() const { return Hq / Hkv; }
  // Query positions per tile: the tile packs all G heads of a group for P positions.
  int64_t tile_positions() const { return kBsaBlock / group(); }
  int64_t tiles_per_head() const { return (T + tile_positions() - 1) / tile_positions(); }
  int64_t n_blocks() const { return (T + kBsaBlock - 1) / kBsaBlock; }
};

// Per-row lists as described above. bias may be null (all zero).
struct BsaRows {
  const int64_t* row_ptr = nullptr;
  const int32_t* blocks = nullptr;
  const float* bias = nullptr;
  int64_t nnz = 0;
  int window = 0;  // keys per sliding window (see above); 0: none
};

// The plan: per-tile union lists (forward and dQ) and the reverse index (dK/dV), built on
// the GPU from the row lists. Lives in one caller-owned workspace of bsa_plan_bytes bytes.
struct BsaPlan {
  int64_t* tile_ptr = nullptr;     // [n_tiles + 1], n_tiles = B*Hkv*tiles_per_head
  int32_t* tile_blocks = nullptr;  // union of the tile's rows' blocks, its diagonal block(s)
                                   // and the blocks its positions' windows reach
  int64_t* rev_ptr = nullptr;      // [B*Hkv*n_blocks + 1]
  int32_t* rev_tiles = nullptr;    // tile index within its (b, hkv), per KV block
  int64_t capacity = 0;            // entries tile_blocks / rev_tiles can hold
};

// Status codes: 0 ok; otherwise a cudaError_t value or one of these.
constexpr int kBsaBadShape = -1;

size_t bsa_plan_bytes(const BsaShape& s, int64_t nnz, int window);
// Carves the workspace into a BsaPlan and fills it. Asynchronous on stream.
int bsa_plan(const BsaShape& s, const BsaRows& rows, void* workspace, BsaPlan* plan,
             cudaStream_t stream);

// Which matmul instructions the kernels use. kAuto: Hopper wgmma on sm_90 devices (when the
// build has sm_90a code), mma.sync elsewhere; kPortable: mma.sync everywhere (tests compare).
enum class BsaPath { kAuto, kPortable };

// Forward: o and lse.
int bsa_forward(const BsaShape& s, BsaDtype dt, const void* q, const void* k, const void* v,
                const BsaRows& rows, const BsaPlan& plan, float scale, void* o, float* lse,
                cudaStream_t stream, BsaPath path = BsaPath::kAuto);

// Backward: dq, dk, dv and dbias ([nnz], may be null when rows.bias is null or unused).
// scratch: bsa_backward_scratch_bytes(s) bytes (fp32 dK/dV accumulators and delta, the rows'
// sums of P dP). A pass over each query tile's blocks computes dQ in registers (written once)
// and each row's sum of P dP; then one CTA per (b, hkv, KV block, window of 512 query tiles)
// walks that part of the block's reverse list with dK/dV in registers and adds them into the
// fp32 scratch with atomics. dS = P (dP - delta) takes delta as that sum, not as dO . O from
// the 16-bit O (~2^-9 relative off it), so each row of dS sums to 0 to fp32 rounding and
// d(bias), a sum of dS over a block, matches an fp32 reference (DashAttention's prior divides
// d(bias) by small routing weights). dQ's own dS uses dO . O, as FlashAttention does.
// dQ and dbias (once per list entry) are deterministic; dK and dV are not bitwise where a
// block's query tiles span several windows (more than 512 tiles per head, i.e. T * G > 32K):
// their summation order follows the atomics (differences at fp32 rounding level).
size_t bsa_backward_scratch_bytes(const BsaShape& s);
int bsa_backward(const BsaShape& s, BsaDtype dt, const void* q, const void* k, const void* v,
                 const void* o, const float* lse, const void* dout, const BsaRows& rows,
                 const BsaPlan& plan, float scale, void* dq, void* dk, void* dv, float* dbias,
                 void* scratch, cudaStream_t stream, BsaPath path = BsaPath::kAuto);

// Row lists from a dense top-k style tensor ids [B, Hkv, T, k] int32 padded with -1 (what
// NSA/InfLLMv2 selection produce). Entries outside [0, t/64) (the diagonal block is implicit)
// and duplicates are dropped; each list is sorted. Two passes: counts, then fill.
//   bsa_rows_count: writes row_ptr (exclusive prefix sum, row_ptr[rows] = nnz).
//   bsa_rows_fill:  writes blocks (row_ptr must be complete; read nnz back from
//                   row_ptr[rows] to size blocks, or size it rows*k).
// scan_tmp: bsa_scan_bytes(B*Hkv*T) bytes of scratch.
size_t bsa_scan_bytes(int64_t n);
int bsa_rows_count(const BsaShape& s, const int32_t* ids, int k, int64_t* row_ptr,
                   void* scan_tmp, cudaStream_t stream);
int bsa_rows_fill(const BsaShape& s, const int32_t* ids, int k, const int64_t* row_ptr,
                  int32_t* blocks, cudaStream_t stream);

}  // namespace st::kernels
