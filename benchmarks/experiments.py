"""Runs one controlled experiment: every arm of configs/experiments/NAME/ over several seeds.

    python benchmarks/experiments.py NAME [--seeds 0 1] [--quick] [--fresh]

NAME is a folder of configs/experiments/ (setloss, skips, collapse, scales, flips). Each TOML file
in it is one arm (files whose name starts with "_" are shared bases, not arms); the arms of an
experiment differ in one thing. Every arm and seed trains with `kdepth fit` in its own Python
process, with --set train.seed=SEED, under benchmarks/results/experiments/NAME/; an arm whose
config says train.stage=N runs stages 1 to N one after another in one run folder, and arms that
share train.name share the stages they have in common (the scale-2 arm is the scale-3 arm's
stage 1). A run that has its summary.json already is not trained again (--fresh deletes them).

Writes into benchmarks/results/experiments/:
  NAME.json  every epoch's log.csv row per arm, seed and stage (with the step count reached), and
             each stage's summary.json
  NAME.md    the table: final train / val delta1 (no augmentation), the generalization gap,
             steps to reach the experiment's val delta1 target, its own figure, wall time
  NAME.png   learning curves: val delta1 (solid) and train delta1 (dashed, the running mean of
             each epoch under augmentation) against training steps, every arm and seed; plus the
             experiment's own figure (zero predictions, delta1 near depth edges) where it has one
The PNG needs matplotlib: pip install -e ".[plots]".
"""

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = REPO / "configs" / "experiments"
RESULTS = HERE / "results" / "experiments"

# Per experiment: the val delta1 whose first crossing counts as "converged" (steps to reach it)
# and the per-epoch column of its own figure (log.csv name), if any.
EXPERIMENTS = {
    "setloss": {"target": 0.55, "panel": None},
    "skips": {"target": 0.5, "panel": None},
    "collapse": {"target": 0.5, "panel": "pred_zero_frac", "panel2": "pred_log_std"},
    "scales": {"target": 0.55, "panel": "val_edge_delta1"},
    "flips": {"target": 0.55, "panel": None},
}
PANEL_TITLES = {"pred_zero_frac": "fraction of predictions <= 1 mm (val images)",
                "pred_log_std": "std of predicted log depth (0 = a constant map)",
                "val_edge_delta1": "val delta1 within 2 px of depth edges"}


def arms(name):
    """{arm name: config path} of an experiment, sorted by name."""
    folder = CONFIGS / name
    files = sorted(p for p in folder.glob("*.toml") if not p.name.startswith("_"))
    if not files:
        raise SystemExit(f"{folder} holds no arm (*.toml not starting with '_'); experiments: {sorted(EXPERIMENTS)}")
    return {p.stem: p for p in files}


def _sets(seed, quick, experiment):
    sets = [f"train.seed={seed}", f'train.run_dir="{RESULTS / experiment}"', "train.verbose=0"]
    return sets + (["train.epochs=1", "train.steps_per_epoch=5"] if quick else [])


