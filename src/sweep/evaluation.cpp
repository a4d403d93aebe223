#include "sweep/evaluation.h"

#include <cmath>

#include "data/tokenizer.h"
#include "eval/tasks.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/model_state.h"
#include "util/utc_time.h"

namespace st {

JsonObject evaluate_run(const std::string& run_dir, const SweepConfig& sweep) {
  const CheckpointData ckpt = load_checkpoint(run_dir, /*with_optimizer=*/false);
  const Recipe recipe = parse_recipe(ckpt.recipe_yaml, resolve_checkpoint(run_dir) + "/recipe.yaml");
  const Runtime rt = make_runtime(recipe.train);
  Transformer model(recipe.model);
  load_model_state(model, ckpt.model, /*allow_new_variant_params=*/false, run_dir);
  model->to(rt.device);

  const TokenShard shard(recipe.data.eval);
  const EvalResult e = evaluate(model, shard, rt, sweep.calibration.length, 1, sweep.eval.ppl_batches);
  JsonObject out;
  out.add("step", ckpt.step).add("tokens", ckpt.tokens).add("eval_loss", e.loss).add("ppl", std::exp(e.loss))
      .add("sparsity", e.sparsity()).add("layer_sparsity", e.layer_sparsity()).add("length", sweep.calibration.length)
      .add("device", rt.device_name()).add("evaluated_at", utc_timestamp());
  JsonObject tasks;
  const auto tokenizer = load_tokenizer(sweep.eval.tokenizer);
  for (const std::string& task : sweep.eval.tasks) {
    const TaskEvalResult r = evaluate_task(
        model, *tokenizer, rt, {task, sweep.eval.lengths, sweep.eval.depths, sweep.eval.count, uint64_t(sweep.eval.seed)});
    const TaskCell all = all_cells(r);
    tasks.add(task, JsonObject().add("accuracy", all.accuracy()).add("token_accuracy", all.token_accuracy())
                         .add("lengths", lengths_json(r)));
  }
  return out.add("tasks", tasks);
}

}  // namespace st
