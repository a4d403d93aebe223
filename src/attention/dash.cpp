#include "attention/dash.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <torch/autograd.h>

#include "attention/block_sparse.h"
#include "attention/block_sparse_dispatch.h"
#include "attention/entmax.h"
#ifdef SPARSETRAIN_CUDA
#include "attention/cuda/dash_pooling.h"
#include "attention/cuda/dash_routing.h"
#endif

namespace st {

using torch::Tensor;

DashAttention::DashAttention(const ModelConfig& cfg)
    : cfg_(cfg.attention.dash), impl_(cfg.attention.impl), sparsity_offset_(cfg.attention.sparsity_offset) {
  // Zero makes every chunk summary the plain mean of its keys (DESIGN §2.2): a neutral start
  // for continual pretraining, and the pooling query still gets a gradient there (the
  // derivative of a softmax-weighted mean at uniform weights is the keys' covariance).
  pool_query = register_parameter("pool_query", torch::zeros({cfg.n_kv_heads, cfg.head_dim_or_default()}));
}

Tensor DashAttention::chunk_summaries(const Tensor& k_in) const {
#ifdef SPARSETRAIN_CUDA
  if (impl_ != "reference" && cuda::dash_pooling_runs(k_in)) return cuda::pool_chunks(k_in, pool_query, cfg_.chunk);
#endif
  const Tensor k = k_in.to(reference_dtype(k_in));
  const int64_t B = k.size(0), H = k.size(1), d = k.size(3), C = cfg_.chunk, n = k.size(2) / C;
  auto chunks = k.narrow(2, 0, n * C).view({B, H, n, C, d});
  auto h = pool_query.to(k.scalar_type()).view({1, H, 1, 1, d});
  auto weights = torch::softmax((chunks * h).sum(-1) / std::sqrt(double(d)), -1);  // [B, H, n, C]
  return (weights.unsqueeze(-1) * chunks).sum(3);
}

Tensor DashAttention::chunk_bias(const Tensor& q, const Tensor& k) const {
  return bias_rows(q, chunk_summaries(k), 0, q.size(2));
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One routing tile's scores: query rows [t0, t0 + n) of one KV group against the chunk
// summaries, before the temperature, as an fp32 GEMM: ATen's routing, and the fused kernels'
// where they do not score on tensor cores (fused_routing). ATen's backward recomputes them the
// same way, bit for bit; the kernels' backward needs no scores (dash_route.h).
struct TileScores {
  int64_t n_seen, n_chunks;
  double scale;             // z = scale * scores
  torch::Tensor kbar_seen;  // [B, Hkv, 1, n_seen, d] in the reference dtype
  torch::Tensor scores;     // [B, Hkv, G, n, n_seen]
};

// q_rows [B, Hq, n, d] -> [B, Hkv, G, n, d] in the reference dtype.
Tensor q_groups(const Tensor& q_rows, int64_t Hkv) {
  const int64_t B = q_rows.size(0), Hq = q_rows.size(1), n = q_rows.size(2), d = q_rows.size(3);
  return q_rows.to(reference_dtype(q_rows)).reshape({B, Hkv, Hq / Hkv, n, d});
}

// z = scale * (q . kbar): the temperature over sqrt(d).
double score_scale(const DashConfig& cfg, int64_t d) { return cfg.temperature / std::sqrt(double(d)); }

// Chunks some row of query rows [t0, t0 + n) may route to: complete ones strictly before the
// last row's own (a tile early in the sequence scores few chunks).
int64_t seen_chunks(const DashConfig& cfg, int64_t t0, int64_t n, int64_t T) {
  return std::min(T / cfg.chunk, (t0 + n - 1) / cfg.chunk);
}

TileScores tile_scores(const DashConfig& cfg, const Tensor& q_rows, const Tensor& kbar, int64_t t0, int64_t T) {
  const int64_t n = q_rows.size(2), d = q_rows.size(3), C = cfg.chunk;
  TileScores s;
  s.n_chunks = (T + C - 1) / C;
  s.n_seen = seen_chunks(cfg, t0, n, T);
  s.scale = score_scale(cfg, d);
  s.kbar_seen = kbar.narrow(2, 0, s.n_seen).to(reference_dtype(q_rows)).unsqueeze(2);
  s.scores = torch::matmul(q_groups(q_rows, kbar.size(1)), s.kbar_seen.transpose(-1, -2));
  return s;
}

// The scores' vector-Jacobian product for one (b, hkv) group's tile: d scores [1, 1, G, n,
// n_seen] -> d q_rows [1, G, n, d] and d kbar's first n_seen chunks [1, 1, n_seen, d].
std::pair<Tensor, Tensor> tile_scores_backward(const TileScores& s, const Tensor& q_rows, const Tensor& d_scores) {
  // A tile is one (b, hkv) group: each product is one 2-D GEMM over the group's G n rows.
  const int64_t G = d_scores.size(2), n = d_scores.size(3), d = s.kbar_seen.size(4), n_seen = s.kbar_seen.size(3);
  auto rows = d_scores.reshape({G * n, n_seen});
  auto dq = torch::mm(rows, s.kbar_seen.reshape({n_seen, d})).view({1, G, n, d});
  // The sum over the group's heads inside one product: [n_seen, G n] x [G n, d].
  auto dkbar = torch::mm(rows.t(), q_groups(q_rows, 1).reshape({G * n, d})).view({1, 1, n_seen, d});
  return {dq, dkbar};
}

// x [..., n, n_seen] of rows t0 .. t0 + n (t0 a multiple of R) -> each row's mean over its
// group of R consecutive rows (the last group may be short). Symmetric, so it is also its own
// vector-Jacobian product.
Tensor mean_over_positions(const Tensor& x, int64_t R) {
  if (R == 1) return x;
  const int64_t n = x.size(-2), groups = (n + R - 1) / R;
  auto sizes = x.sizes().vec();
  sizes[sizes.size() - 2] = groups;
  sizes.insert(sizes.end() - 1, R);
  auto sums = torch::constant_pad_nd(x, {0, 0, 0, groups * R - n}).view(sizes).sum(-2);
  auto counts = torch::full({groups, 1}, double(R), x.options());
  counts[groups - 1] = double(n - (groups - 1) * R);
  return (sums / counts).repeat_interleave(R, -2).narrow(-2, 0, n);
}

// A tile's entmax and group mean in ATen, the first half of routing_bias and of its backward.
struct TileRouting {
  torch::Tensor always;  // [n, n_chunks] read at bias 0: the own chunk and forced ones
  torch::Tensor p;       // [B, Hkv, G, n, n_seen] entmax over each row's candidates
  torch::Tensor pbar;    // [B, Hkv, n, n_seen] their mean over the group's heads (and positions)
  torch::Tensor routed;  // pbar > 0: the group reads the union of its heads' supports
};

TileRouting tile_routing(const DashConfig& cfg, const TileScores& s, int64_t t0) {
  const int64_t n = s.scores.size(3), C = cfg.chunk;
  TileRouting r;
  TORCH_CHECK(t0 % cfg.route_positions == 0, "dash routing: tile start ", t0, " is not a multiple of route_positions");
  const double inf = std::numeric_limits<double>::infinity();
  const auto ints = torch::TensorOptions().dtype(torch::kInt64).device(s.scores.device());

  auto own = torch::arange(t0, t0 + n, ints).div(C, "floor").view({n, 1});
  auto c = torch::arange(s.n_chunks, ints).view({1, s.n_chunks});
  // Forced sink and local chunks are read like the diagonal chunk, with b = 0, and left out
  // of the routing: entmax spends its mass only on the chunks it decides about, and a forced
  // chunk's bias does not jump when the router drops it from its support.
  auto forced = (c < own) & ((c < cfg.sink_chunks) | (c >= own - cfg.local_chunks));
  r.always = forced | (c == own);
  // Routing candidates: complete chunks strictly before the query's own, not already forced.
  auto candidate = ((c < own) & ~forced).narrow(1, 0, s.n_seen);

  // z = s (q . kbar) / sqrt(d) per query head, alpha-entmax over the candidates.
  auto z = s.scores * s.scale;
  r.p = entmax(z.masked_fill(~candidate, -inf), cfg.alpha, -1);
  r.pbar = mean_over_positions(r.p.mean(2), cfg.route_positions);
  r.routed = r.pbar > 0;
  return r;
}

// DashAttention::bias_rows for a configuration (the routing's backward has the configuration,
// not the module, which may be gone by then).
Tensor routing_bias(const DashConfig& cfg, const Tensor& q_rows, const Tensor& kbar, int64_t t0, int64_t T) {
  const TileScores s = tile_scores(cfg, q_rows, kbar, t0, T);
  const TileRouting r = tile_routing(cfg, s, t0);
  const double inf = std::numeric_limits<double>::infinity();
  // GQA: the group reads the union of its heads' supports, weighted by their mean.
  const Tensor &pbar = r.pbar, &routed = r.routed;
  auto log_p = torch::log(torch::where(routed, pbar, torch::ones_like(pbar)));  // 0 off the support
  auto prior = log_p;
  if (cfg.prior == "normalized") {
    // Subtract the mean log prior of the row's routed chunks (the log of their geometric
    // mean g), so the diagonal chunk at b = 0 sits in the middle of what was routed.
    auto count = routed.sum(-1, /*keepdim=*/true).clamp_min(1);
    prior = log_p - log_p.sum(-1, /*keepdim=*/true) / count;
  }
  auto bias = torch::where(routed, prior / cfg.sigma, -inf);
  bias = torch::constant_pad_nd(bias, {0, s.n_chunks - s.n_seen}, -inf);
  return torch::where(r.always, torch::zeros_like(bias), bias);
}

// routing_bias's vector-Jacobian product, by hand: d_bias [n, n_chunks] (zero off the lists)
// -> d q_rows [B, G, n, d] and d kbar's first n_seen chunks. Entries at bias 0 by force carry
// no gradient; through the prior b = (log pbar [- mean routed log pbar]) / sigma into pbar,
// the mean over the group's heads, entmax's Jacobian and z = s q . kbar.
std::pair<Tensor, Tensor> routing_bias_backward(const DashConfig& cfg, const Tensor& q_rows, const Tensor& kbar,
                                                int64_t t0, int64_t T, const Tensor& d_bias) {
  const TileScores s = tile_scores(cfg, q_rows, kbar, t0, T);
  const TileRouting r = tile_routing(cfg, s, t0);
  const int64_t G = s.scores.size(2);
  auto d_prior = torch::where(r.always, torch::zeros_like(d_bias), d_bias).narrow(1, 0, s.n_seen) / cfg.sigma;
  const Tensor &pbar = r.pbar, &routed = r.routed;
  d_prior = torch::where(routed, d_prior.to(pbar.scalar_type()), torch::zeros_like(pbar));
  auto d_log_p = d_prior;
  if (cfg.prior == "normalized") {
    auto count = routed.sum(-1, /*keepdim=*/true).clamp_min(1);
    d_log_p = torch::where(routed, d_prior - d_prior.sum(-1, /*keepdim=*/true) / count, torch::zeros_like(d_prior));
  }
  auto d_pbar = d_log_p / torch::where(routed, pbar, torch::ones_like(pbar));
  auto dp = (mean_over_positions(d_pbar, cfg.route_positions) / double(G)).unsqueeze(2).expand_as(r.p);
  return tile_scores_backward(s, q_rows, entmax_backward(r.p, dp, cfg.alpha, -1) * s.scale);
}

// One routing tile: query rows [t0, t0 + n) of KV group (b, hkv).
struct RoutingTile {
  int64_t b, hkv, t0, n;
  Tensor q_rows(const Tensor& q, int64_t G) const { return q.narrow(0, b, 1).narrow(1, hkv * G, G).narrow(2, t0, n); }
  Tensor kbar_rows(const Tensor& kbar) const { return kbar.narrow(0, b, 1).narrow(1, hkv, 1); }
  int64_t first_row(int64_t Hkv, int64_t T) const { return (b * Hkv + hkv) * T + t0; }  // in the lists
};

std::vector<RoutingTile> routing_tiles(int64_t B, int64_t Hkv, int64_t T, int64_t rows) {
  std::vector<RoutingTile> tiles;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t t0 = 0; t0 < T; t0 += rows) tiles.push_back({b, h, t0, std::min(rows, T - t0)});
  return tiles;
}

// The routing of all rows as lists (block_sparse_dispatch.h's BlockRows), tile after tile,
// and what the fused kernels' backward keeps of their forward (undefined on ATen's path, whose
// backward recomputes it all).
struct RoutingLists {
  Tensor row_ptr;                // [B Hkv T + 1] int64
  Tensor blocks;                 // [m] int32
  Tensor entries;                // [m]: the bias on each listed block, differentiable
  std::vector<int64_t> offsets;  // each tile's first entry, then m
  Tensor thresholds;             // [B Hkv T G 2]: each entmax row's threshold
  Tensor entry_pbar;             // [m]: each entry's pbar
  Tensor kbar_parts;             // [B, Hkv, 3, n_full, d] bf16 for bf16 q: kbar's parts (dash_score_parts)
};

// A tile's backward: its lists as saved (row_ptr [n + 1] indexes the whole routing's entries;
// blocks, entry_pbar and d_entries are the tile's, from row_ptr[0] on), the thresholds, and
// its KV group's kbar parts [3, n_full, d] (where saved).
struct TileGrad {
  Tensor row_ptr, blocks, entry_pbar, thresholds, d_entries, kbar_parts;
};

RoutingLists aten_routing(const DashConfig& cfg, const Tensor& q, const Tensor& kbar,
                          const std::vector<RoutingTile>& tiles) {
  const int64_t G = q.size(1) / kbar.size(1), T = q.size(2);
  std::vector<Tensor> counts, blocks, entries;
  RoutingLists r;
  r.offsets = {0};
  for (const RoutingTile& t : tiles) {
    auto bias = routing_bias(cfg, t.q_rows(q, G), t.kbar_rows(kbar), t.t0, T);
    bias = bias.view({t.n, bias.size(-1)});
    const auto listed = list_entries(torch::isfinite(bias), t.t0, cfg.chunk);
    counts.push_back(listed.counts);
    blocks.push_back(listed.blocks);
    entries.push_back(bias.flatten().index_select(0, listed.flat));
    r.offsets.push_back(r.offsets.back() + listed.blocks.numel());
  }
  r.row_ptr = row_ptr_from_counts(torch::cat(counts));
  r.blocks = torch::cat(blocks);
  r.entries = torch::cat(entries);
  return r;
}

// Writes the tile's d q rows into dq_rows [1, G, n, d] and adds its d kbar into dkbar_rows
// [1, 1, n_full, d].
void aten_routing_backward(const DashConfig& cfg, const Tensor& q_rows, const Tensor& kbar, int64_t t0, int64_t T,
                           const TileGrad& g, Tensor dq_rows, Tensor dkbar_rows) {
  // The entries' gradients into the tile's dense [n, n_chunks], placed by the saved lists
  // (not by a recomputed bias, which could round differently).
  const int64_t n = q_rows.size(2), n_chunks = (T + cfg.chunk - 1) / cfg.chunk, m = g.blocks.numel();
  auto counts = g.row_ptr.diff();
  auto row = torch::repeat_interleave(torch::arange(n, counts.options()), counts, /*dim=*/0, m);
  auto idx = row * n_chunks + g.blocks.to(torch::kInt64);
  auto d_bias = torch::zeros({n * n_chunks}, g.d_entries.options()).index_put_({idx}, g.d_entries);
  auto [dq, dkbar] = routing_bias_backward(cfg, q_rows, kbar, t0, T, d_bias.view({n, n_chunks}));
  dq_rows.copy_(dq);
  dkbar_rows.narrow(2, 0, dkbar.size(2)).add_(dkbar);
}

#ifdef SPARSETRAIN_CUDA
// The same two on the fused routing kernels, with one host round trip for all tiles (the
// lists' sizes, read once the prior kernel of every tile has counted its rows'): each tile's
// scores (on tensor cores where q is bf16 on a Hopper, from kbar's parts made once) and prior,
// then each tile's lists. Each tile's pbar waits for its lists meanwhile: T / R x n_seen fp32
// per tile, 1 GB in all at 128K with route_positions 1 (B 1, Hkv 2), a quarter at 4.
RoutingLists fused_routing(const DashConfig& cfg, const Tensor& q, const Tensor& kbar,
                           const std::vector<RoutingTile>& tiles) {
  const int64_t B = q.size(0), Hkv = kbar.size(1), G = q.size(1) / Hkv, T = q.size(2), d = q.size(3);
  const double scale = score_scale(cfg, d);
  const bool tensor_cores = cuda::dash_scores_run(q);
  const auto options = q.options().dtype(torch::kFloat32);
  auto counts = torch::empty({B * Hkv * T}, options.dtype(torch::kInt64));
  RoutingLists r;
  // bf16 q: the scores kernel's operand, and the backward's, which recomputes z on it.
  if (q.scalar_type() == torch::kBFloat16) r.kbar_parts = cuda::dash_score_parts(kbar);
  r.thresholds = torch::empty({B * Hkv * T * G * 2}, options);
  std::vector<cuda::RoutingPrior> priors;
  std::vector<int64_t> first_rows;
  for (const RoutingTile& t : tiles) {
    const int64_t n_seen = seen_chunks(cfg, t.t0, t.n, T), first = t.first_row(Hkv, T);
    const Tensor q_rows = t.q_rows(q, G);
    const cuda::RoutingScores scores =
        tensor_cores ? cuda::dash_scores(q_rows, r.kbar_parts[t.b][t.hkv], cfg, n_seen, t.t0)
                     : cuda::RoutingScores{
                           tile_scores(cfg, q_rows, t.kbar_rows(kbar), t.t0, T).scores.reshape({G, t.n, n_seen}), {}};
    priors.push_back(cuda::dash_routing_prior(
        scores, cfg, scale, t.t0, r.thresholds.narrow(0, first * G * 2, t.n * G * 2), counts.narrow(0, first, t.n)));
    first_rows.push_back(first);
  }
  r.row_ptr = row_ptr_from_counts(counts);
  first_rows.push_back(B * Hkv * T);
  const Tensor starts = r.row_ptr.index_select(0, torch::tensor(first_rows).to(q.device())).cpu();
  r.offsets.assign(starts.data_ptr<int64_t>(), starts.data_ptr<int64_t>() + starts.numel());
  const int64_t m = r.offsets.back();
  r.blocks = torch::empty({m}, options.dtype(torch::kInt32));
  r.entries = torch::empty({m}, options);
  r.entry_pbar = torch::empty({m}, options);
  for (size_t i = 0; i < tiles.size(); ++i) {
    const int64_t at = r.offsets[i], size = r.offsets[i + 1] - at;
    cuda::dash_routing_lists(priors[i], cfg, r.row_ptr.narrow(0, first_rows[i], tiles[i].n + 1),
                             r.blocks.narrow(0, at, size), r.entries.narrow(0, at, size),
                             r.entry_pbar.narrow(0, at, size));
  }
  return r;
}

void fused_routing_backward(const DashConfig& cfg, const Tensor& q_rows, const Tensor& kbar, int64_t t0, int64_t T,
                            const TileGrad& g, Tensor dq_rows, Tensor dkbar_rows) {
  const int64_t d = q_rows.size(3), n_seen = seen_chunks(cfg, t0, q_rows.size(2), T);
  cuda::dash_routing_backward(q_rows, kbar.view({kbar.size(2), d}).narrow(0, 0, n_seen), g.kbar_parts, g.thresholds,
                              g.row_ptr, g.blocks, g.entry_pbar, g.d_entries, cfg, score_scale(cfg, d), t0, dq_rows,
                              dkbar_rows.view({dkbar_rows.size(2), d}).narrow(0, 0, n_seen));
}
#endif

// Which code runs the tiles' scores, entmax, prior and lists: the fused kernels or ATen.
struct RoutingPath {
  RoutingLists (*route)(const DashConfig&, const Tensor&, const Tensor&, const std::vector<RoutingTile>&);
  void (*backward)(const DashConfig&, const Tensor&, const Tensor&, int64_t, int64_t, const TileGrad&, Tensor, Tensor);
};

RoutingPath routing_path(bool fused) {
#ifdef SPARSETRAIN_CUDA
  if (fused) return {fused_routing, fused_routing_backward};
#endif
  return {aten_routing, aten_routing_backward};
}

// The configuration through autograd's saved_data, and back.
void save_config(AutogradContext* ctx, const DashConfig& c) {
  ctx->saved_data["chunk"] = c.chunk;
  ctx->saved_data["alpha"] = c.alpha;
  ctx->saved_data["temperature"] = c.temperature;
  ctx->saved_data["sigma"] = c.sigma;
  ctx->saved_data["prior"] = c.prior;
  ctx->saved_data["sink_chunks"] = c.sink_chunks;
  ctx->saved_data["local_chunks"] = c.local_chunks;
  ctx->saved_data["route_positions"] = c.route_positions;
}

DashConfig saved_config(AutogradContext* ctx) {
  DashConfig c;
  c.chunk = ctx->saved_data["chunk"].toInt();
  c.alpha = ctx->saved_data["alpha"].toDouble();
  c.temperature = ctx->saved_data["temperature"].toDouble();
  c.sigma = ctx->saved_data["sigma"].toDouble();
  c.prior = ctx->saved_data["prior"].toStringRef();
  c.sink_chunks = ctx->saved_data["sink_chunks"].toInt();
  c.local_chunks = ctx->saved_data["local_chunks"].toInt();
  c.route_positions = ctx->saved_data["route_positions"].toInt();
  return c;
}

// Inputs q [B, Hq, T, d] and kbar [B, Hkv, n_full, d]; outputs the entries' bias
// (differentiable), row_ptr and blocks. Only q, kbar and the lists are saved (and what the
// kernels' backward keeps: thresholds, entry pbar, kbar's bf16 parts); the backward
// recomputes each tile's entmax and derives through it by hand (routing_bias_backward).
// Scores in fp32 with autocast off, in forward and backward alike: the support's edge and
// log(pbar) near it are where bf16 scores would move the routing.
struct DashRoutingFunction : torch::autograd::Function<DashRoutingFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& kbar, const DashConfig& cfg,
                               int64_t tile_rows, bool fused) {
    const int64_t T = q.size(2);
    const AutocastOff autocast_off;
    RoutingLists r = routing_path(fused).route(cfg, q, kbar, routing_tiles(q.size(0), kbar.size(1), T, tile_rows));
    ctx->save_for_backward({q, kbar, r.row_ptr, r.blocks, r.thresholds, r.entry_pbar, r.kbar_parts});
    save_config(ctx, cfg);
    ctx->saved_data["tile_rows"] = tile_rows;
    ctx->saved_data["fused"] = fused;
    ctx->saved_data["offsets"] = r.offsets;
    ctx->mark_non_differentiable({r.row_ptr, r.blocks});
    return {r.entries, r.row_ptr, r.blocks};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &kbar = saved[1], &row_ptr = saved[2], &block_ids = saved[3], &thresholds = saved[4],
                 &entry_pbar = saved[5], &kbar_parts = saved[6];
    const DashConfig cfg = saved_config(ctx);
    const auto offsets = ctx->saved_data["offsets"].toIntVector();
    const int64_t Hkv = kbar.size(1), G = q.size(1) / Hkv, T = q.size(2);
    const bool fused = ctx->saved_data["fused"].toBool();
    // The fused backward writes every d q row of a tile with entries: no memset of d q for it.
    auto dq = fused && grads[0].defined() ? torch::empty_like(q) : torch::zeros_like(q);
    auto dkbar = torch::zeros_like(kbar);
    if (!grads[0].defined()) return {dq, dkbar, Tensor(), Tensor(), Tensor()};
    const RoutingPath path = routing_path(fused);
    const torch::NoGradGuard no_grad;
    const AutocastOff autocast_off;
    const auto tiles = routing_tiles(q.size(0), Hkv, T, ctx->saved_data["tile_rows"].toInt());
    auto part = [](const Tensor& x, int64_t at, int64_t size) { return x.defined() ? x.narrow(0, at, size) : x; };
    for (size_t i = 0; i < tiles.size(); ++i) {
      const auto& t = tiles[i];
      const int64_t m = offsets[i + 1] - offsets[i];
      if (m == 0) {
        if (fused) t.q_rows(dq, G).zero_();
        continue;
      }
      // The tiles cover the rows in order, G x 2 thresholds per row.
      const TileGrad g{row_ptr.narrow(0, t.first_row(Hkv, T), t.n + 1),
                       block_ids.narrow(0, offsets[i], m),
                       part(entry_pbar, offsets[i], m),
                       part(thresholds, G * 2 * t.first_row(Hkv, T), G * 2 * t.n),
                       grads[0].narrow(0, offsets[i], m).to(reference_dtype(q)),
                       kbar_parts.defined() ? kbar_parts[t.b][t.hkv] : Tensor()};
      path.backward(cfg, t.q_rows(q, G), t.kbar_rows(kbar), t.t0, T, g, t.q_rows(dq, G), t.kbar_rows(dkbar));
    }
    return {dq, dkbar, Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor DashAttention::bias_rows(const Tensor& q_rows, const Tensor& kbar, int64_t t0, int64_t T) const {
  return routing_bias(cfg_, q_rows, kbar, t0, T);
}

BlockRows DashAttention::routing(const Tensor& q, const Tensor& kbar) const {
  bool fused = false;
#ifdef SPARSETRAIN_CUDA
  fused = impl_ != "reference" && cuda::dash_routing_runs(cfg_, q, q.size(1) / kbar.size(1));
#endif
  int64_t rows = routing_tile_rows;
  if (rows <= 0) {
    // Each tile costs launches (and on ATen's path a host round trip for its lists' sizes),
    // so few large tiles beat many. A tile holds fp32 tensors of its scores' size: ATen's
    // routing ~5 at once (2^27 scores = 512 MB each), the fused kernels one, the scores (2^28
    // = 1 GB: Dash f+b at 64K 1-4% faster than at 2^27 on the H200).
    const int64_t per_row = std::max<int64_t>(q.size(1) / kbar.size(1) * kbar.size(2), 1);
    rows = std::max<int64_t>((int64_t(1) << (fused ? 28 : 27)) / per_row / cfg_.chunk, 1) * cfg_.chunk;
  }
  rows = (rows + cfg_.route_positions - 1) / cfg_.route_positions * cfg_.route_positions;  // whole routings
  auto out = DashRoutingFunction::apply(q, kbar, cfg_, rows, fused);
  return {out[1], out[2], out[0]};
}

Tensor DashAttention::forward(const AttentionInputs& in) {
  const int64_t B = in.q.size(0), Hq = in.q.size(1), T = in.q.size(2), G = Hq / in.k.size(1);
  auto rows = routing(in.q, chunk_summaries(in.k));
  if (record_stats) {
    torch::NoGradGuard no_grad;
    stats = {attended_pairs(rows, T, cfg_.chunk, /*window=*/0, sparsity_offset_, G),
             B * Hq * causal_pairs(T, sparsity_offset_)};
  }
  // The diagonal chunk is always read at b = 0, as the kernels do: with C = 64 they run it.
  return attend_rows(in.q, in.k, in.v, rows, cfg_.chunk, /*window=*/0, impl_);
}

}  // namespace st