def _run_stage(config_path, run_name, stage, sets, experiment):
    """Trains one stage unless its summary.json exists with the same config; returns the stage folder."""
    from kdepth.config import load_config

    sets = [*sets, f'train.name="{run_name}"']
    config = load_config([config_path], sets).replace(train__stage=stage)
    out = RESULTS / experiment / run_name / f"stage{stage}"
    if (out / "summary.json").is_file():
        if _settings(out / "config.toml") != _settings(config.to_toml()):
            raise SystemExit(f"{out} was trained with another config than {config_path} asks for; run with --fresh")
        print(f"  {out.relative_to(RESULTS)}: done before", flush=True)
        return out
    command = [sys.executable, "-c", "from kdepth.cli import main; main()", "fit", "--config", str(config_path),
               "--stage", str(stage), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    print(f"  {out.relative_to(RESULTS)} ...", end=" ", flush=True)
    log = out.parent / f"fit-stage{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        code = subprocess.call(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"kdepth fit failed (exit status {code}), see {log}: {' '.join(command)}")
    print(f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)
    # The curves need log.csv and summary.json; a later stage needs model.keras. The weights files
    # with optimizer state (about 340 MB each here) and the backup only fill the disk.
    for path in [*out.glob("*.weights.h5"), out / "backup"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return out


def _settings(text_or_path):
    """The lines of a config file without its comments: two runs with equal settings compare equal."""
    text = text_or_path.read_text() if isinstance(text_or_path, Path) else text_or_path
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def run_arm(experiment, arm, config_path, seed, quick):
    """Every stage of one arm and seed; returns [{"stage", "epochs": [log rows], "summary"}]."""
    from kdepth.config import load_config

    sets = _sets(seed, quick, experiment)
    config = load_config([config_path], sets)
    run_name = f"{config.train.name}-s{seed}"
    stages, steps_done = [], 0
    for stage in range(1, config.train.stage + 1):
        out = _run_stage(config_path, run_name, stage, sets, experiment)
        rows = read_log(out / "log.csv")
        steps = config.train.steps_per_epoch
        for row in rows:
            steps_done += steps
            row["step"] = steps_done
        stages.append({"stage": stage, "epochs": rows, "summary": json.loads((out / "summary.json").read_text())})
    return stages


def read_log(path):
    """log.csv as a list of {column: float}."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def steps_to(curve, target):
    """The first step whose val delta1 is >= target, or None."""
    return next((row["step"] for row in curve if row.get("val_delta1", 0.0) >= target), None)


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table(experiment, results):
    """The markdown table: one row per arm and seed, and the mean over seeds per arm."""
    spec = EXPERIMENTS.get(experiment, {"target": 0.55, "panel": None})
    panel = spec["panel"]
    head = ["arm", "seed", "train delta1", "val delta1", "gap (train - val)", f"steps to val delta1 {spec['target']}"]
    head += [f"final {panel}"] if panel else []
    head += ["wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, seeds in results.items():
        rows = []
        for seed, stages in seeds.items():
            final = stages[-1]["summary"]
            curve = [row for s in stages for row in s["epochs"]]
            minutes = sum(s["summary"]["seconds"] for s in stages) / 60
            extra = [curve[-1].get(panel)] if panel else []
            rows.append([final["train"]["delta1"], final["val"]["delta1"], final["train"]["delta1"] - final["val"]["delta1"],
                         steps_to(curve, spec["target"]), *extra, minutes])
            lines.append(_row(arm, seed, rows[-1]))
        if len(rows) > 1:
            means = [_mean(col) for col in zip(*rows, strict=True)]
            reached = [r[3] is not None for r in rows]
            if not all(reached):  # a mean over the seeds that got there would flatter the arm
                means[3] = f"{sum(reached)} of {len(rows)} seeds reached"
            lines.append(_row(f"**{arm}**", "mean", means))
    return "\n".join(lines)


def _row(arm, seed, values):
    cells = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            cells.append(v)
        elif v is None:
            cells.append("not reached" if i == 3 else "-")
        elif i == 3:
            cells.append(f"{v:.0f}")
        elif i == len(values) - 1:
            cells.append(f"{v:.1f} min")
        else:
            cells.append(f"{v:.3f}")
    return f"| {arm} | {seed} | " + " | ".join(cells) + " |"


def plot(experiment, results, path):
    """Writes the learning curves (and the experiment's own figure) as a PNG; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: no PNG (pip install -e ".[plots]")')
        return None
    spec = EXPERIMENTS.get(experiment, {})
    panels = [p for p in (spec.get("panel"), spec.get("panel2")) if p]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5.5 * (1 + len(panels)), 4), squeeze=False)
    styles = ["-", "-.", ":", (0, (5, 1))]
    for a, (arm, seeds) in enumerate(results.items()):
        colour = f"C{a}"
        for s, (seed, stages) in enumerate(seeds.items()):
            curve = [row for st in stages for row in st["epochs"]]
            steps = [row["step"] for row in curve]
            axes[0, 0].plot(steps, [r.get("val_delta1", math.nan) for r in curve], color=colour,
                            linestyle=styles[s % 2], label=f"{arm} seed {seed} val")
            axes[0, 0].plot(steps, [r.get("delta1", math.nan) for r in curve], color=colour, alpha=0.5,
                            linestyle="--", label=f"{arm} seed {seed} train")
            for p, panel in enumerate(panels, start=1):
                axes[0, p].plot(steps, [r.get(panel, math.nan) for r in curve], color=colour,
                                linestyle=styles[s % 2], marker=".", label=f"{arm} seed {seed}")
    axes[0, 0].set(xlabel="training steps", ylabel="delta1", title=f"{experiment}: delta1 (val solid / dash-dot, train dashed)")
    axes[0, 0].legend(fontsize=6)
    for p, panel in enumerate(panels, start=1):
        axes[0, p].set(xlabel="training steps", title=PANEL_TITLES.get(panel, panel))
        axes[0, p].legend(fontsize=6)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"an experiment folder of configs/experiments/ ({', '.join(EXPERIMENTS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="train.seed of each run [default: 0 1]")
    parser.add_argument("--quick", action="store_true", help="1 epoch of 5 steps per run: checks the pipeline only")
    parser.add_argument("--fresh", action="store_true", help="delete this experiment's earlier runs first")
    args = parser.parse_args(argv)
    experiment = args.name + ("_quick" if args.quick else "")
    if args.fresh:
        shutil.rmtree(RESULTS / experiment, ignore_errors=True)
    start = time.perf_counter()
    results = {}
    for arm, path in arms(args.name).items():
        print(f"{args.name}: arm {arm} ({path.relative_to(REPO)})", flush=True)
        results[arm] = {seed: run_arm(experiment, arm, path, seed, args.quick) for seed in args.seeds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"experiment": args.name, "seeds": args.seeds, "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
            "minutes": round((time.perf_counter() - start) / 60, 1), "command": " ".join(sys.argv)}
    (RESULTS / f"{experiment}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    text = table(args.name, results)
    (RESULTS / f"{experiment}.md").write_text(text + "\n")
    png = plot(args.name, results, RESULTS / f"{experiment}.png")
    print(text)
    print(f"wrote {RESULTS / experiment}.json, .md{' and .png' if png else ''} in {meta['minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
