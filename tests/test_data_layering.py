"""kdepth.data stands below the models: it never imports kdepth.models, not even lazily."""

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kdepth"


def _module_file(name):
    """The source file of kdepth module `name`, or None for a name that is not a kdepth module."""
    parts = name.split(".")
    if parts[0] != "kdepth":
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _kdepth_imports(path):
    """Every kdepth module an import statement anywhere in `path` names (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from kdepth import models
    return {n for n in names if n.split(".")[0] == "kdepth" and _module_file(n) is not None}


def _reachable_from(start_files):
    """{module: the module that imports it} for every kdepth module the files reach, transitively."""
    seen, todo = {}, [(p, str(p.relative_to(REPO))) for p in start_files]
    while todo:
        path, importer = todo.pop()
        for name in _kdepth_imports(path):
            if name not in seen:
                seen[name] = importer
                todo.append((_module_file(name), name))
    return seen


def test_no_data_module_reaches_kdepth_models_through_any_import():
    reached = _reachable_from(sorted((PACKAGE / "data").glob("*.py")))
    assert "kdepth.data.synthetic" in reached  # the walk sees lazy imports inside functions
    offending = {name: by for name, by in reached.items() if name == "kdepth.models" or name.startswith("kdepth.models.")}
    assert not offending, f"kdepth/data imports the models: {offending}"


def test_using_the_data_package_loads_no_model_module():
    code = (
        "import sys\n"
        "from kdepth.config import load_config\n"
        "from kdepth.data.check import check_source\n"
        "from kdepth.data.pipeline import dataset_from_config\n"
        "from kdepth.data.sources import open_source\n"
        "import kdepth.data.plan, kdepth.data.writer\n"
        "config = load_config([], ['data.synthetic_train=2', 'data.synthetic_val=1', 'data.synthetic_test=1',"
        " 'data.synthetic_size=[32, 32]', 'model.input_size=[32, 32]', 'train.batch_size=1'])\n"
        "ds, source = dataset_from_config(config, 'train', training=True)\n"
        "next(iter(ds))\n"
        "assert check_source(source).ok\n"
        "print(sorted(m for m in sys.modules if m.startswith('kdepth.models')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
