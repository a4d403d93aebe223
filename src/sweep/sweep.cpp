#include "sweep/sweep.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "data/tokenizer.h"
#include "io/atomic_file.h"
#include "io/json_reader.h"
#include "sweep/calibrate.h"
#include "sweep/evaluation.h"
#include "sweep/report.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace st {
namespace {

namespace fs = std::filesystem;

void say(const std::string& line) {
  fmt::print("sweep: {}\n", line);
  std::fflush(stdout);
}

std::string percent(double target) { return fmt::format("{}", target); }

// The base recipe with the sweep's overrides; errors name the sweep file and the run too.
Recipe sweep_recipe(const SweepConfig& s, const std::string& run, const std::vector<std::string>& overrides) {
  try {
    return load_recipe(s.base, overrides);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: run {}: {}", s.source, run, e.what()));
  }
}

Recipe run_recipe(const SweepConfig& s, const std::string& dir, const std::string& name, const std::string& variant,
                  const std::vector<std::vector<std::string>>& override_lists) {
  std::vector<std::string> overrides = s.overrides;
  for (const auto& list : override_lists) overrides.insert(overrides.end(), list.begin(), list.end());
  overrides.push_back("model.attention.variant=" + variant);
  overrides.push_back("run.out_dir=" + YAML::Dump(YAML::Node(dir)));
  overrides.push_back("run.name=" + name);
  return sweep_recipe(s, name, overrides);
}

// Trains (or resumes) a run; false when a signal stopped it before the end.
bool train_run(const Recipe& recipe) {
  const TrainSummary summary = train(recipe, {"auto"});
  return summary.steps_done >= recipe.train.optimizer_steps(1);
}

// calibration.json: {"length": L, "batches": B, "variants": {"nsa": {"75": {...}}}}.
void save_calibrations(const std::string& path, const SweepConfig& s, const Calibrations& all) {
  JsonObject variants;
  for (const auto& [variant, by_target] : all) {
    JsonObject targets;
    for (const auto& [target, c] : by_target) {
      JsonObject probes;
      for (const auto& [value, sparsity] : c.probes) probes.add(fmt::format("{}", value), sparsity);
      targets.add(percent(target), JsonObject().add("knob", c.knob).add("value", c.value).add("sparsity", c.sparsity)
                                       .add("error", c.error()).add("within_tolerance", c.within_tolerance)
                                       .add("probes", probes));
    }
    variants.add(variant, targets);
  }
  write_file_atomic(path, JsonObject().add("length", s.calibration.length).add("batches", s.calibration.batches)
                              .add("tolerance", s.calibration.tolerance).add("variants", variants).str() + "\n");
}

// Earlier results, if they were measured the way this sweep measures.
Calibrations load_calibrations(const std::string& path, const SweepConfig& s) {
  Calibrations all;
  if (!fs::exists(path)) return all;
  const YAML::Node root = load_json_file(path);
  if (root["length"].as<int64_t>() != s.calibration.length || root["batches"].as<int64_t>() != s.calibration.batches ||
      root["tolerance"].as<double>() != s.calibration.tolerance) {
    say(fmt::format("{} was measured with other calibration settings; calibrating again", path));
    return all;
  }
  for (const auto& variant : root["variants"]) {
    for (const auto& entry : variant.second) {
      const YAML::Node n = entry.second;
      Calibration c{entry.first.as<double>(), n["knob"].as<std::string>(), n["value"].as<double>(),
                    n["sparsity"].as<double>(), n["within_tolerance"].as<bool>(), {}};
      for (const auto& p : n["probes"]) c.probes[p.first.as<double>()] = p.second.as<double>();
      all[variant.first.as<std::string>()][c.target] = c;
    }
  }
  return all;
}

std::string describe(const Calibration& c) {
  return fmt::format("{} = {:.4g} gives {:.2f}% (target {}%, {:+.2f} points{})", c.knob, c.value, c.sparsity, c.target,
                     c.error(), c.within_tolerance ? "" : ", OUTSIDE THE TOLERANCE");
}

// Calibrates every (sparse variant, target) not in `all`, saving after each one.
void calibrate_all(const SweepConfig& s, const SweepPlan& plan, Calibrations& all, const std::string& path) {
  std::optional<TensorMap> dense;
  std::shared_ptr<const TokenShard> shard;
  for (const SweepVariant& v : s.variants) {
    if (v.name == "dense") continue;
    std::vector<double> missing;
    for (double t : s.targets)
      if (!all[v.name].count(t)) missing.push_back(t);
    if (missing.empty()) continue;
    if (!dense) {
      dense = load_checkpoint(plan.dense_checkpoint, /*with_optimizer=*/false).model;
      shard = std::make_shared<TokenShard>(plan.runs.front().recipe.data.eval);
    }
    const SweepRun& first = *std::find_if(plan.runs.begin(), plan.runs.end(), [&](const SweepRun& r) { return r.variant == v.name; });
    say(fmt::format("calibrating {} on {} x {} tokens of {}", v.name, s.calibration.batches, s.calibration.length,
                    shard->path()));
    Calibrator calibrator(first.recipe, *dense, shard, s.calibration.length, s.calibration.batches);
    // Probes of this variant measured before a restart are still valid: start from them.
    for (const auto& [target, c] : all[v.name])
      for (const auto& [value, sparsity] : c.probes) calibrator.remember(value, sparsity);
    const Knob knob = sparsity_knob(first.recipe.model.attention, s.calibration.length);
    for (double target : missing) {
      const Calibration c = calibrator.calibrate(target, s.calibration.tolerance, [&](double value, double sparsity) {
        say(fmt::format("  {} {} = {:.4g} -> {:.2f}%", v.name, knob.key, value, sparsity));
      });
      all[v.name][target] = c;
      save_calibrations(path, s, all);
      say(fmt::format("{} @ {}%: {}", v.name, target, describe(c)));
    }
  }
}

}  // namespace

