"""Where the memory of a training step goes, and its peak, at the paper's size.

    python benchmarks/memory.py                          # 232x310, batch 8 x (identity, lr, ud), stage 1
    python benchmarks/memory.py --precisions float32 --rounds 2 --code main=/tmp/kdepth_main
    python benchmarks/memory.py --size 480x640 --batch 1 --precisions float32
    python benchmarks/memory.py --variant 'pool;env:TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0'

Every configuration runs in a fresh Python process (one at a time: a 232x310 point needs ~5-7 GB),
which builds the stage-1 trainer exactly as `kdepth fit` does (`kdepth.training.stages.build_trainer`)
and runs train steps on random in-memory tensors. The child reports

- an account of the bytes it knows of: weights, trainable weights, optimizer slots, gradients
  (one float32 tensor per trainable weight), the compute-dtype copies of the weights under a
  mixed policy, the activations (every layer's output for the B x G images, the upper bound of
  what the backward pass keeps) and the input batch;
- resident memory (RSS) after import, after the build, after the optimizer's slots exist, and
  the peak (VmHWM) so far after the forward pass, after forward + backward and after the
  train steps (run in that order: freed memory stays with the process, so each phase's peak is
  visible only before a bigger one runs), so the table shows which phase sets the peak;
- the step time, its minor page faults and its kernel CPU time (medians of the steps after the
  first): an allocator that hands pages back makes the kernel fault in and zero them again.

Each child restarts itself with kdepth's page pool preloaded where `kdepth fit` would
(`kdepth.allocator.exec_with_page_pool`; copies of kdepth from before it have none):
`--variant 'nopool;env:KDEPTH_PAGE_POOL=0'` measures without it.
`--variant 'NAME;KEY=VALUE;env:K=V'` adds this code run with config overrides and environment
variables, interleaved the same way, so the cost of each setting is measured apart.
`--code NAME=DIR` adds the same configurations run with another copy of kdepth on PYTHONPATH
(for example `git archive main | tar -x -C /tmp/kdepth_main`), interleaved round by round with
this one, so old and new are measured side by side. Results: benchmarks/results/memory.json and
memory.md.
"""

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

CHILD_TAG = "MEMORY_RESULT "
HERE = Path(__file__).resolve().parent.parent


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss():
    return _status("VmRSS")


def peak():
    return _status("VmHWM")


def _nbytes(variables):
    return sum(int(v.numpy().nbytes) if hasattr(v, "numpy") else 0 for v in variables)


def account(trainer, network, images_per_step, precision):
    """The bytes the child can name (see the module docstring)."""
    import numpy as np

    trainable = trainer.trainable_variables
    slots = [v for v in trainer.optimizer.variables if len(v.shape) > 0]
    compute_bytes = 2 if precision.startswith("mixed") else 4
    import keras

    activations = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        bytes_each = 4 if str(layer.compute_dtype) == "float32" else compute_bytes
        for out in keras.tree.flatten(layer.output):
            activations += int(np.prod(out.shape[1:])) * images_per_step * bytes_each
    return {
        "weights": _nbytes(network.weights),
        "trainable": _nbytes(trainable),
        "optimizer_slots": _nbytes(slots),
        "optimizer_slot_tensors": len(slots),
        "gradients": _nbytes(trainable),
        "compute_copies": _nbytes(trainable) // 2 if compute_bytes == 2 else 0,
        "activations_upper_bound": activations,
    }


