#include "dist/fsdp.h"

#include <fmt/format.h>
#include <torch/autograd.h>

#include <cmath>

namespace st {
namespace {

// A gathered buffer owns memory only between gather and release: its storage is emptied
// and refilled in place, so the parameters (views of it) and the tensors autograd saved of
// them stay valid handles throughout.
void allocate(const at::Tensor& t, int64_t numel) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const size_t bytes = size_t(numel) * t.element_size();
  s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  s->set_nbytes(bytes);
}

void deallocate(const at::Tensor& t) { t.storage().unsafeGetStorageImpl()->reset(); }

}  // namespace

// Identity functions around a block that tell the sharded model where the block's backward
// begins (the gradient of its output arrives: gather the unit) and where it ends (the
// gradient of its input is complete, so every use of the unit's parameters is done: release).
struct UnitHooks {
  template <bool kBegins>
  struct Hook : torch::autograd::Function<Hook<kBegins>> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, ShardedModel* m, size_t u) {
      // The trainer's sharded model outlives every graph built through it.
      ctx->saved_data["model"] = int64_t(reinterpret_cast<intptr_t>(m));
      ctx->saved_data["unit"] = int64_t(u);
      return x;
    }
    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list g) {
      auto* m = reinterpret_cast<ShardedModel*>(intptr_t(ctx->saved_data["model"].toInt()));
      const auto u = size_t(ctx->saved_data["unit"].toInt());
      kBegins ? m->backward_begins(u) : m->backward_ends(u);
      return {g[0], torch::Tensor(), torch::Tensor()};
    }
  };
  using OnOutput = Hook<true>;
  using OnInput = Hook<false>;
};

ShardedModel::ShardedModel(Transformer& model, Comm& comm, ShardingOptions opt) : comm_(comm), opt_(opt) {
  torch::NoGradGuard no_grad;
  const size_t n_layers = model->layers->size();
  units_.resize(1 + n_layers);
  for (size_t i = 0; i < n_layers; ++i) unit_of_block_[model->layers[i]->as<BlockImpl>()] = 1 + i;
  std::vector<int64_t> numel(units_.size(), 0);
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    size_t u = 0;  // the outer unit, unless the name says "layers.<i>."
    if (name.rfind("layers.", 0) == 0) u = 1 + std::stoul(name.substr(7, name.find('.', 7) - 7));
    units_[u].params.push_back({name, p.value(), numel[u]});
    numel[u] += p.value().numel();
    numel_[name] = p.value().numel();
  }
  for (auto& b : model->buffers()) b.set_data(b.to(opt.device));
  const int64_t world = comm.world_size(), rank = comm.rank();
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& x = units_[u];
    const int64_t per_rank = (numel[u] + world - 1) / world;
    x.padded = per_rank * world;
    x.full = at::zeros({x.padded}, at::TensorOptions().dtype(at::kFloat).device(opt.device));
    for (auto& p : x.params) {
      const auto shape = p.tensor.sizes().vec();
      at::Tensor view = x.full.narrow(0, p.offset, p.tensor.numel());
      view.copy_(p.tensor.reshape(-1));
      p.tensor.set_data(view.view(shape));
    }
    x.shard = x.full.narrow(0, rank * per_rank, per_rank).clone();
    x.state = State::gathered;
    release(u);
    // This rank's piece of each parameter that overlaps [rank * per_rank, (rank + 1) * per_rank).
    for (auto& p : x.params) {
      const int64_t lo = std::max(p.offset, rank * per_rank);
      const int64_t hi = std::min(p.offset + p.tensor.numel(), (rank + 1) * per_rank);
      if (lo >= hi) continue;
      slice_index_[p.name] = slices_.size();
      slices_.push_back({p.name, x.shard.narrow(0, lo - rank * per_rank, hi - lo), p.tensor.dim()});
      slice_info_.push_back({u, lo - p.offset, hi - lo, lo - rank * per_rank});
    }
  }
}

void ShardedModel::start_gather(size_t u) {
  Unit& x = units_[u];
  if (x.state != State::released) return;
  allocate(x.full, x.padded);
  if (opt_.gather_dtype == at::kFloat) {
    x.pending = comm_.all_gather(x.full, x.shard);
  } else {
    x.staged_in = x.shard.to(opt_.gather_dtype);
    x.staged = at::empty({x.padded}, x.staged_in.options());
    x.pending = comm_.all_gather(x.staged, x.staged_in);
  }
  x.state = State::gathering;
}

void ShardedModel::finish_gather(size_t u) {
  start_gather(u);
  Unit& x = units_[u];
  if (x.state != State::gathering) return;
  x.pending.wait();
  if (x.staged.defined()) {
    torch::NoGradGuard no_grad;
    x.full.copy_(x.staged);
    x.staged = x.staged_in = at::Tensor();
  }
  x.state = State::gathered;
}

void ShardedModel::release(size_t u) {
  Unit& x = units_[u];
  if (x.state == State::gathering) finish_gather(u);  // never free memory a collective writes
  if (x.state == State::released) return;
  deallocate(x.full);
  x.state = State::released;
}

