"""The quiet CLI: no TensorFlow/CUDA start-up lines on stderr, everything else kept, an opt-out."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kdepth import quiet

# What TensorFlow 2.21 and CUDA print at start-up on a machine without a GPU (and what other
# builds print), written independently of kdepth.quiet's own patterns.
START_UP_NOISE = [
    "cuInit",
    "absl::InitializeLog",
    "oneDNN custom operations",
    "cudart_stub",
    "Could not find cuda drivers",
    "Unable to register cuDNN",
    "Unable to register cuFFT",
    "Unable to register cuBLAS",
    "computation placer already registered",
    "TF-TRT",
    "cpu_feature_guard",
    "Created TensorFlow Lite XNNPACK delegate",
]

NOISY_STDERR = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796145073.909732    4417 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.
I0000 00:00:1796145073.910127    4417 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1796145076.466679    4417 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered
W0000 00:00:1758131045.228 3722035 computation_placer.cc:177] computation placer already registered. Please check linkage and avoid linking the same target more than once.
2025-09-17 14:44:05.157831: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could not find TensorRT
/site-packages/foo.py:3: DeprecationWarning: a warning the user needs
E0000 00:00:1758131045.3 3722035 some_op.cc:12] a real error
"""


def _noise_in(text):
    return [p for p in START_UP_NOISE if p in text]


def test_filter_drops_the_start_up_lines_and_keeps_the_rest():
    kept = quiet.filter_lines(NOISY_STDERR, quiet.noise_pattern(nvidia=False))
    assert kept == (
        "/site-packages/foo.py:3: DeprecationWarning: a warning the user needs\n"
        "E0000 00:00:1758131045.3 3722035 some_op.cc:12] a real error\n"
    )


def test_with_an_nvidia_device_the_cuda_lines_stay():
    kept = quiet.filter_lines(NOISY_STDERR, quiet.noise_pattern(nvidia=True))
    assert "failed call to cuInit" in kept
    assert "Could not find cuda drivers" in kept
    assert "oneDNN" not in kept and "absl::InitializeLog" not in kept
    assert "a real error" in kept


def test_filtered_stderr_writes_back_what_is_not_noise(capfd):
    with pytest.raises(RuntimeError), quiet.filtered_stderr(quiet.noise_pattern(nvidia=False)):
        os.write(2, NOISY_STDERR.encode())
        raise RuntimeError("the block fails")  # what was captured is still written back
    err = capfd.readouterr().err
    assert _noise_in(err) == []
    assert "a real error" in err and "DeprecationWarning: a warning the user needs" in err


def test_a_python_warning_inside_the_window_reaches_stderr():
    code = (
        "import warnings; from kdepth import quiet\n"
        "with quiet.filtered_stderr(quiet.noise_pattern(nvidia=False)):\n"
        "    warnings.warn('a warning the user needs')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    assert "UserWarning: a warning the user needs" in done.stderr


def test_configure_environment_leaves_a_users_level_and_the_opt_out_alone(monkeypatch):
    monkeypatch.delenv(quiet.OPT_OUT_ENV, raising=False)
    monkeypatch.setenv(quiet.LOG_LEVEL_ENV, "0")
    quiet.configure_environment()
    assert os.environ[quiet.LOG_LEVEL_ENV] == "0"
    monkeypatch.delenv(quiet.LOG_LEVEL_ENV)
    monkeypatch.setenv(quiet.OPT_OUT_ENV, "1")
    quiet.configure_environment()
    assert quiet.LOG_LEVEL_ENV not in os.environ
    for value, wanted in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(quiet.OPT_OUT_ENV, value)
        assert quiet.tf_log_wanted() is wanted


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in (quiet.LOG_LEVEL_ENV, quiet.OPT_OUT_ENV)}
    return {**env, **extra}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import keras

    from kdepth.models import DepthNetwork

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("quiet")
    DepthNetwork(input_size=(32, 32), scales=2, coarse_hidden=16).save(folder / "tiny.keras")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "room.png")
    return folder


def _predict(folder, *flags, **env):
    command = [sys.executable, "-m", "kdepth.cli", *flags, "predict", "--model", str(folder / "tiny.keras"),
               str(folder / "room.png"), "--out", str(folder / "pred")]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env(**env))


@pytest.mark.skipif(quiet.has_nvidia_device(), reason="the CUDA lines are kept on a machine with an NVIDIA device")
def test_predict_prints_no_tensorflow_start_up_line(tiny_model):
    done = _predict(tiny_model)
    assert done.returncode == 0, done.stderr
    assert "predicted 1 image(s)" in done.stdout
    assert _noise_in(done.stderr) == [], done.stderr
    assert done.stderr.strip() == ""


def test_opt_out_brings_tensorflows_own_logging_back():
    code = "from kdepth import quiet; quiet.start_tensorflow(); import tensorflow as tf; tf.config.list_physical_devices()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_env(KDEPTH_TF_LOG="1"))
    assert done.returncode == 0, done.stderr
    # TensorFlow's start-up lines are there again (which ones depends on the machine).
    assert re.search(r"absl::InitializeLog|oneDNN|cuda|cpu_feature_guard", done.stderr), done.stderr


@pytest.mark.slow
def test_tf_log_flag_brings_tensorflows_own_logging_back(tiny_model):
    done = _predict(tiny_model, "--tf-log")
    assert done.returncode == 0, done.stderr
    assert re.search(r"absl::InitializeLog|oneDNN|cuda|cpu_feature_guard", done.stderr), done.stderr
