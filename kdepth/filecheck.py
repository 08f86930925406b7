"""What is wrong with a model or weights file that failed to load, said in one sentence.

Shared by training (backups, checkpoints) and serving (loading a network to evaluate, predict or
export): h5py's and Keras's errors for a truncated, empty or foreign file become a `KdepthError`
that names the file, says which of these it is and what to do.
"""

import zipfile
from pathlib import Path

import h5py

from kdepth.errors import KdepthError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


def _head(path, n=8):
    with open(path, "rb") as f:
        return f.read(n)


def diagnose_file(path):
    """Says what is wrong with a model or weights file that failed to load, or None if nothing is found.

    Checks the file's signature and structure, not its meaning: "empty", "truncated" (the
    format's own header says the file should be longer, or a zip archive without its end), "not
    an HDF5 file" / "not a .keras archive" (another kind of file under a model's name).
    """
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): it was truncated, e.g. by a crash or a full disk while it was written"
    head = _head(path)
    if path.name.endswith(".keras"):
        if not head.startswith(ZIP_SIGNATURE):
            return "is not a .keras model archive (it does not start like a zip file): it was made by another program or renamed"
        if not zipfile.is_zipfile(path):
            return f"is truncated or damaged: a zip archive that ends early ({size:,} bytes, no end record)"
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
        if "config.json" not in names:
            return "is a zip archive but not a Keras model (it has no config.json)"
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"is damaged: its archive cannot be read ({e})"
        if bad is not None:
            return f"is damaged: the member {bad!r} of the archive fails its checksum"
        return None
    if path.name.endswith(".h5"):
        if not head.startswith(HDF5_SIGNATURE):
            return "is not an HDF5 weights file (it does not start with the HDF5 signature): it was made by another program or renamed"
        try:
            with h5py.File(path, "r"):
                pass
        except OSError as e:
            if "truncated" in str(e):
                return f"is truncated ({size:,} bytes; the HDF5 header says it should be longer): it was cut off while written"
            return f"is damaged: HDF5 cannot open it ({e})"
        return None
    return None


def explain_load_error(path, error, *, what="model file", fix=None):
    """A `KdepthError` for a file Keras could not load, naming the file and what is wrong with it.

    Args:
        path: the file.
        error: the exception Keras or h5py raised.
        what: what the file is, for the message ("kdepth model", "backup weights", ...).
        fix: what the user should do; a default is chosen from the diagnosis.
    """
    diagnosis = diagnose_file(path)
    if diagnosis is None:
        # A well-formed file Keras still rejects: another model's weights or layers.
        diagnosis = (
            "is a well-formed file but does not hold a model matching this one (another program, "
            f"another kdepth version, or different model settings): {type(error).__name__}: {_first_line(error)}"
        )
    fix = fix or "use the file a kdepth run wrote (model.keras in a stage folder), or train it again"
    return KdepthError(f"{path}: cannot be loaded as a {what}; it {diagnosis}. {fix[0].upper() + fix[1:]}.")


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""
