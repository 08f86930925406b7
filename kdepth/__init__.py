"""kdepth: single-image depth prediction after Li, Klein & Yao, in Keras 3."""

__version__ = "0.1.0"
