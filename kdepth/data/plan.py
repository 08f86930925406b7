"""Complete or absent: the plan file that `kdepth data synth` writes first and completes last.

Before any sample, `kdepth data synth` writes ``OUT/synth.json`` with what it is going to write
(the settings the samples' bytes depend on, the sample count of each split, its own options)
and ``"complete": false``. Every file is written under a hidden temporary name and renamed into
place (`kdepth.data.writer`), and ``"complete": true`` is the very last write. So a folder whose
plan file is not complete is a run that stopped: `FolderSource` (and with it `kdepth data
check`, `fit` and `evaluate`) refuses it, saying how many samples of how many are there and the
command that finishes it. Running that command again renders only the missing samples (a
sample is a pure function of the seed and its index) and then marks the folder complete.

A folder without a plan file (made by hand, or by another program, in the documented layout
``ROOT/<split>/{rgb,depth}/``) is read as before.
"""

import json
import os
import shlex
from pathlib import Path

from kdepth.data.writer import remove_stale_temp_files, sample_stem, write_atomically
from kdepth.errors import DataError

PLAN_FILE = "synth.json"
_FORMAT = "kdepth data synth"
_VERSION = 1
_OPTION_OF = {"seed": "--seed", "size": "--size", "train": "--count", "val": "--eval-count", "test": "--eval-count"}


def settings_of(data_cfg, size):
    """What the bytes of a synthetic data set depend on, as JSON values.

    Args:
        data_cfg: `config.data` of the synth run (seed, counts, holes, depth range and scale).
        size: (H, W) the samples are rendered at.

    Returns:
        {"seed", "size", "train", "val", "test", "synthetic_holes", "min_depth", "max_depth",
        "depth_scale"}.
    """
    return {
        "seed": int(data_cfg.seed),
        "size": [int(size[0]), int(size[1])],
        "train": int(data_cfg.synthetic_train),
        "val": int(data_cfg.synthetic_val),
        "test": int(data_cfg.synthetic_test),
        "synthetic_holes": bool(data_cfg.synthetic_holes),
        "min_depth": float(data_cfg.min_depth),
        "max_depth": float(data_cfg.max_depth),
        "depth_scale": float(data_cfg.depth_scale),
    }


def synth_command(root, args):
    """The `kdepth data synth` command line that (re)writes the data set at `root`."""
    return shlex.join(["kdepth", "data", "synth", "--out", str(root), *args])


def read_plan(root):
    """The plan of the data set at `root`, or None when it has no plan file.

    Raises:
        DataError: the plan file exists but is not a kdepth plan (unreadable, or edited).
    """
    path = Path(root) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
        valid = plan.get("format") == _FORMAT and isinstance(plan["settings"], dict) and isinstance(plan["args"], list)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError) as e:
        valid, plan = False, f"{type(e).__name__}: {e}"
    if not valid:
        raise DataError(
            path,
            f"is not a readable `{_FORMAT}` plan ({plan if isinstance(plan, str) else 'unexpected content'}); "
            f"delete {path.parent} and run `kdepth data synth` again, or delete just {PLAN_FILE} if the folder "
            "is your own data in the folder layout.",
        )
    return plan


def written_counts(root, settings):
    """{split: samples of the planned names whose RGB and depth files are both in place}."""
    root = Path(root)
    counts = {}
    for split in ("train", "val", "test"):
        n = settings[split]
        planned = {f"{sample_stem(i, n)}.png" for i in range(n)}
        present = [_names(root / split / kind) for kind in ("rgb", "depth")]
        counts[split] = len(planned & present[0] & present[1])
    return counts


def _names(directory):
    return set(os.listdir(directory)) if directory.is_dir() else set()


def incomplete_error(root, plan):
    """The DataError of a data set whose synth run stopped: counts so far and the command that finishes it."""
    settings = plan["settings"]
    done = written_counts(root, settings)
    per_split = ", ".join(f"{s} {done[s]}/{settings[s]}" for s in done)
    total = sum(settings[s] for s in done)
    return DataError(
        root,
        f"is an incomplete data set: `kdepth data synth` stopped after writing {sum(done.values())} of {total} "
        f"samples ({per_split}). Finish it (only the missing samples are rendered) with:  "
        f"{synth_command(root, plan['args'])}  (or delete the folder).",
    )


def check_complete(root):
    """Raises the `incomplete_error` if `root` holds a synth run that did not finish; no plan file is fine."""
    plan = read_plan(root)
    if plan is not None and not plan.get("complete"):
        raise incomplete_error(root, plan)


def start(out, settings, args):
    """Prepares `out` for a synth run; returns the samples already written (0 for a new folder).

    A missing or empty folder gets a new plan. A folder holding an unfinished run with the same
    settings is resumed (stale temporary files removed; the samples in place are kept).

    Raises:
        DataError: the folder holds a complete data set or anything else ("not empty"), or an
            unfinished run with other settings (each difference named).
    """
    out = Path(out)
    plan = read_plan(out) if out.is_dir() else None
    if plan is None:
        if out.exists() and any(not _is_temp(p) for p in out.iterdir()):
            raise DataError(out, "output folder is not empty; choose a new --out folder or delete this one.")
        write_plan(out, settings, args)
        return 0
    if plan.get("complete"):
        raise DataError(
            out, "output folder is not empty: it holds a complete data set; choose a new --out folder or delete this one."
        )
    differences = _differences(plan["settings"], settings)
    if differences:
        raise DataError(
            out,
            f"holds an unfinished `kdepth data synth` run with other settings ({'; '.join(differences)}). "
            f"Finish it with its own command:  {synth_command(out, plan['args'])}  or choose a new --out folder "
            "(or delete this one).",
        )
    remove_stale_temp_files(out)
    return sum(written_counts(out, settings).values())


def _is_temp(path):
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _differences(before, now):
    """'OPTION: X there, Y now' for every setting that differs."""
    out = []
    for key in [*now, *(k for k in before if k not in now)]:
        a, b = before.get(key), now.get(key)
        text = f"{_OPTION_OF.get(key, f'data.{key}')}: {_show(key, a)} there, {_show(key, b)} now"
        if a != b and text not in out:  # val and test are both --eval-count
            out.append(text)
    return out


def _show(key, value):
    if key == "size" and isinstance(value, list):
        return "x".join(map(str, value))
    return json.dumps(value)


def write_plan(out, settings, args, complete=False):
    """Writes `out`/synth.json atomically (creating `out`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"format": _FORMAT, "version": _VERSION, "complete": complete, "settings": settings, "args": list(args)}
    write_atomically(out / PLAN_FILE, lambda tmp: tmp.write_text(json.dumps(plan, indent=2) + "\n"), sync=True)


def mark_complete(out):
    """Marks the synth run at `out` complete: its very last write."""
    plan = read_plan(out)
    write_plan(out, plan["settings"], plan["args"], complete=True)
