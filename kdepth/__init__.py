"""kdepth: single-image depth prediction after Li, Klein & Yao, in Keras 3.

The public Python API:

    >>> import kdepth
    >>> model = kdepth.load("runs/quickstart")   # run/stage folder, .keras, SavedModel or .tflite
    >>> depth = model.predict(rgb)               # HxWx3 uint8 -> HxW float32 metres
    >>> print(kdepth.evaluate(model, "synthetic").format())

`kdepth.DepthNetwork` (the Keras network) is imported on first use, so `import kdepth` does not
start TensorFlow.
"""

from kdepth.allocator import prefer_system_allocator

prefer_system_allocator()  # before anything starts TensorFlow: see kdepth.allocator

from kdepth.evaluation import evaluate  # noqa: E402
from kdepth.inference import load_depth_model as load  # noqa: E402

__version__ = "0.1.0"
__all__ = ["DepthNetwork", "evaluate", "load"]


def __getattr__(name):
    if name == "DepthNetwork":
        from kdepth.models import DepthNetwork

        return DepthNetwork
    raise AttributeError(f"module 'kdepth' has no attribute {name!r}")
