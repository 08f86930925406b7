"""The architecture as rules on the source: who may import whom, and how long a function may be.

Read from the source with `ast`, so the rules hold for imports inside functions too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kdepth"
SERVING = ("kdepth.inference", "kdepth.evaluation", "kdepth.predict", "kdepth.export")
MAX_FUNCTION_LINES = 80


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name):
    """kdepth modules that module `name` imports anywhere in its source (top level or in functions)."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m not in (name, "kdepth")}


def _reachable(name):
    """Every kdepth module `name` imports, directly or through others (package __init__s included).

    The root package is left out: `from kdepth import flips` runs kdepth/__init__.py, which only
    re-exports the public API; its lazy `DepthNetwork` import runs on first use, not on import.
    """
    seen, todo = set(), [name]
    while todo:
        for module in _imports(todo.pop()):
            parents = [".".join(module.split(".")[:i]) for i in range(2, module.count(".") + 1)]
            for m in [module, *parents]:
                if m in MODULES and m not in seen:
                    seen.add(m)
                    todo.append(m)
    return seen


@pytest.mark.parametrize("module", SERVING)
def test_serving_never_imports_training(module):
    bad = sorted(m for m in _reachable(module) if m == "kdepth.training" or m.startswith("kdepth.training."))
    assert not bad, f"{module} imports {bad} (directly or through other modules); serving must not depend on training"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("kdepth.data")))
def test_data_never_imports_models(module):
    bad = sorted(m for m in _reachable(module) if m == "kdepth.models" or m.startswith("kdepth.models."))
    assert not bad, f"{module} imports {bad}; kdepth.data must not depend on kdepth.models"


def test_nothing_but_the_entry_point_imports_the_cli():
    importers = sorted(m for m in MODULES if m != "kdepth.cli" and "kdepth.cli" in _imports(m))
    assert importers == [], f"{importers} import kdepth.cli; only the `kdepth` entry point (pyproject.toml) may"
    assert 'kdepth = "kdepth.cli:entry"' in (PACKAGE.parent / "pyproject.toml").read_text()


def test_the_rules_see_lazy_imports():
    # kdepth.evaluation imports kdepth.inference at the top and kdepth.config inside a function.
    assert {"kdepth.inference", "kdepth.config"} <= _imports("kdepth.evaluation")


def _long_functions():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    yield f"{name}.{node.name} ({path.name}:{node.lineno}, {lines} lines)"


def test_no_function_is_longer_than_80_lines():
    assert list(_long_functions()) == [], f"split these into named steps: {list(_long_functions())}"
