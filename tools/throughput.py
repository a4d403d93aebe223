#!/usr/bin/env python3
"""Summarise a run's metrics.jsonl into a throughput line: median tokens/s, MFU and step
time over the steps after a warm-up, and peak GPU memory. Prints a table row, writes JSON.

usage: tools/throughput.py RUN_DIR [--skip N] [--json OUT] [--label TEXT]
"""
import argparse, json, statistics, sys

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("--skip", type=int, default=3, help="warm-up steps left out")
p.add_argument("--json")
p.add_argument("--label", default="")
a = p.parse_args()
steps = [json.loads(l) for l in open(f"{a.run_dir}/metrics.jsonl") if '"loss"' in l]
timed = steps[a.skip:]
if not timed:
    sys.exit(f"{a.run_dir}: fewer than {a.skip + 1} steps logged")
out = {
    "label": a.label or a.run_dir,
    "steps_timed": len(timed),
    "tokens_per_s": statistics.median(s["tokens_per_s"] for s in timed),
    "mfu": statistics.median(s["mfu"] for s in timed),
    "step_time_s": statistics.median(s["step_time_s"] for s in timed),
    "peak_mem_gib": max(s.get("peak_mem_gib", 0) for s in steps),
    "final_loss": steps[-1]["loss"],
}
print(f"| {out['label']} | {out['tokens_per_s']:.0f} | {100 * out['mfu']:.1f}% | {out['step_time_s'] * 1000:.0f} ms | {out['peak_mem_gib']:.1f} GiB | {out['final_loss']:.3f} |")
if a.json:
    json.dump(out, open(a.json, "w"), indent=1)
