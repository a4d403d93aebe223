#include "sweep/report.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "io/atomic_file.h"
#include "io/json_reader.h"

namespace st {
namespace {

namespace fs = std::filesystem;

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// tools/plot_sweep.py of the source tree the binary was built in (build folders sit in it),
// else under the working directory.
std::string find_plot_script() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (const fs::path& p : {ec ? fs::path() : exe.parent_path().parent_path() / "tools/plot_sweep.py",
                            fs::path("tools/plot_sweep.py")})
    if (!p.empty() && fs::exists(p)) return p.string();
  return "";
}

// Draws the PNGs into `dir`. Returns "" on success, else why there are no plots.
std::string draw_plots(const std::string& dir) {
  const std::string script = find_plot_script();
  if (script.empty()) return "tools/plot_sweep.py was not found (run the sweep from the repository)";
  const char* env = std::getenv("SPARSETRAIN_PYTHON");
  const std::string python = env && *env ? env : "python3";
  const std::string cmd = fmt::format("{} {} {} 2>&1", shell_quote(python), shell_quote(script), shell_quote(dir));
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return "could not start " + python;
  std::string output;
  std::array<char, 4096> buf;
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0;) output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  while (!output.empty() && output.back() == '\n') output.pop_back();
  return fmt::format("`{} {} {}` failed: {}", python, script, dir, output.empty() ? "no output" : output);
}

std::string pct(double percent) { return fmt::format("{:.2f}%", percent); }

// Median training throughput of a run (steps logged twice after a resume count once each).
double median_tokens_per_s(const std::string& run_dir) {
  const std::string path = (fs::path(run_dir) / "metrics.jsonl").string();
  std::map<int64_t, double> by_step;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const YAML::Node m = parse_json(line, path);
    if (m["loss"] && m["tokens_per_s"]) by_step[m["step"].as<int64_t>()] = m["tokens_per_s"].as<double>();
  }
  std::vector<double> v;
  for (const auto& [step, tps] : by_step) v.push_back(tps);
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// "Evaluated on <devices>, <first> to <last>, by `sparsetrain sweep <file>`." from the runs'
// eval.json (results written before they carried a device say nothing).
std::string provenance(const SweepConfig& s, const std::vector<YAML::Node>& evals) {
  std::set<std::string> devices;
  std::string first, last;
  for (const YAML::Node& e : evals) {
    if (!e["device"] || !e["evaluated_at"]) continue;
    devices.insert(e["device"].as<std::string>());
    const std::string at = e["evaluated_at"].as<std::string>();
    if (first.empty() || at < first) first = at;
    if (last.empty() || at > last) last = at;
  }
  if (devices.empty()) return "";
  return fmt::format("Evaluated on {}, {} to {}, by `sparsetrain sweep {}`.\n\n", fmt::join(devices, ", "), first, last,
                     s.source);
}

}  // namespace

