"""Files a training run writes and reads back: atomic saves, pre-flight checks, clear load errors.

Every model, weights and backup file is written to a temporary file in its own directory and
then moved over the old one with `os.replace`, which is atomic on POSIX and Windows: a run killed
during a write leaves the previous complete file (and a stray temporary file that the next save
of the same file removes), never a truncated one. The temporary file is flushed to disk
(`fsync`) before the move, so the same holds after a power cut.

Loading goes through `load_weights` / `explain_load_error`, which turn h5py's and Keras's errors
for a truncated, empty or foreign file into a message that names the file, says which of these
it is and what to do.
"""

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from kdepth.errors import KdepthError
from kdepth.filecheck import explain_load_error

TMP_MARK = ".tmp-"  # temporary files are NAME.tmp-<random>.<suffix>, next to NAME
# Bytes per stored number: float32 weights and optimizer slots.
BYTES_PER_VALUE = 4
# Optimizer slot variables per trained weight: Adam/AdamW keep two moments, SGD one momentum.
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1}


def _suffix(path):
    """'.weights.h5' for a.weights.h5, '.keras' for model.keras: Keras checks these endings."""
    name = Path(path).name
    for suffix in (".weights.h5", ".keras", ".h5", ".json"):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory):
    with contextlib.suppress(OSError):  # not every platform/file system lets a directory be synced
        _fsync(directory)


def remove_stale_temporaries(path):
    """Deletes temporary files a killed writer left next to `path` (NAME.tmp-*)."""
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; on success moves it over `path` atomically.

    The temporary name keeps the file's suffix (Keras insists on `.keras` / `.weights.h5`). If
    the block raises, the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.parent / f"{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}{_suffix(path)}"
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _writing(path):
    """`atomic_path`, with a disk that fills up or turns read-only during the run said plainly."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as e:
        raise KdepthError(
            f"could not write {path}: {e.strerror or e}. The previous version of the file, if any, is "
            "unchanged. Free disk space (or fix the folder), then run the same command again to resume "
            "from the last backup."
        ) from e


def save_weights(model, path):
    """`model.save_weights(path)` atomically (weights and, for a compiled trainer, optimizer)."""
    with _writing(path) as tmp:
        model.save_weights(tmp)
    return Path(path)


def save_model(model, path):
    """`model.save(path)` (a .keras archive) atomically."""
    with _writing(path) as tmp:
        model.save(tmp)
    return Path(path)


def write_text(path, text):
    """Writes a small text file (JSON state, summaries) atomically."""
    with _writing(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def load_weights(model, path, *, what="weights file", fix=None):
    """`model.load_weights(path)` with a clear `KdepthError` for a truncated or foreign file."""
    try:
        model.load_weights(path)
    except Exception as e:  # h5py OSError, Keras ValueError/KeyError for foreign contents
        raise explain_load_error(path, e, what=what, fix=fix) from e


# ------------------------------------------------------------------------------ pre-flight checks


def _format_bytes(n):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000.0
    return f"{n} bytes"  # unreachable


def weights_file_bytes(n_weights, n_trainable, optimizer="adam", sub_optimizers=True):
    """Estimated size of a trainer weights file with its optimizer state (a backup, last/best).

    4 bytes x (every weight + slots x trained weights). Keras stores a MultiOptimizer's slot
    variables twice (under the wrapper and under each sub-optimizer), hence the factor 2 with
    `sub_optimizers` (docs/fault-tolerance.md compares the estimate with a measured file).
    """
    slots = OPTIMIZER_SLOTS.get(optimizer, 2) * (2 if sub_optimizers else 1)
    return BYTES_PER_VALUE * (n_weights + slots * n_trainable)


def check_writable(directory):
    """Creates `directory` if needed and proves it is writable by writing and deleting a probe file.

    Raises:
        KdepthError: naming the directory, the reason and what to do.
    """
    directory = Path(directory)
    fix = "choose a writable place with --set train.run_dir=PATH (or --name), or fix the folder's permissions"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".kdepth-write-probe{TMP_MARK}{uuid.uuid4().hex[:8]}"
        with open(probe, "wb") as f:
            f.write(b"kdepth" * 1024)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, (NotADirectoryError, FileExistsError)):
            reason = f"{reason} (a part of the path is a file, not a folder)"
        raise KdepthError(f"cannot write to the run folder {directory}: {reason}. Nothing was trained; {fix}.") from e


def check_free_space(directory, needed, *, what):
    """Raises a `KdepthError` if the file system of `directory` has less than `needed` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise KdepthError(
            f"not enough free disk space in {directory}: {_format_bytes(free)} free, but this run needs "
            f"about {_format_bytes(needed)} ({what}). Nothing was trained; free some space or put the "
            "run on another disk with --set train.run_dir=PATH."
        )
    return free


def run_space_needed(directory, file_bytes, model_bytes, files):
    """Bytes a stage still needs on disk: the files it keeps, minus those already there, plus one temporary copy.

    Args:
        directory: the stage folder.
        file_bytes: size of one trainer weights file with optimizer state.
        model_bytes: size of model.keras (the network's weights).
        files: names of the trainer weights files kept (backup, last, best).
    """
    directory = Path(directory)
    existing = sum(p.stat().st_size for p in directory.glob("*.weights.h5") if p.is_file())
    existing += sum(p.stat().st_size for p in (directory / "backup").glob("*.weights.h5") if p.is_file())
    model = directory / "model.keras"
    existing += model.stat().st_size if model.is_file() else 0
    total = len(files) * file_bytes + model_bytes
    # Writing any file atomically holds its old and new versions for a moment.
    return max(0, total - existing) + file_bytes
