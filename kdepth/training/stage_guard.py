"""Nothing lost, nothing mixed: who may write a stage folder, and what a new `fit` may do there.

`StageClaim` is entered by `fit` before anything is written and held until the stage ends:

1. One writer: the chief takes the stage folder's lock (`kdepth.locks.FolderLock`); a second
   `kdepth fit` of the same stage stops at once, naming the process that trains it.
2. A finished stage is never overwritten by default. A stage is finished when it has
   `summary.json`: `fit` writes it last, atomically, after model.keras and the final metrics,
   so its presence means every output of the stage is complete, and it holds the figures the
   message quotes. An interrupted stage (a backup, no summary.json) resumes.
3. `overwrite=True` (--overwrite) moves the finished stage's files aside into a hidden sibling
   `.stageN.replaced-<time>` (a rename: atomic, no copy, no extra space) and deletes them only
   once the new run has finished. If the new run fails before it trained anything (no backup,
   no model), the old files are moved back; after that they stay aside until it finishes.
4. A resume is the run it claims to be: a backup is only resumed with a config that differs
   from the interrupted run's config.toml in `RESUME_MAY_CHANGE` keys at most.
5. config.toml of this run is written once those checks passed; the backup is deleted when the
   stage ends complete, after summary.json (a crash before that resumes at the end of training).
"""

import datetime
import json
import os
import shutil
from pathlib import Path

from kdepth.config import load_config, save_config
from kdepth.errors import ConfigError, KdepthError
from kdepth.locks import LOCK_NAME, FolderLock
from kdepth.training import checkpoints

SUMMARY = "summary.json"
CONFIG = "config.toml"
BACKUP_STATE = Path("backup") / "state.json"
REPLACED_MARK = ".replaced-"

# Keys a resumed run may change: none changes the model, the data or their order (learning
# rates and their schedule, optimizer regularisation, epochs, how often to back up, what to log,
# how to run). Every other key must equal the interrupted run's.
RESUME_MAY_CHANGE = (
    "train.name", "train.run_dir", "train.stage", "train.epochs", "train.val_steps",
    "train.lr_backbone", "train.lr_coarse", "train.lr_skip", "train.lr_scale2", "train.lr_scale3",
    "train.finetune_lr_scale", "train.lr_schedule", "train.lr_decay_rate", "train.lr_decay_epochs",
    "train.lr_min_ratio", "train.warmup_epochs", "train.weight_decay", "train.clipnorm",
    "train.steps_per_execution", "train.jit_compile", "train.release_memory", "train.recompute", "train.devices",
    "train.backup_every",
    "train.on_nan", "train.tensorboard_images", "train.collapse_std", "train.verbose",
    "data.cache",
    "export.quantize", "export.representative_samples",
    "eval.protocol", "eval.flip_tta", "eval.align", "eval.input_range",
)


class StageFinished(KdepthError):
    """The stage folder holds a finished stage and overwrite was not asked for."""