def child(spec):
    """Runs one configuration in this (fresh) process and prints its result as one tagged line."""
    after_import_start = rss()
    # isort: off
    import kdepth  # noqa: F401  first: it sets TensorFlow's allocator before TensorFlow starts
    import keras
    import numpy as np
    import tensorflow as tf
    # isort: on

    from kdepth.config import load_config
    from kdepth.models import dtype_policy
    from kdepth.training.stages import build_trainer

    h, w = spec["size"]
    batch, group = spec["batch"], spec["group"]
    sets = [f"model.input_size=[{h}, {w}]", "model.scales=2", "model.backbone_weights=none",
            f"train.batch_size={batch}", f"train.precision={spec['precision']}",
            "data.flip_group=[" + ", ".join(f'"{f}"' for f in group) + "]", *spec.get("sets", [])]
    config = load_config([], sets)
    figures = {"rss_python_start": after_import_start, "rss_after_import": rss(),
               # What TensorFlow read when it started (older copies of kdepth did not set it).
               "system_allocator": os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "").lower() in ("1", "true"),
               "page_pool": _page_pool_stats() is not None}
    with dtype_policy(config.train.precision):
        keras.utils.set_random_seed(0)
        parts = build_trainer(config, 1)
        trainer, network = parts.trainer, parts.network
        figures["rss_after_build"] = rss()
        trainer.optimizer.build(trainer.trainable_variables)
        figures["rss_after_slots"] = rss()
        rng = np.random.default_rng(0)
        images = tf.constant(rng.uniform(0, 255, (batch, len(group), h, w, 3)).astype("float32"))
        depth = tf.constant(rng.uniform(0.5, 8.0, (batch, len(group), h, w, 1)).astype("float32"))
        target = {"depth": depth, "mask": tf.ones_like(depth)}
        figures["input_batch"] = int(images.numpy().nbytes + 2 * depth.numpy().nbytes)
        figures.update(_phases(trainer, images, target, spec["steps"]))
        figures.update(account(trainer, network, batch * len(group), spec["precision"]))
    figures["params"] = int(network.count_params())
    print(CHILD_TAG + json.dumps(figures), flush=True)


def _median_after_first(values):
    """The median of the steps after the first (which traces the step), or the one step there is."""
    return statistics.median(values[1:] or values)


