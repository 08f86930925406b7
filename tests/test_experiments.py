"""The experiment arms under configs/experiments/ and the runner's table, without training."""

import importlib.util
from pathlib import Path

import pytest

from kdepth.config import load_config

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("experiments", REPO / "benchmarks" / "experiments.py")
experiments = importlib.util.module_from_spec(spec)
spec.loader.exec_module(experiments)


def _settings(path):
    data = load_config([path]).to_dict()
    data["train"].pop("name")
    return {f"{s}.{k}": v for s, keys in data.items() for k, v in keys.items()}


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_arms_differ_from_a_reference_arm_in_one_setting(name):
    arms = {arm: _settings(path) for arm, path in experiments.arms(name).items()}
    assert len(arms) >= 2

    def differences(a, b):
        return sorted(k for k in arms[a] if arms[a][k] != arms[b][k])

    references = [ref for ref in arms if all(len(differences(ref, arm)) == 1 for arm in arms if arm != ref)]
    assert references, {(a, b): differences(a, b) for a in arms for b in arms if a < b}


def test_arm_runs_have_their_own_names_except_shared_stages():
    for name in experiments.EXPERIMENTS:
        configs = [load_config([p]) for p in experiments.arms(name).values()]
        names = [c.train.name for c in configs]
        shared = len(names) != len(set(names))
        # Arms may share a run only to share stages: then they differ in train.stage alone.
        assert not shared or len({c.train.stage for c in configs}) == len(configs), name


def _stage(val, train, steps, rows):
    epochs = [{"step": s, "val_delta1": v, "delta1": v - 0.01, "pred_zero_frac": 0.0} for s, v in zip(steps, rows, strict=True)]
    return {"stage": 1, "epochs": epochs, "summary": {"train": {"delta1": train}, "val": {"delta1": val}, "seconds": 60.0}}


def test_steps_to_and_the_table():
    curve = [{"step": 10, "val_delta1": 0.4}, {"step": 20, "val_delta1": 0.52}, {"step": 30, "val_delta1": 0.51}]
    assert experiments.steps_to(curve, 0.5) == 20
    assert experiments.steps_to(curve, 0.6) is None
    results = {"relu": {0: [_stage(0.45, 0.50, [10, 20], [0.4, 0.45])], 1: [_stage(0.55, 0.60, [10, 20], [0.5, 0.55])]}}
    lines = experiments.table("collapse", results).splitlines()
    assert lines[0].startswith("| arm | seed | train delta1 | val delta1 | gap (train - val) | steps to val delta1 0.5")
    assert lines[2] == "| relu | 0 | 0.500 | 0.450 | 0.050 | not reached | 0.000 | 1.0 min |"
    assert lines[3] == "| relu | 1 | 0.600 | 0.550 | 0.050 | 10 | 0.000 | 1.0 min |"
    assert lines[4] == "| **relu** | mean | 0.550 | 0.500 | 0.050 | 1 of 2 seeds reached | 0.000 | 1.0 min |"