torch::Tensor ShardedModel::run_block(const BlockRunner& inner, Block& block, const torch::Tensor& x,
                                      const RopeTables& rope) {
  const size_t u = unit_of_block_.at(block.get());
  finish_gather(u);
  if (u + 1 < units_.size()) start_gather(u + 1);  // overlaps this block's compute
  const bool graph = torch::GradMode::is_enabled() && x.requires_grad();
  torch::Tensor in = graph ? UnitHooks::OnInput::apply(x, this, u) : x;
  torch::Tensor y = inner ? inner(block, in, rope) : block(in, rope);
  if (opt_.reshard_after_forward || !graph) release(u);
  return graph ? UnitHooks::OnOutput::apply(y, this, u) : y;
}

BlockRunner ShardedModel::runner(BlockRunner inner) {
  return [this, inner](Block& block, const torch::Tensor& x, const RopeTables& rope) {
    return run_block(inner, block, x, rope);
  };
}

void ShardedModel::backward_begins(size_t u) {
  finish_gather(u);
  if (u > 1) start_gather(u - 1);  // the block whose backward comes next
}

// The block's input gradient is complete, so its parameters' gradients are too: autograd
// runs a parameter's gradient accumulation as soon as the op that produced it has run.
void ShardedModel::backward_ends(size_t u) {
  if (reduce_in_backward_) {
    // One block's reduce-scatter in flight at a time: the previous one had this block's
    // backward to finish in, and its full-size buffer goes now.
    if (reducing_ != 0) finish_reduce(reducing_);
    start_reduce(u);
    reducing_ = u;
  }
  release(u);
}

void ShardedModel::begin_step() { finish_gather(0); }

void ShardedModel::begin_micro_batch(bool last) { reduce_in_backward_ = last; }

void ShardedModel::start_reduce(size_t u) {
  torch::NoGradGuard no_grad;
  Unit& x = units_[u];
  x.grad_flat = at::zeros({x.padded}, x.shard.options());
  for (auto& p : x.params) {
    if (!p.tensor.grad().defined()) continue;
    x.grad_flat.narrow(0, p.offset, p.tensor.numel()).copy_(p.tensor.grad().reshape(-1));
    p.tensor.mutable_grad() = at::Tensor();
  }
  x.grad_shard = at::empty({x.padded / comm_.world_size()}, x.shard.options());
  x.grad_pending = comm_.reduce_scatter_sum(x.grad_shard, x.grad_flat);
}

void ShardedModel::finish_reduce(size_t u) {
  torch::NoGradGuard no_grad;
  Unit& x = units_[u];
  x.grad_pending.wait();
  x.grad_shard.div_(double(comm_.world_size()));
  x.grad_flat = at::Tensor();
}

void ShardedModel::reduce_gradients() {
  for (size_t u = 0; u < units_.size(); ++u)
    if (!units_[u].grad_shard.defined()) start_reduce(u);  // all of them unless reduced in backward
  for (size_t u = 0; u < units_.size(); ++u) {
    if (units_[u].grad_flat.defined()) finish_reduce(u);
    release(u);
  }
  for (size_t i = 0; i < slices_.size(); ++i) {
    const Slice& s = slice_info_[i];
    slices_[i].param.mutable_grad() = units_[s.unit].grad_shard.narrow(0, s.shard_begin, s.length);
  }
  for (auto& x : units_) x.grad_shard = at::Tensor();  // the slices' .grad keep what they need
  reduce_in_backward_ = false;
  reducing_ = 0;
}

double ShardedModel::clip_grad_norm(double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (auto& s : slices_)
    if (s.param.grad().defined()) grads.push_back(s.param.grad());
  double local = 0;
  if (!grads.empty()) local = at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(comm_.sum(local));
  if (max_norm > 0 && norm > max_norm) at::_foreach_mul_(grads, max_norm / (norm + 1e-6));
  return norm;
}

void ShardedModel::gather_all() {
  for (size_t u = 0; u < units_.size(); ++u) start_gather(u);
  for (size_t u = 0; u < units_.size(); ++u) finish_gather(u);
}

void ShardedModel::release_all() {
  for (size_t u = 0; u < units_.size(); ++u) release(u);
}

TensorMap ShardedModel::local_weights() const {
  TensorMap out;
  for (const auto& s : slices_) out[s.name] = s.param.detach().to(at::kCPU, at::kFloat).clone();
  return out;
}

std::string ShardedModel::parameter_named_by(const std::string& key) const {
  if (numel_.count(key)) return key;
  const size_t dot = key.find('.');
  if (dot != std::string::npos && numel_.count(key.substr(dot + 1))) return key.substr(dot + 1);
  return "";
}

TensorMap ShardedModel::local_slices(const TensorMap& whole) const {
  TensorMap out;
  for (const auto& [key, t] : whole) {
    const std::string name = parameter_named_by(key);
    if (name.empty()) {
      out[key] = t;
      continue;
    }
    if (t.numel() != numel_.at(name))
      throw IoError(fmt::format("'{}' has {} elements; the model's parameter '{}' has {}", key, t.numel(), name,
                                numel_.at(name)));
    auto it = slice_index_.find(name);
    if (it == slice_index_.end()) continue;  // no piece of it lives on this rank
    const Slice& s = slice_info_[it->second];
    out[key] = t.reshape(-1).narrow(0, s.begin, s.length);
  }
  return out;
}

std::map<std::string, std::vector<int64_t>> ShardedModel::shapes() const {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& x : units_)
    for (const auto& p : x.params) out[p.name] = p.tensor.sizes().vec();
  return out;
}

}  // namespace st