def _phases(trainer, images, target, steps):
    """Peak RSS after the forward pass, after forward + backward and after whole train steps.

    Freed memory mostly stays in the process (the allocator keeps it), so a phase's peak can only
    be seen before a bigger phase has run: the phases run in growing order and each figure is
    the peak so far (VmHWM).
    """
    import tensorflow as tf

    @tf.function
    def forward():
        preds = trainer(images, training=True)
        return trainer.compute_terms(target, preds)[1]

    @tf.function
    def backward():
        with tf.GradientTape() as tape:
            preds = trainer(images, training=True)
            total = trainer.compute_terms(target, preds)[1]
        grads = tape.gradient(total, trainer.trainable_variables)
        return tf.add_n([tf.reduce_sum(g[:1]) for g in grads])

    out = {}
    for name, fn in (("forward", forward), ("forward_backward", backward)):
        fn()
        out[f"peak_{name}"] = peak()
    times, faults, system = [], [], []
    for _ in range(steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        trainer.train_on_batch(images, target)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(after.ru_minflt - before.ru_minflt)
        system.append(after.ru_stime - before.ru_stime)
    out["peak_step"] = peak()
    # Page faults and kernel CPU time per step: what handing memory back and forth costs.
    out["step_page_faults_median"] = _median_after_first(faults)
    out["step_system_seconds_median"] = _median_after_first(system)
    out["rss_after_steps"] = rss()
    out["step_seconds"] = [round(t, 3) for t in times]
    out["step_median"] = _median_after_first(times)
    return out


def _allocator_function(name):
    """kdepth.allocator's function `name` in the kdepth copy on the path; None in copies older than the page pool."""
    return getattr(importlib.import_module("kdepth.allocator"), name, None)


def _page_pool_stats():
    stats = _allocator_function("page_pool_stats")
    return stats() if stats else None


def _page_pool_as_fit_has_it():
    """Restarts the child with the page pool preloaded where its kdepth's `kdepth fit` would be."""
    restart = _allocator_function("exec_with_page_pool")
    if restart:
        restart([__file__, *sys.argv[1:]])


def run(spec, code_dir):
    """Runs `child(spec)` in a fresh process with `code_dir` first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(code_dir), **dict(e.split("=", 1) for e in spec.get("env", []))}
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                              stderr=err, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_TAG)]
        if proc.returncode == 0 and lines:
            return json.loads(lines[-1][len(CHILD_TAG):])
        err.seek(0)
        return {"failed": f"exit {proc.returncode}: {err.read()[-800:]}"}


def gb(n):
    return round(n / 1e9, 2)


def _allocator(figures):
    """Which allocator served TensorFlow's CPU tensors ("?" in results of older benchmarks)."""
    name = {True: "system", False: "oneDNN pool"}.get(figures.get("system_allocator"), "?")
    return f"{name} + page pool" if figures.get("page_pool") else name


def _get(figures, key, fmt):
    return fmt.format(figures[key]) if key in figures else "?"  # "?": older results


def table(rows):
    head = ("| code | precision | allocator | peak RSS GB (step) | forward | fwd+bwd | after build | after slots | "
            "step s | page faults / step | kernel CPU s / step | weights | slots | grads | compute copies | "
            "activations (bound) |")
    # Peaks are cumulative: forward, then forward + backward, then the train steps.
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        f = r["figures"]
        if "failed" in f:
            lines.append(f"| {r['code']} | {r['precision']} | failed: {f['failed'][:120]} |" + " |" * 13)
            continue
        lines.append(
            f"| {r['code']} | {r['precision']} | {_allocator(f)} | **{gb(f['peak_step'])}** | {gb(f['peak_forward'])} | "
            f"{gb(f['peak_forward_backward'])} | {gb(f['rss_after_build'])} | {gb(f['rss_after_slots'])} | "
            f"{f['step_median']:.2f} | {_get(f, 'step_page_faults_median', '{:.0f}')} | "
            f"{_get(f, 'step_system_seconds_median', '{:.2f}')} | {gb(f['weights'])} | {gb(f['optimizer_slots'])} | {gb(f['gradients'])} | "
            f"{gb(f['compute_copies'])} | {gb(f['activations_upper_bound'])} |"
        )
    return "\n".join(lines)


def _variant(text):
    """'NAME;train.recompute=[];env:K=V' -> (NAME, this code, config overrides, environment)."""
    name, *items = text.split(";")
    env = [item[len("env:"):] for item in items if item.startswith("env:")]
    return name, HERE, [item for item in items if not item.startswith("env:")], env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="232x310")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--group", nargs="+", default=["identity", "lr", "ud"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="a config override for every child")
    parser.add_argument("--code", action="append", default=[], help="NAME=DIR: also run with this kdepth copy")
    parser.add_argument("--env", action="append", default=[], help="K=V: an environment variable for every child")
    parser.add_argument("--variant", action="append", default=[],
                        help="'NAME;KEY=VALUE;env:K=V...': also run this code with these overrides")
    parser.add_argument("--name", default="memory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _page_pool_as_fit_has_it()
        return child(json.loads(args.child))
    h, w = (int(x) for x in args.size.split("x"))
    codes = [("this", HERE, [], [])] + [(*c.split("=", 1), [], []) for c in args.code]
    codes += [_variant(v) for v in args.variant]
    rows = []
    for round_ in range(args.rounds):
        for precision in args.precisions:
            for name, code_dir, sets, env in codes:
                spec = {"size": [h, w], "batch": args.batch, "group": args.group, "precision": precision,
                        "steps": args.steps, "sets": [*args.set, *sets], "env": [*args.env, *env]}
                figures = run(spec, code_dir)
                print(f"round {round_} {name} {precision}: " + json.dumps(figures)[:400], flush=True)
                rows.append({"round": round_, "code": name, "precision": precision, "spec": spec, "figures": figures})
    meta = {"size": [h, w], "batch": args.batch, "group": args.group, "steps": args.steps, "sets": args.set, "env": args.env,
            "codes": {n: [str(d), *sets, *env] for n, d, sets, env in codes}, "load_average": os.getloadavg()}
    write_results(args.name, meta, rows, table(rows))


if __name__ == "__main__":
    main()
