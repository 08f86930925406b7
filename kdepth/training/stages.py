"""The training stages and the one trainer set-up that `fit` and the benchmarks share.

Stages (the poster's schedule, without its decay bug):
    1: scales 1 and 2 train; scale 3 is not built.
    2: scale 3 trains; scales 1 and 2 are frozen and start from stage 1.
    3: everything trains at `finetune_lr_scale` times the rates, starting from stage 2.
"""

import dataclasses

import keras
import numpy as np

from kdepth.allocator import return_freed_memory
from kdepth.errors import ConfigError, KdepthError
from kdepth.models import (
    GROUPS,
    DepthNetwork,
    load_backbone_weights,
    load_keras_file,
    transfer_weights,
)
from kdepth.training.optimizers import InPlaceAdam
from kdepth.training.trainer import DepthTrainer

# Which parameter groups train in each stage.
STAGE_TRAINABLE = {
    1: {"backbone", "coarse", "skip", "scale2"},
    2: {"scale3"},
    3: set(GROUPS),
}


def scales_for_stage(config, stage):
    """Scales to build: stage 1 never builds scale 3 (it would not train and costs time)."""
    if stage >= 2 and config.model.scales < 3:
        raise KdepthError(
            f"stage {stage} trains scale 3 but model.scales={config.model.scales}; "
            "set --set model.scales=3 or train only --stage 1."
        )
    return min(config.model.scales, 2) if stage == 1 else config.model.scales


def network_from_config(config, scales):
    """A `DepthNetwork` with random weights, as the config's [model] section describes it."""
    m = config.model
    return DepthNetwork(
        input_size=tuple(m.input_size), scales=scales, skips=m.skips, backbone=m.backbone, output=m.output,
        coarse_hidden=m.coarse_hidden, dropout=m.dropout, conv_init=m.conv_init, depth_init=m.depth_init,
        coarse=m.coarse, separable=m.separable, backbone_alpha=m.backbone_alpha, width=m.width,
        kernel_size=m.kernel_size, skip_norm=m.skip_norm, bn_momentum=m.bn_momentum,
        head_kernel_size=m.head_kernel_size,
    )


def apply_stage(network, stage):
    """Sets `trainable` per parameter group for a stage; returns {group: (trainable, params)}."""
    summary = {}
    for group, layers in network.layer_groups().items():
        trainable = group in STAGE_TRAINABLE[stage]
        for layer in layers:
            layer.trainable = trainable
        params = sum(int(np.prod(w.shape)) for layer in layers for w in layer.weights)
        summary[group] = (trainable, params)
    return summary


def _group_optimizer(t, rate):
    kwargs = dict(learning_rate=rate, clipnorm=t.clipnorm or None)
    if t.optimizer == "sgd":
        opt = keras.optimizers.SGD(momentum=0.9, weight_decay=t.weight_decay or None, **kwargs)
    else:  # AdamW is Adam with decoupled weight decay, which InPlaceAdam does
        opt = InPlaceAdam(weight_decay=t.weight_decay or None, **kwargs)
    if t.weight_decay:
        opt.exclude_from_weight_decay(var_names=["bias"])
    return opt


def build_optimizer(config, network, stage):
    """One optimizer per parameter group (the poster's per-layer rates) in a MultiOptimizer.

    Returns:
        (optimizer, {group: sub-optimizer}, {group: base learning rate}) for the groups that train.
    """
    t = config.train
    scale = t.finetune_lr_scale if stage == 3 else 1.0
    rates = {g: getattr(t, f"lr_{g}") * scale for g in GROUPS}
    group_of = {}
    for group, layers in network.layer_groups().items():
        for layer in layers:
            for w in layer.trainable_weights:
                group_of[id(w)] = group
    active = sorted({g for g in group_of.values()})
    optimizers = {g: _group_optimizer(t, rates[g]) for g in active}
    multi = keras.optimizers.MultiOptimizer(lambda v: optimizers[group_of[id(v)]])
    if t.precision == "mixed_float16":
        multi = keras.optimizers.LossScaleOptimizer(multi)
    return multi, optimizers, {g: rates[g] for g in active}


