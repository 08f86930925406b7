"""Video flicker with and without `--smooth`, on the synthetic camera trajectory through one room.

For each smoothing value: flicker = mean over frames of the mean |ln d_t - ln d_{t-1}| of the
predictions (`kdepth.video.flicker`), beside the same figure for the rendered ground truth (the
camera really moves, so some change is true motion) and delta1 against it, so a lower flicker
that costs accuracy shows.

    python benchmarks/flicker.py --model runs/quickstart --frames 60
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine  # noqa: E402


def main():
    from kdepth.data.synthetic import render_trajectory_frame
    from kdepth.inference import load_depth_model
    from kdepth.video import LogSmoother, flicker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320])
    parser.add_argument("--smooth", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    args = parser.parse_args()
    model = load_depth_model(args.model)
    frames = [render_trajectory_frame(args.seed, i, tuple(args.size)) for i in range(args.frames)]
    raw = [model.predict(rgb) for rgb, _ in frames]
    gts = [gt for _, gt in frames]
    rows = {"ground_truth_flicker": flicker(gts)}
    for s in args.smooth:
        smoother = LogSmoother(s)
        preds = [smoother(d) for d in raw]
        ratio = [np.maximum(p / g, g / p) for p, g in zip(preds, gts, strict=True)]
        rows[f"smooth {s:g}"] = {"flicker": flicker(preds), "delta1": float(np.mean([np.mean(r < 1.25) for r in ratio]))}
        print(f"smooth {s:g}: flicker {rows[f'smooth {s:g}']['flicker']:.3e}, delta1 {rows[f'smooth {s:g}']['delta1']:.3f}", flush=True)
    print(f"ground truth flicker (true camera motion): {rows['ground_truth_flicker']:.3e}")
    result = {"machine": machine(), "model": str(args.model), "frames": args.frames, "seed": args.seed, "size": args.size, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flicker.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
