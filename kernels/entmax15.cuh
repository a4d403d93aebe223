// Device pieces of the alpha = 1.5 entmax (DESIGN §2.1) shared by the plain entmax kernels
// (entmax15.cu) and DashAttention's fused routing (dash_route.cu), so both find the same
// threshold the same way.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace st::kernels {

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// sqrt(p) = [x - tau]_+ and p for x = (z - max z) / 2.
__device__ __forceinline__ float entmax15_sqrt_p(float x, float tau) { return fmaxf(x - tau, 0.f); }
__device__ __forceinline__ float entmax15_p(float x, float tau) {
  const float d = entmax15_sqrt_p(x, tau);
  return d * d;
}

// p_i = max(0.5 (z_i - max) - tau, 0)^2; max = -inf when the row has no finite entry (p = 0).
struct Entmax15Threshold {
  float max, tau;
  __device__ float prob(float z) const { return entmax15_p(0.5f * (z - max), tau); }
  // sqrt(p_i) = [x - tau]_+, the same bits as sqrtf(prob(z)): in binary floating point with
  // round-to-nearest sqrt(d * d) = d (checked over every float in [1, 4)), unless d * d underflows.
  __device__ float sqrt_prob(float z) const { return entmax15_sqrt_p(0.5f * (z - max), tau); }
};

// tau of one row, by one whole warp, from x = (z - max z) / 2 (<= 0; -inf entries may be left
// out or not, tau is the same bit for bit). each_x(f) calls f(odd, x_i) for this lane's entries,
// i = l, l + 32, ... ascending for lane l, odd = (i / 32) % 2. tau solves
// sum_i [x_i - tau]_+^2 = 1: Newton's method from tau = -1, where f is convex and decreasing,
// climbs monotonically to the root and is exact once the support stops changing (a quadratic
// on it); it stops when a step no longer moves tau (fp32 rounding), at most 64 steps. A lane
// sums its even and odd i / 32 apart: two dependency chains, and where `odd` is a constant (a
// row unrolled from registers) no branch; entries off the support add exact zeros.
template <class EachX>
__device__ float entmax15_tau_of(const EachX& each_x) {
  float tau = -1.f;
  for (int it = 0; it < 64; ++it) {
    float s1[2] = {0.f, 0.f}, s2[2] = {0.f, 0.f};  // [odd]
    each_x([&](bool odd, float x) {
      const float d = entmax15_sqrt_p(x, tau);
      if (odd) {
        s1[1] += d;
        s2[1] += d * d;
      } else {
        s1[0] += d;
        s2[0] += d * d;
      }
    });
    const float sum1 = warp_sum(s1[0] + s1[1]), sum2 = warp_sum(s2[0] + s2[1]);
    const float next = tau + (sum2 - 1.f) / (2.f * sum1);
    if (!(next > tau)) break;  // at the root up to rounding (or past it by rounding)
    tau = next;
  }
  return tau;
}

// The threshold of one row from its z: each(f) calls f(odd, z_i) as entmax15_tau_of's each_x.
// x = 0.5 (z - max) is exact scaling of one rounding, so a caller that keeps x instead of z
// (dash_route.cu's register rows) gets the same bits.
template <class Each>
__device__ Entmax15Threshold entmax15_threshold_of(const Each& each) {
  float mx = -INFINITY;
  each([&](bool, float z) { mx = fmaxf(mx, z); });
  mx = warp_max(mx);
  if (mx == -INFINITY) return {mx, -1.f};
  return {mx, entmax15_tau_of([&](const auto& f) { each([&](bool odd, float z) { f(odd, 0.5f * (z - mx)); }); })};
}

// The same over the entries z(i) with lo <= i < hi (the rest of the row counts as -inf), read
// at every pass. Lane l reads i = l, l + 32, ... whatever lo is, so a row masked to -inf
// outside [lo, hi) gets bit for bit the same threshold as this range.
template <class Z>
__device__ Entmax15Threshold entmax15_threshold(const Z& z, int64_t lo, int64_t hi) {
  const int64_t first = lo - lo % 32 + (threadIdx.x & 31);
  return entmax15_threshold_of([&](const auto& f) {
    for (int64_t i = first; i < hi; i += 32)
      if (i >= lo) f(((i >> 5) & 1) != 0, z(i));
  });
}

// The Jacobian-vector product's row constant s . dp / sum s (s = sqrt(p) on the support), by
// one whole warp; 0 for a row without support (it has no gradient). each(f) calls f(p_i, dp_i)
// for this lane's entries, ascending; entries with p = 0 may be left out.
template <class Each>
__device__ float entmax15_jvp_mean_of(const Each& each) {
  float s_sum = 0.f, s_dot = 0.f;
  each([&](float pi, float dpi) {
    const float s = pi > 0.f ? sqrtf(pi) : 0.f;
    s_sum += s;
    s_dot += s * dpi;
  });
  s_sum = warp_sum(s_sum);
  s_dot = warp_sum(s_dot);
  return s_sum > 0.f ? s_dot / s_sum : 0.f;
}

// The same over i in [0, n).
template <class P, class DP>
__device__ float entmax15_jvp_mean(const P& p, const DP& dp, int64_t n) {
  return entmax15_jvp_mean_of([&](const auto& f) {
    for (int64_t i = threadIdx.x & 31; i < n; i += 32) f(p(i), dp(i));
  });
}

}  // namespace st::kernels
