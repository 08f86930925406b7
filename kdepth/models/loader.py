"""One loader for trained networks, and weight transfer by layer name.

`load(path)` takes a run folder, a stage folder or a `.keras` file and returns the
`DepthNetwork` with its run's config; `evaluate`, `predict`, `export` and `fit --init` all use
it. A foreign, truncated or empty file stops with a `KdepthError` that names the file and says
what is wrong.
"""

import keras

from kdepth.errors import KdepthError
from kdepth.filecheck import explain_load_error
from kdepth.models.depth_network import DepthNetwork
from kdepth.models.layers import DepthActivation
from kdepth.paths import resolve_model_path, run_config_path


def _not_a_kdepth_network(path, model):
    try:
        outputs, inputs = model.output, model.inputs
    except (AttributeError, ValueError):  # e.g. a Sequential saved without being called
        outputs, inputs = None, []
    if isinstance(outputs, dict):
        got = sorted(outputs)
    else:
        got = f"{len(model.outputs)} unnamed output(s)" if outputs is not None else "no defined outputs"
    return KdepthError(
        f"{path}: is a Keras model but not a kdepth network (inputs: {len(inputs)}, outputs: {got}); "
        "expected one input 'image' and outputs 'scale1'/'scale2'/'scale3', as `kdepth fit` writes them. "
        "Evaluate other models as a SavedModel folder or a .tflite file."
    )


def _legacy_settings(model):
    """DepthNetwork arguments of a network saved as a plain functional model (kdepth 0.1), or None."""
    names = {layer.name for layer in model.layers}
    if not {"image", "scale1", "scale1_dense1", "scale1_dropout1"} <= names:
        return None
    head = model.get_layer("scale1")
    if not isinstance(head, DepthActivation):
        return None
    shape = model.get_layer("image").output.shape
    init = model.get_layer("scale2_conv1").get_config()["kernel_initializer"] if "scale2_conv1" in names else "he_normal"
    return dict(
        input_size=(int(shape[1]), int(shape[2])),
        scales=max(int(n[-1]) for n in ("scale1", "scale2", "scale3") if n in names),
        skips="skip1_1_conv" in names,
        output=head.mode,
        coarse_hidden=int(model.get_layer("scale1_dense1").units),
        dropout=float(model.get_layer("scale1_dropout1").rate),
        conv_init=keras.initializers.get(init).__class__.__name__ if isinstance(init, dict) else init,
        depth_init=head.depth_init,
    )


def _from_legacy(path, model):
    settings = _legacy_settings(model)
    if settings is None:
        raise _not_a_kdepth_network(path, model)
    if settings["conv_init"] not in ("he_normal", "glorot_uniform"):
        settings["conv_init"] = {"HeNormal": "he_normal", "GlorotUniform": "glorot_uniform"}.get(settings["conv_init"], "he_normal")
    network = DepthNetwork(**settings)
    copied, total = transfer_weights(model, network)
    if copied != total:
        raise _not_a_kdepth_network(path, model)
    return network


def load_keras_file(path):
    """Loads any Keras model file (for weights matched by layer name, e.g. `fit --init`).

    Raises:
        KdepthError: the file is missing, empty, truncated or another program's.
    """
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a wrong or truncated file
        # Names the file and says whether it is truncated, empty or another program's.
        raise explain_load_error(path, e, what="kdepth model") from e


def load_network_file(path):
    """Loads a `DepthNetwork` saved as .keras (by `kdepth fit` or `network.save`).

    A network saved by kdepth 0.1 as a plain functional model is rebuilt as a `DepthNetwork`
    with its weights.

    Raises:
        KdepthError: the file is missing, empty, truncated, another program's, or a Keras model
            that is not a kdepth network.
    """
    model = load_keras_file(path)
    if isinstance(model, DepthNetwork):
        return model
    return _from_legacy(path, model)


def find_network_file(path):
    """The .keras file behind a run folder (its highest stage), a stage folder or a .keras file.

    Raises:
        KdepthError: nothing there, or a SavedModel / .tflite, which holds no trainable network.
    """
    kind, resolved = resolve_model_path(path)
    if kind != "keras":
        raise KdepthError(
            f"{path}: is a {kind}; this needs the trained Keras network: pass a run directory "
            "(runs/NAME), a stage directory (runs/NAME/stageN) or a .keras file."
        )
    return resolved


def load(path):
    """Loads a trained network and its run's config.

    Args:
        path: a run folder (runs/NAME: its highest stage), a stage folder (runs/NAME/stageN)
            or a .keras file.

    Returns:
        (network, config): the `DepthNetwork` and the run's resolved `kdepth.config.Config`
        read from the config.toml beside the model file, or None for a bare .keras file.

    Example:
        >>> network, config = kdepth.models.load("runs/quickstart")
        >>> network.final_scale, config.train.name
        ('scale2', 'quickstart')
    """
    from kdepth.config import load_config

    model_file = find_network_file(path)
    network = load_network_file(model_file)
    config_file = run_config_path(model_file)
    return network, (load_config([config_file]) if config_file is not None else None)


def transfer_weights(source, target):
    """Copies weights layer by layer, matched by layer name and shape.

    Returns:
        (copied, total): layers of `target` with weights that were set, and all of them.

    Raises:
        KdepthError: a layer of the same name holds weights of other shapes.
    """
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    copied = total = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        total += 1
        src = by_name.get(layer.name)
        if src is None:
            continue
        values = src.get_weights()
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise KdepthError(
                f"layer {layer.name!r}: saved weights have shapes {[v.shape for v in values]} but this "
                f"model needs {[tuple(w.shape) for w in layer.weights]}; the model settings (input size, "
                "skips, coarse_hidden) must match the run the weights come from."
            )
        layer.set_weights(values)
        copied += 1
    return copied, total


def float32_copy(network):
    """The same network with every layer in float32 and the weights copied: what is exported.

    Returns:
        (network32, policy): the float32 `DepthNetwork` and the policy it was rebuilt from
        (None when it already was float32, and then `network32` is `network`).
    """
    if network.policy_name == "float32":
        return network, None
    rebuilt = DepthNetwork.from_config({**network.get_config(), "dtype": "float32"})
    copied, total = transfer_weights(network, rebuilt)
    if copied != total:
        raise KdepthError(
            f"rebuilding {network.name!r} in float32 copied {copied} of {total} weighted layers; the rebuilt "
            "model's layer names differ from the saved ones. Re-save the model with this kdepth version."
        )
    return rebuilt, network.policy_name