SweepPlan plan_sweep(const SweepConfig& s) {
  SweepPlan plan;
  const Recipe base = sweep_recipe(s, "(every run)", s.overrides);
  plan.dir = (fs::path(base.run.out_dir) / s.name).string();
  if (s.has_pretrain) {
    plan.pretrain = SweepRun{"pretrain", "dense", std::nullopt, run_recipe(s, plan.dir, "pretrain", "dense", {s.pretrain})};
    plan.dense_checkpoint = plan.pretrain->recipe.run_dir();
  } else {
    plan.dense_checkpoint = s.init_from;
  }
  const std::vector<std::string> start = {"train.init_from=" + YAML::Dump(YAML::Node(plan.dense_checkpoint))};
  for (const SweepVariant& v : s.variants) {
    if (v.name == "dense") {
      plan.runs.push_back({"dense", "dense", std::nullopt, run_recipe(s, plan.dir, "dense", "dense", {s.cpt, v.overrides, start})});
      continue;
    }
    for (double t : s.targets) {
      const std::string name = v.name + "-" + percent(t);
      plan.runs.push_back({name, v.name, t, run_recipe(s, plan.dir, name, v.name, {s.cpt, v.overrides, start})});
    }
  }
  for (const SweepRun& r : plan.runs)
    if (r.variant == "infllmv2" && s.calibration.length < r.recipe.model.attention.infllmv2.dense_len)
      throw ConfigError(fmt::format("{}: variants.infllmv2: model.attention.infllmv2.dense_len ({}) is above "
                                    "calibration.length ({}): InfLLMv2 attends densely there, no knob makes it sparse",
                                    s.source, r.recipe.model.attention.infllmv2.dense_len, s.calibration.length));
  // Equal budgets and data order: what makes the comparison fair.
  const TrainConfig& ref = plan.runs.front().recipe.train;
  for (const SweepRun& r : plan.runs) {
    const TrainConfig& t = r.recipe.train;
    const std::string where = fmt::format("{}: variants.{}", s.source, r.variant);
    if (t.optimizer_steps(1) != ref.optimizer_steps(1) || t.seq_len != ref.seq_len || t.micro_batch != ref.micro_batch ||
        t.grad_accum != ref.grad_accum || t.seed != ref.seed || r.recipe.data.train != plan.runs.front().recipe.data.train)
      throw ConfigError(fmt::format("{}: changes the training budget or data order (train.steps/tokens, seq_len, "
                                    "micro_batch, grad_accum, seed or data.train) of its runs; every run of a sweep "
                                    "trains the same tokens in the same order (set them under cpt)", where));
  }
  plan.cpt_steps = ref.optimizer_steps(1);
  const Recipe& any = plan.runs.front().recipe;
  if (any.data.eval.empty())
    throw ConfigError(fmt::format("{}: data.eval: missing (in {} or under set); a sweep calibrates and evaluates on it",
                                  s.source, s.base));
  std::unique_ptr<Tokenizer> tokenizer;
  try {
    tokenizer = load_tokenizer(s.eval.tokenizer);
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("{}: eval.tokenizer: {}", s.source, e.what()));
  }
  if (!s.eval.tasks.empty() && int64_t(tokenizer->vocab_size()) > any.model.vocab_size)
    throw ConfigError(fmt::format("{}: eval.tokenizer: {} has {} tokens, more than model.vocab_size {}", s.source,
                                  s.eval.tokenizer, tokenizer->vocab_size(), any.model.vocab_size));
  return plan;
}

SweepOutcome run_sweep(const SweepConfig& s) {
  SweepPlan plan = plan_sweep(s);
  SweepOutcome outcome;
  fs::create_directories(plan.dir);
  const size_t total = plan.runs.size() + (plan.pretrain ? 1 : 0);
  size_t index = 0;
  auto step = [&](const std::string& run, const std::string& what) {
    say(fmt::format("[{}/{}] {}: {}", index, total, run, what));
  };

  const auto stopped = [&] {
    say("stopped; run the same command again to resume");
    return outcome;
  };
  if (plan.pretrain) {
    ++index;
    step("pretrain (dense)", "training");
    if (!train_run(plan.pretrain->recipe)) return stopped();
  }

  const std::string calibration_path = (fs::path(plan.dir) / "calibration.json").string();
  Calibrations calibrations = load_calibrations(calibration_path, s);
  calibrate_all(s, plan, calibrations, calibration_path);

  for (SweepRun& run : plan.runs) {
    ++index;
    const std::string label = run.target ? fmt::format("{} @ {}%", run.variant, *run.target) : run.variant;
    const fs::path eval_path = fs::path(run.recipe.run_dir()) / "eval.json";
    if (fs::exists(eval_path)) {
      step(label, "done, skipped");
      continue;
    }
    if (run.target) {
      const Calibration& c = calibrations[run.variant][*run.target];
      set_knob(run.recipe.model.attention, c.value);
      validate(run.recipe);
      step(label, "training with " + describe(c));
    } else {
      step(label, "training");
    }
    if (!train_run(run.recipe)) return stopped();
    step(label, "evaluating");
    JsonObject result = evaluate_run(run.recipe.run_dir(), s);
    result.add("run", run.name).add("variant", run.variant);
    if (run.target) result.add("target", *run.target);
    write_file_atomic(eval_path.string(), result.str() + "\n");
  }

  for (const auto& [variant, by_target] : calibrations)
    for (const auto& [target, c] : by_target) outcome.missed_targets += !c.within_tolerance;
  outcome.report = write_report(s, plan, calibrations);
  outcome.finished = true;
  return outcome;
}

}  // namespace st
