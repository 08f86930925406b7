"""The public Python API: `kdepth.load(...).predict(image)` and `kdepth.evaluate`, as a notebook calls them."""

import io

import numpy as np
from PIL import Image

import kdepth


def _run(tmp_path, tiny_network):
    from kdepth.config import defaults, save_config

    stage = tmp_path / "runs" / "tiny" / "stage1"
    stage.mkdir(parents=True)
    tiny_network(scales=2).save(stage / "model.keras")
    save_config(defaults().replace(model__input_size=[32, 32], model__coarse_hidden=16, train__name="tiny"), stage)
    return stage.parent


def test_load_predicts_metres_at_a_photo_s_own_size(tmp_path, tiny_network):
    model = kdepth.load(_run(tmp_path, tiny_network))
    buffer = io.BytesIO()  # a real JPEG of an odd size, decoded as a notebook would
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(buffer, "JPEG")
    rgb = np.asarray(Image.open(buffer).convert("RGB"))
    depth = model.predict(rgb)
    assert depth.shape == (37, 53) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, 2.0, rtol=1e-5)  # untrained zero heads predict depth_init, 2 m
    batch = model.predict(np.stack([rgb, rgb[::-1]]))
    assert batch.shape == (2, 37, 53)


def test_evaluate_takes_a_model_and_a_data_spec_and_uses_the_run_s_config(tmp_path, tiny_network):
    run = _run(tmp_path, tiny_network)
    result = kdepth.evaluate(kdepth.load(run), "synthetic", limit=3, protocol="full")
    assert result.count == 3 and result.split == "test" and result.input_size == (32, 32)
    assert 0.0 <= result.metrics["delta1"] <= 1.0
    same = kdepth.evaluate(str(run), "synthetic", limit=3, protocol="full")
    assert same.metrics == result.metrics


def test_import_kdepth_does_not_start_tensorflow():
    import subprocess
    import sys

    code = "import sys, kdepth; kdepth.load; kdepth.evaluate; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