@dataclasses.dataclass
class TrainerParts:
    """What `build_trainer` made: the compiled trainer, its network and the optimizer pieces."""

    trainer: DepthTrainer
    network: DepthNetwork
    groups: dict  # {group: (trainable, params)}
    sub_optimizers: dict  # {group: optimizer}, for the learning-rate schedule
    rates: dict  # {group: base learning rate}
    load_message: str


def _initial_weights(config, network, init, init_path):
    """Loads the stage's starting weights into `network`; returns the sentence saying which."""
    if init is None:
        return load_backbone_weights(network, config.model.backbone_weights)
    copied, total = transfer_weights(init, network)
    if copied == 0:
        names = [layer.name for layer in init.layers if layer.weights][:5]
        raise KdepthError(
            f"{init_path}: none of its layers {names} matches a layer of the kdepth network by name, so no weight "
            "would be loaded; it is not a kdepth model. Pass a model.keras written by `kdepth fit` (or its stage folder)."
        )
    return f"loaded {copied} of {total} weighted layers from {init_path} (matched by layer name)"


def recompute_layers(config, network):
    """The layers `train.recompute` names: ["auto"] is the network's own `recompute_layers`."""
    names = tuple(config.train.recompute)
    if "auto" not in names:
        return names
    if names != ("auto",):
        raise ConfigError(f"train.recompute={list(names)}: \"auto\" stands alone; give [\"auto\"], [] (none) or layer names.")
    return network.recompute_layers


def _make_trainer(config, network):
    loss = config.loss
    return DepthTrainer(
        network,
        flip_group=config.data.flip_group,
        mse_weights={"scale1": loss.mse_scale1, "scale2": loss.mse_scale2, "scale3": loss.mse_scale3},
        space=loss.space,
        mse_root=loss.mse_root,
        set_weight=loss.set_weight,
        silog_weight=loss.silog_weight,
        silog_lambda=loss.silog_lambda,
        grad_weight=loss.grad_weight,
        on_nan=config.train.on_nan,
        recompute=recompute_layers(config, network),
    )


def build_trainer(config, stage, *, init_path=None, jit_compile=None):
    """Builds and compiles the trainer for a stage: the one set-up `fit` and the benchmarks share.

    Builds the network for the stage's scales, loads `init_path` (matched by layer name) or the
    configured backbone weights, freezes per `STAGE_TRAINABLE`, wraps it in a `DepthTrainer` with
    the config's losses and compiles it with the per-group optimizer. With `train.release_memory`
    it first sets the C allocator to give freed tensors back to the system (`kdepth.allocator`).
    Call it inside the dtype policy (`kdepth.models.dtype_policy`) and, when distributing, inside
    the strategy's scope.

    Args:
        config: a resolved config.
        stage: 1, 2 or 3.
        init_path: a .keras file to start from, or None for the backbone weights.
        jit_compile: overrides config.train.jit_compile.

    Returns:
        A `TrainerParts`.
    """
    t = config.train
    if t.release_memory:  # before the build, whose initialiser temporaries are freed at once
        return_freed_memory()
    init = load_keras_file(init_path) if init_path is not None else None  # a bad file fails before the build
    network = network_from_config(config, scales_for_stage(config, stage))
    message = _initial_weights(config, network, init, init_path)
    groups = apply_stage(network, stage)
    trainer = _make_trainer(config, network)
    optimizer, sub_optimizers, rates = build_optimizer(config, network, stage)
    trainer.compile(
        optimizer=optimizer,
        steps_per_execution=t.steps_per_execution,
        jit_compile=t.jit_compile if jit_compile is None else jit_compile,
    )
    return TrainerParts(trainer, network, groups, sub_optimizers, rates, message)
