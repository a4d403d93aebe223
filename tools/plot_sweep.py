#!/usr/bin/env python3
"""Draws the plots of a `sparsetrain sweep` folder, beside its report.md:

  pareto.png          eval loss and each task's accuracy (exact match; answer tokens right)
                      against measured sparsity, a line per variant (the matched-sparsity
                      comparison; dense attention as a reference)
  loss.png            training loss of the dense pretraining and of every continual run
  heatmap-<task>.png  task accuracy by example length and needle depth, one panel per run

Usage: plot_sweep.py SWEEP_DIR    (the sweep runs it after the last evaluation)
Reads <run>/eval.json and <run>/metrics.jsonl of every run folder in SWEEP_DIR.
"""
import glob
import json
import math
import os
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib is not installed (pip install matplotlib)")

COLORS = {"dense": "black", "nsa": "tab:blue", "infllmv2": "tab:green", "dash": "tab:red"}
ORDER = ["dense", "nsa", "infllmv2", "dash"]


def load_runs(sweep_dir):
    runs = []
    for path in glob.glob(os.path.join(sweep_dir, "*", "eval.json")):
        with open(path) as f:
            run = json.load(f)
        run["dir"] = os.path.dirname(path)
        runs.append(run)
    runs.sort(key=lambda r: (ORDER.index(r["variant"]) if r["variant"] in ORDER else 99, r.get("target", 0)))
    return runs


def training_losses(run_dir):
    """step -> loss; a resumed run logs the steps after its last checkpoint twice: keep the last."""
    losses = {}
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                m = json.loads(line)
                if "loss" in m and m["loss"] is not None:
                    losses[m["step"]] = m["loss"]
    return sorted(losses.items())


def by_variant(runs):
    groups = {}
    for r in runs:
        groups.setdefault(r["variant"], []).append(r)
    return groups


def plot_pareto(runs, tasks, out):
    metrics = [("eval loss (lower is better)", lambda r: r["eval_loss"])]
    for t in tasks:
        metrics.append((f"{t} exact match", lambda r, t=t: r["tasks"][t]["accuracy"]))
        metrics.append((f"{t} answer tokens right", lambda r, t=t: r["tasks"][t]["token_accuracy"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, (label, value) in zip(axes[0], metrics):
        for variant, group in by_variant(runs).items():
            color = COLORS.get(variant, None)
            if variant == "dense":
                for r in group:
                    ax.axhline(value(r), color=color, linestyle="--", linewidth=1, label="dense")
                continue
            group = sorted(group, key=lambda r: r["sparsity"])
            xs = [100 * r["sparsity"] for r in group]
            ax.plot(xs, [value(r) for r in group], "o-", color=color, label=variant)
            for r, x in zip(group, xs):
                ax.annotate(f"{r['target']:g}", (x, value(r)), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel("measured sparsity (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Matched sparsity (labels: target %)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_losses(sweep_dir, runs, out):
    pretrain = training_losses(os.path.join(sweep_dir, "pretrain"))
    panels = (["pretrain"] if pretrain else []) + ["continual pretraining"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    if pretrain:
        axes[0][0].plot(*zip(*pretrain), color="black")
        axes[0][0].set_title("dense pretraining")
    ax = axes[0][-1]
    styles = ["-", "--", ":", "-."]
    for variant, group in by_variant(runs).items():
        for i, r in enumerate(group):
            losses = training_losses(r["dir"])
            if losses:
                ax.plot(*zip(*losses), styles[i % len(styles)], color=COLORS.get(variant), label=r["run"], linewidth=1)
    ax.set_title("continual pretraining (same tokens, same order)")
    ax.legend(fontsize=7, ncol=2)
    for a in axes[0]:
        a.set_xlabel("step")
        a.set_ylabel("training loss")
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_heatmap(runs, task, out):
    """One row per variant, one panel per target: accuracy by length (rows) and depth (columns)."""
    groups = list(by_variant(runs).values())
    cols = max(len(g) for g in groups)
    fig, axes = plt.subplots(len(groups), cols, figsize=(2.8 * cols + 1, 2.4 * len(groups)), squeeze=False,
                             layout="constrained")
    image = None
    for row, group in enumerate(groups):
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(group):
                ax.axis("off")
                continue
            r = group[col]
            by_length = r["tasks"][task]["lengths"]
            lengths = sorted(by_length, key=int)
            depths = list(by_length[lengths[0]]["accuracy"])
            grid = [[by_length[length]["accuracy"][d] for d in depths] for length in lengths]
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for y, values in enumerate(grid):
                for x, v in enumerate(values):
                    ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
            ax.set_xticks(range(len(depths)), depths, fontsize=7)
            ax.set_yticks(range(len(lengths)), lengths, fontsize=7)
            ax.set_title(f"{r['run']} ({100 * r['sparsity']:.1f}% sparse)", fontsize=8)
            if col == 0:
                ax.set_ylabel("length", fontsize=7)
            ax.set_xlabel("needle depth", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"{task} accuracy")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sweep_dir = sys.argv[1]
    runs = load_runs(sweep_dir)
    if not runs:
        sys.exit(f"{sweep_dir}: no <run>/eval.json to plot")
    tasks = list(runs[0].get("tasks", {}))
    plot_pareto(runs, tasks, os.path.join(sweep_dir, "pareto.png"))
    plot_losses(sweep_dir, runs, os.path.join(sweep_dir, "loss.png"))
    for task in tasks:
        plot_heatmap(runs, task, os.path.join(sweep_dir, f"heatmap-{task}.png"))
    print(f"{sweep_dir}: pareto.png, loss.png" + "".join(f", heatmap-{t}.png" for t in tasks))


if __name__ == "__main__":
    main()
