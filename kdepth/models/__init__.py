"""The depth network, its backbones and layers, and the one loader for trained networks."""

from kdepth.models.backbones import BACKBONES, load_backbone_weights
from kdepth.models.depth_network import (
    GROUPS,
    SCALE_NAMES,
    DepthNetwork,
    check_network_size,
    dtype_policy,
    estimate_size,
    scale_sizes,
    serving_graph,
)
from kdepth.models.loader import (
    find_network_file,
    float32_copy,
    load,
    load_keras_file,
    load_network_file,
    transfer_weights,
)

__all__ = [
    "BACKBONES",
    "GROUPS",
    "SCALE_NAMES",
    "DepthNetwork",
    "check_network_size",
    "dtype_policy",
    "estimate_size",
    "find_network_file",
    "float32_copy",
    "load",
    "load_backbone_weights",
    "load_keras_file",
    "load_network_file",
    "scale_sizes",
    "serving_graph",
    "transfer_weights",
]