def finished_summary(stage_dir):
    """The summary.json of a finished stage as a dict, or None if the stage is not finished."""
    path = Path(stage_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        summary = {}  # written atomically, so this is someone else's file: still a finished stage
    summary = summary if isinstance(summary, dict) else {}
    summary.setdefault("finished", datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M"))
    return summary


def finished_message(stage_dir, stage, summary):
    val = summary.get("val") if isinstance(summary.get("val"), dict) else {}
    delta1 = f"val delta1 {val['delta1']:.3f}, " if isinstance(val.get("delta1"), (int, float)) else ""
    n = summary.get("epochs")
    epochs = f"{n} epoch{'' if n == 1 else 's'}, " if isinstance(n, int) else ""
    return (
        f"{stage_dir} already holds a finished stage-{stage} model ({delta1}{epochs}finished {summary['finished']}). "
        "Use --name NEW for a new run, or --overwrite to replace it."
    )


def config_changes(old, new):
    """`section.key (old -> new)` for every key outside RESUME_MAY_CHANGE whose value differs."""
    old, new = old.to_dict(), new.to_dict()
    changes = []
    for section, keys in new.items():
        for key, value in keys.items():
            name = f"{section}.{key}"
            if name not in RESUME_MAY_CHANGE and old.get(section, {}).get(key) != value:
                changes.append(f"{name} ({old.get(section, {}).get(key)!r} -> {value!r})")
    return changes


def check_resume_config(work, config):
    """Raises if `work` holds a backup made with a config that changes the model, data or order."""
    work = Path(work)
    if not (work / BACKUP_STATE).is_file() or not (work / CONFIG).is_file():
        return
    try:
        previous = load_config([work / CONFIG])
    except ConfigError as e:
        raise KdepthError(
            f"cannot compare this run with the interrupted one: {work / CONFIG} does not load ({e}). "
            f"Use --name NEW for a new run, or delete {work / 'backup'} to start this stage over."
        ) from e
    changes = config_changes(previous, config)
    if changes:
        raise KdepthError(
            f"the backup in {work / 'backup'} was made with other settings: {', '.join(changes)}. These change the "
            "model, the data or their order, so the resumed run would not be the run it claims to be. Resume with "
            f"the interrupted run's settings (--config {work / CONFIG}), use --name NEW for a new run, or delete "
            f"{work / 'backup'} to start this stage over. Keys that may change on a resume: {', '.join(RESUME_MAY_CHANGE)}."
        )


def replaced_dirs(stage_dir):
    """The hidden folders holding stages that --overwrite moved aside, oldest first."""
    stage_dir = Path(stage_dir)
    return sorted(stage_dir.parent.glob(f".{stage_dir.name}{REPLACED_MARK}*"))


def move_aside(stage_dir):
    """Moves every entry of stage_dir but the lock into a new hidden sibling; returns it."""
    stage_dir = Path(stage_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    aside = stage_dir.parent / f".{stage_dir.name}{REPLACED_MARK}{stamp}"
    aside.mkdir()
    for entry in stage_dir.iterdir():
        if not entry.name.startswith(LOCK_NAME):
            os.replace(entry, aside / entry.name)
    return aside


def move_back(aside, stage_dir):
    """Undoes `move_aside`: deletes what the new run wrote (not the lock) and puts the old files back."""
    for entry in Path(stage_dir).iterdir():
        if not entry.name.startswith(LOCK_NAME):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for entry in Path(aside).iterdir():
        os.replace(entry, Path(stage_dir) / entry.name)
    Path(aside).rmdir()


class StageClaim:
    """Claims a stage folder for one `fit`: a context manager (see the module docstring).

    Args:
        out: the stage folder.
        work: where this process writes (`distribute.write_dir`: out itself on the chief).
        config: the resolved config of this run (saved as work/config.toml).
        stage: the stage number, for messages.
        is_chief: only the chief locks `out` and replaces a finished stage.
        overwrite: replace a finished stage instead of stopping.
        final: a finished stage here is kept (False for --overfit folders, redone every time).
        echo: where messages go.
    """

    def __init__(self, out, work, config, stage, *, is_chief=True, overwrite=False, final=True, echo=print):
        self.out, self.work, self.config, self.stage = Path(out), Path(work), config, stage
        self.is_chief, self.overwrite, self.final, self.echo = is_chief, overwrite, final, echo
        fix = "wait for it, or use --name NEW"
        self.lock = FolderLock(self.out, activity="being trained", fix=fix, echo=echo) if is_chief else None
        self.aside = None

    def _check_and_prepare(self):
        summary = finished_summary(self.out) if self.is_chief and self.final else None
        if summary is not None and not self.overwrite:
            raise StageFinished(finished_message(self.out, self.stage, summary))
        check_resume_config(self.work, self.config)
        if summary is not None:
            self.aside = move_aside(self.out)
            self.echo(f"--overwrite: the finished stage in {self.out} is moved to {self.aside} until this run finishes")
        save_config(self.config, self.work)

    def __enter__(self):
        # An unwritable or impossible run folder fails now, with the reason (a probe file only).
        checkpoints.check_writable(self.work)
        if self.lock is not None:
            self.lock.__enter__()
        try:
            self._check_and_prepare()
        except BaseException:
            self._failed()
            raise
        return self

    def _progress(self):
        return (self.work / BACKUP_STATE).is_file() or (self.work / "model.keras").is_file()

    def _failed(self):
        try:
            if self.aside is not None and not self._progress():
                move_back(self.aside, self.out)
                self.echo(f"the replaced stage is back in {self.out} (this run stopped before it trained anything)")
            elif self.aside is not None:
                self.echo(f"the replaced stage stays in {self.aside} until this run finishes")
        finally:
            if self.lock is not None:
                self.lock.__exit__(None, None, None)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._failed()
            return False
        try:
            # The backup goes only once every output is complete (see callbacks.Backup).
            if (self.work / SUMMARY).is_file():
                shutil.rmtree(self.work / "backup", ignore_errors=True)
            if self.is_chief and self.final and (self.out / SUMMARY).is_file():
                for aside in replaced_dirs(self.out):
                    shutil.rmtree(aside, ignore_errors=True)
        finally:
            if self.lock is not None:
                self.lock.__exit__(None, None, None)
        return False
