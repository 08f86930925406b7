"""What a model path holds: a kdepth run or stage folder, a .keras file, a SavedModel or a .tflite.

Imports neither TensorFlow nor Keras, so a device that only runs `.tflite` files resolves paths
with numpy alone.
"""

import re
from pathlib import Path

from kdepth.errors import KdepthError

MODEL_FILE = "model.keras"  # the network a training stage writes into its folder
CONFIG_FILE = "config.toml"  # the resolved config a stage writes beside it
EXPECTED = (
    "expected a kdepth .keras file, a run folder (runs/NAME or runs/NAME/stageN holding model.keras), "
    "a SavedModel folder (holding saved_model.pb) or a .tflite file"
)


def _highest_stage(folder):
    stages = []
    for child in folder.iterdir():
        m = re.fullmatch(r"stage(\d+)", child.name)
        if m and (child / MODEL_FILE).is_file():
            stages.append((int(m.group(1)), child / MODEL_FILE))
    return max(stages)[1] if stages else None


def resolve_model_path(path):
    """Finds what `path` holds: returns (kind, resolved path), kind "keras", "saved_model" or "tflite".

    A run folder resolves to its highest ``stageN/model.keras``, a stage folder to its
    ``model.keras``, a ``saved_model.pb`` file to its folder.

    Raises:
        KdepthError: nothing there, a folder without a model, or an unsupported file type.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise KdepthError(f"{path}: does not exist; {EXPECTED}.")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model", path
        if (path / MODEL_FILE).is_file():
            return "keras", path / MODEL_FILE
        stage = _highest_stage(path)
        if stage is not None:
            return "keras", stage
        listing = sorted(p.name for p in path.iterdir())[:10]
        raise KdepthError(f"{path}: folder holds no model (it has {listing or 'nothing'}); {EXPECTED}.")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras", path
    if suffix == ".tflite":
        return "tflite", path
    if path.name == "saved_model.pb":
        return "saved_model", path.parent
    raise KdepthError(f"{path}: unsupported model file type {path.suffix or '(no extension)'!r}; {EXPECTED}.")


def run_config_path(model_file):
    """The run's config.toml beside a network file, or None for a bare .keras file."""
    path = Path(model_file).parent / CONFIG_FILE
    return path if path.is_file() else None


def run_config_of(model_path):
    """The config.toml of the kdepth run any model path points into, or None (no run, or not Keras)."""
    kind, resolved = resolve_model_path(model_path)
    return run_config_path(resolved) if kind == "keras" else None
