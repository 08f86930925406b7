"""Data sets are complete or refused: a killed `kdepth data synth`, finishing it, refusing others."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kdepth.cli import main
from kdepth.config import load_config
from kdepth.data import plan
from kdepth.data.check import check_source
from kdepth.data.sources import FolderSource, SyntheticSource, open_source
from kdepth.data.writer import write_atomically, write_pair
from kdepth.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _kdepth(*args, timeout=120):
    """Runs the real `kdepth` command in a child process (this checkout's package)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "kdepth.cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _pairs_in_place(root, split):
    names = [set(p.name for p in (root / split / kind).glob("[!.]*.png")) for kind in ("rgb", "depth")]
    return names[0] & names[1]


def _start_and_kill(out, args, min_files=60, timeout=60, sig=signal.SIGKILL):
    """Starts `kdepth data synth`, sends it `sig` once `min_files` training RGB files exist and
    returns (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: give the child the default disposition, as a
    # terminal would, or a suite run in the background sees a synth that ignores Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "kdepth.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rgb_dir, deadline = out / "train" / "rgb", time.monotonic() + timeout
    try:
        while not (rgb_dir.is_dir() and len(os.listdir(rgb_dir)) >= min_files):
            assert proc.poll() is None, f"synth ended (code {proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "synth wrote too few files in time"
            time.sleep(0.02)
        assert proc.poll() is None, "synth finished before it could be killed: raise --count"
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return proc.returncode, stderr


def test_killed_synth_is_refused_everywhere_and_the_same_command_finishes_it(tmp_path):
    out = tmp_path / "d2"
    count, eval_count, total = 800, 20, 840
    args = ["data", "synth", "--out", str(out), "--count", str(count), "--eval-count", str(eval_count), "--size", "32x40"]
    assert _start_and_kill(out, args)[0] == -signal.SIGKILL

    # Every file under a sample's name is whole: files are renamed into place once written.
    for path in out.glob("*/*/[!.]*.png"):
        with Image.open(path) as image:
            image.load()
    done = len(_pairs_in_place(out, "train"))
    assert 0 < done < count and not (out / "val").exists()

    # `data check` and opening the folder as a source both refuse it with the counts and the command.
    expected = (
        f"is an incomplete data set: `kdepth data synth` stopped after writing {done} of {total} samples "
        f"(train {done}/{count}, val 0/{eval_count}, test 0/{eval_count}). Finish it (only the missing samples are "
        f"rendered) with:  kdepth data synth --out {out} --count {count} --eval-count {eval_count} --size 32x40 --seed 0"
    )
    check = _kdepth("data", "check", str(out))
    assert check.returncode == 1 and expected in check.stderr, check.stderr
    assert "OK" not in check.stdout
    config = load_config([], ["data.source=folder", f'data.root="{out}"'])
    with pytest.raises(DataError, match="is an incomplete data set") as info:
        open_source(config.data, [32, 40])
    assert expected in str(info.value)

    # The same command finishes it, rendering only what is missing.
    finish = _kdepth(*args)
    assert finish.returncode == 0, finish.stderr
    assert f"finishing {out}: {done} of {total} samples are in place; writing the other {total - done}" in finish.stdout
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind
    assert plan.read_plan(out)["complete"] is True and (out / "config.toml").is_file()
    again = _kdepth("data", "check", str(out))
    assert again.returncode == 0 and again.stdout.rstrip().endswith("OK"), again.stdout + again.stderr
    report = check_source(FolderSource(out))
    assert report.ok and {s: (st.listed, st.loaded) for s, st in report.stats.items()} == {
        "train": (count, count), "val": (eval_count, eval_count), "test": (eval_count, eval_count)
    }

    # Bytes equal an uninterrupted run: the first samples, and those around the kill.
    fresh = tmp_path / "fresh"
    assert CliRunner().invoke(main, ["data", "synth", "--out", str(fresh), "--count", "3", "--eval-count", "2", "--size", "32x40"]).exit_code == 0
    around = tmp_path / "around"
    source = SyntheticSource({"train": count}, (32, 40))
    for i in (done - 1, done, done + 1):
        write_pair(around, "train", f"{i:05d}", *source.load("train", i))
    pairs = [(fresh, s, f"{i:05d}") for s, n in (("train", 3), ("val", 2), ("test", 2)) for i in range(n)]
    pairs += [(around, "train", f"{i:05d}") for i in (done - 1, done, done + 1)]
    for root, split, stem in pairs:
        for kind in ("rgb", "depth"):
            assert (out / split / kind / f"{stem}.png").read_bytes() == (root / split / kind / f"{stem}.png").read_bytes(), (split, kind, stem)


def test_ctrl_c_says_the_folder_is_incomplete_and_how_to_finish_it(tmp_path):
    out = tmp_path / "d"
    # A count far beyond what is written before the signal: with 1500 a loaded machine let synth
    # finish between the test's last poll and the signal (exit code 0).
    args = ["data", "synth", "--out", str(out), "--count", "50000", "--eval-count", "1", "--size", "32x40"]
    code, stderr = _start_and_kill(out, args, min_files=20, sig=signal.SIGINT)
    assert code == 130, stderr
    assert f"interrupted: {out} is incomplete. Finish it with:\n  kdepth data synth --out {out} --count 50000 --eval-count 1 --size 32x40 --seed 0" in stderr
    assert not [p for p in out.rglob(".*")]  # the file being written when interrupted is gone
    with pytest.raises(DataError, match="is an incomplete data set"):
        FolderSource(out)


@pytest.fixture
def unfinished(tmp_path):
    """A 16x16 synth folder (4 + 1 + 1 samples) put back into the state a kill leaves: plan not
    complete, one depth file missing, a temporary file lying around."""
    out = tmp_path / "d"
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--count", "4", "--eval-count", "1", "--size", "16x16"])
    assert result.exit_code == 0, result.output
    written = plan.read_plan(out)
    plan.write_plan(out, written["settings"], written["args"], complete=False)
    (out / "train" / "depth" / "00002.png").unlink()
    (out / "train" / "rgb" / ".00003.png.tmp").write_bytes(b"\x89PNG half")
    return out


def test_another_command_on_an_unfinished_folder_is_refused_naming_the_difference(unfinished):
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(unfinished), "--count", "5", "--size", "16x20",
                                       "--set", "data.synthetic_holes=false"])
    assert result.exit_code == 1
    assert "holds an unfinished `kdepth data synth` run with other settings (--size: 16x16 there, 16x20 now; " \
        "--count: 4 there, 5 now; data.synthetic_holes: true there, false now)" in result.output
    assert f"Finish it with its own command:  kdepth data synth --out {unfinished} --count 4 --eval-count 1 --size 16x16 --seed 0" in result.output
    assert plan.read_plan(unfinished)["settings"]["train"] == 4  # the plan is left alone


def test_the_same_command_finishes_an_unfinished_folder_then_refuses_it(unfinished):
    with pytest.raises(DataError, match=r"stopped after writing 5 of 6 samples \(train 3/4, val 1/1, test 1/1\)"):
        FolderSource(unfinished)
    args = ["data", "synth", "--out", str(unfinished), "--count", "4", "--size", "16x16"]  # --eval-count 1 is the default here
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"finishing {unfinished}: 5 of 6 samples are in place; writing the other 1" in result.output
    assert not (unfinished / "train" / "rgb" / ".00003.png.tmp").exists()
    depth = np.asarray(Image.open(unfinished / "train" / "depth" / "00002.png"))
    assert depth.dtype == np.uint16 and depth.shape == (16, 16)
    assert check_source(FolderSource(unfinished)).ok
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "output folder is not empty: it holds a complete data set" in again.output


def test_a_folder_with_only_a_stale_temporary_plan_starts_afresh(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / f".{plan.PLAN_FILE}.tmp").write_text("{")  # killed while writing the plan
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(out), "--count", "2", "--eval-count", "1", "--size", "16x16"])
    assert result.exit_code == 0, result.output
    assert check_source(FolderSource(out)).ok


def test_hand_made_folders_without_a_plan_are_read_as_before(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split / "rgb").mkdir(parents=True)
        (tmp_path / split / "depth").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / "rgb" / "a.png")
        Image.fromarray(np.full((8, 8), 1500, np.uint16)).save(tmp_path / split / "depth" / "a.png")
    source = FolderSource(tmp_path)
    assert source.splits() == ["train", "val"] and source.num_samples("train") == 1
    assert source.load("val", 0)[1].max() == pytest.approx(1.5)


def test_an_unreadable_plan_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "train" / "rgb").mkdir(parents=True)
    (tmp_path / plan.PLAN_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match=rf"{plan.PLAN_FILE}: is not a readable `kdepth data synth` plan .*delete just {plan.PLAN_FILE}"):
        FolderSource(tmp_path)


def test_write_atomically_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def fails_half_way(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fails_half_way)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    write_atomically(target, lambda tmp: tmp.write_bytes(b"new"), sync=True)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
