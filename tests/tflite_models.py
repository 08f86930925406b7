"""Tiny .tflite depth models made in the tests (and by .ci/run for the device check).

Every model maps an image to depth = 1 + 3 * mean(RGB in 0-1) metres on a half-size grid, so a
model fed the right pixel range gives the same depth whatever its input convention:

- ``float``: float32 input in 0-255 (kdepth's convention);
- ``uint8_01``: uint8 input quantized with scale 1/255, zero point 0 (its float input is 0-1);
- ``uint8_255``: uint8 input quantized with scale 1, zero point 0 (its float input is 0-255).

Run as a script, `python tests/tflite_models.py OUT_DIR` writes the three files there.
"""

import sys
from pathlib import Path

import numpy as np

SIZE = (16, 24)


def expected_depth(rgb):
    """The depth every model computes for raw RGB 0-255 images (N, H, W, 3), at half size."""
    x = np.asarray(rgb, np.float32).mean(axis=-1) / 255.0
    n, h, w = x.shape
    pooled = x.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return 1.0 + 3.0 * pooled


def _keras_model(divide_by):
    import keras

    image = keras.Input((*SIZE, 3), batch_size=1, name="image")
    x = keras.layers.Rescaling(1.0 / divide_by)(image)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(1.0), bias_initializer="ones")(x)
    return keras.Model(image, x)


def _convert(model, quantized, high):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantized:
        rng = np.random.default_rng(0)

        def representative():
            yield [np.zeros((1, *SIZE, 3), np.float32)]
            yield [np.full((1, *SIZE, 3), high, np.float32)]
            for _ in range(8):
                yield [rng.uniform(0, high, (1, *SIZE, 3)).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter.convert()


def write_models(out_dir):
    """Writes float.tflite, uint8_01.tflite and uint8_255.tflite into `out_dir`; returns {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # depth = 1 + sum over channels of (x / divide_by) after 2x2 mean = 1 + 3 * mean(x / divide_by)
    specs = {"float": (255.0, False, 255.0), "uint8_01": (1.0, True, 1.0), "uint8_255": (255.0, True, 255.0)}
    paths = {}
    for name, (divide_by, quantized, high) in specs.items():
        path = out_dir / f"{name}.tflite"
        path.write_bytes(_convert(_keras_model(divide_by), quantized, high))
        paths[name] = path
    return paths


if __name__ == "__main__":
    for name, path in write_models(sys.argv[1]).items():
        print(name, path)