std::string write_report(const SweepConfig& s, const SweepPlan& plan, const Calibrations& calibrations) {
  const std::string plot_problem = draw_plots(plan.dir);
  if (!plot_problem.empty()) fmt::print("sweep: WARNING: no plots: {}\n", plot_problem);

  const Recipe& any = plan.runs.front().recipe;
  const TrainConfig& t = any.train;
  const int64_t per_step = t.micro_batch * t.grad_accum * t.seq_len;
  std::string md = fmt::format("# Sweep `{}`\n\n", s.name);
  std::vector<YAML::Node> evals;  // each run's eval.json, in plan.runs' order
  for (const SweepRun& run : plan.runs)
    evals.push_back(load_json_file((fs::path(run.recipe.run_dir()) / "eval.json").string()));
  md += provenance(s, evals);
  md += fmt::format(
      "Every run starts from the dense checkpoint `{}` and continues pretraining from recipe `{}` with the same "
      "budget and data order: {} steps x {} tokens (seq_len {}, seed {}), data `{}`.\n\n",
      plan.dense_checkpoint, s.base, plan.cpt_steps, per_step, t.seq_len, t.seed, any.data.train);
  md += fmt::format(
      "Sparsity is 1 - attended / causal (query, key) pairs, counted over queries at positions >= {} of {}-token "
      "sequences of `{}`: *calibrated* on the first {} before continual pretraining (tolerance +-{} points), "
      "*measured* on the first {} after it, with the eval loss and perplexity. Training throughput is the median "
      "over each run's steps.\n\n",
      any.model.attention.sparsity_offset, s.calibration.length, any.data.eval, s.calibration.batches,
      s.calibration.tolerance, s.eval.ppl_batches);
  if (!s.eval.tasks.empty())
    md += fmt::format("Task accuracy: teacher-forced exact match on {} examples per (length, depth), lengths {}, "
                      "depths {} (passkey and niah; the other tasks use random depths); in parentheses the fraction "
                      "of answer tokens predicted right.\n\n",
                      s.eval.count, fmt::join(s.eval.lengths, ", "), fmt::join(s.eval.depths, ", "));

  md += "| run | variant | target | knob | calibrated | measured | train tokens/s | eval loss | ppl |";
  for (const auto& task : s.eval.tasks) md += " " + task + " |";
  md += "\n|---|---|---|---|---|---|---|---|---|";
  for (size_t i = 0; i < s.eval.tasks.size(); ++i) md += "---|";
  md += "\n";
  std::string flags;
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    const SweepRun& run = plan.runs[i];
    const YAML::Node& e = evals[i];
    std::string knob = "-", calibrated = "-", target = "-";
    if (run.target) {
      const Calibration& c = calibrations.at(run.variant).at(*run.target);
      target = fmt::format("{}%", *run.target);
      knob = fmt::format("{} = {:.4g}", c.knob.substr(c.knob.rfind('.') + 1), c.value);
      calibrated = pct(c.sparsity);
      if (!c.within_tolerance) {
        calibrated = fmt::format("**{} MISSED**", calibrated);
        flags += fmt::format("- **{}**: the closest calibration is {:+.2f} points from the target {}% "
                             "(tolerance {}); compare it at its measured sparsity.\n",
                             run.name, c.error(), *run.target, s.calibration.tolerance);
      }
    }
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {:.0f} | {:.4f} | {:.3f} |", run.name, run.variant, target, knob,
                      calibrated, pct(100 * e["sparsity"].as<double>()), median_tokens_per_s(run.recipe.run_dir()),
                      e["eval_loss"].as<double>(), e["ppl"].as<double>());
    for (const auto& task : s.eval.tasks)
      md += fmt::format(" {:.3f} ({:.3f}) |", e["tasks"][task]["accuracy"].as<double>(),
                        e["tasks"][task]["token_accuracy"].as<double>());
    md += "\n";
  }
  if (!flags.empty()) md += "\nTargets not reached within the tolerance:\n\n" + flags;

  md += "\n## Plots\n\n";
  if (plot_problem.empty()) {
    md += "![Loss and task accuracy against measured sparsity](pareto.png)\n\n![Training loss](loss.png)\n";
    for (const auto& task : s.eval.tasks)
      if (fs::exists(fs::path(plan.dir) / ("heatmap-" + task + ".png")))
        md += fmt::format("\n![{} accuracy by length and depth](heatmap-{}.png)\n", task, task);
  } else {
    md += fmt::format("Not drawn: {}. Install matplotlib (`pip install matplotlib`) and run "
                      "`python3 tools/plot_sweep.py {}`.\n", plot_problem, plan.dir);
  }

  md += "\n## Calibration\n\nEvery knob value measured (sparsity in percent):\n\n";
  for (const auto& [variant, by_target] : calibrations) {
    if (by_target.empty()) continue;
    std::map<double, double> all;
    for (const auto& [target, c] : by_target) all.insert(c.probes.begin(), c.probes.end());
    std::vector<std::string> probes;
    for (const auto& [value, sparsity] : all) probes.push_back(fmt::format("{:.4g} -> {:.2f}", value, sparsity));
    md += fmt::format("- {} (`{}`): {}\n", variant, by_target.begin()->second.knob, fmt::join(probes, ", "));
  }

  const std::string path = (fs::path(plan.dir) / "report.md").string();
  write_file_atomic(path, md);
  return path;
}

}  // namespace st
