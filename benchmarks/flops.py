"""FLOP counting for the benchmarks: from a traced TensorFlow graph, and analytically from Keras layers.

Conventions: one multiply-add is 2 FLOPs. The graph count sums the dense-algebra ops (convolutions,
their two backward ops, matmuls); element-wise ops, pooling, resizes and the optimizer's updates are
left out (they are memory-bound and small in FLOPs), so "FLOP/s" means useful multiply-add work per
second, the figure a matmul peak is measured in. TensorFlow's own profiler
(`tensorflow.python.profiler.model_analyzer.profile`) is run beside it as a cross-check; it also
counts element-wise ops.
"""

import math
from collections import defaultdict

import keras
import tensorflow as tf

# Op types counted from a graph, and how.
CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "DepthwiseConv2dNative")
MATMUL_OPS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")


def _shape(tensor):
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape):
        raise ValueError(
            f"op input/output {tensor.name} has an unknown shape {shape}; trace the function with fully "
            "static shapes (a tf.TensorSpec with the batch size set) before counting FLOPs."
        )
    return [int(d) for d in shape]


def _op_flops(op):
    """FLOPs of one graph op (2 per multiply-add), or None if the op type is not counted."""
    t = op.type
    if t == "Conv2D":
        n, h, w, co = _shape(op.outputs[0])
        kh, kw, ci, _ = _shape(op.inputs[1])
        return 2 * n * h * w * co * kh * kw * ci
    if t == "Conv2DBackpropInput":  # inputs: input_sizes, filter, out_backprop
        kh, kw, ci, co = _shape(op.inputs[1])
        n, h, w, _ = _shape(op.inputs[2])
        return 2 * n * h * w * co * kh * kw * ci
    if t == "Conv2DBackpropFilter":  # inputs: input, filter_sizes, out_backprop; output = filter grad
        kh, kw, ci, co = _shape(op.outputs[0])
        n, h, w, _ = _shape(op.inputs[2])
        return 2 * n * h * w * co * kh * kw * ci
    if t in MATMUL_OPS:
        a, b = _shape(op.inputs[0]), _shape(op.inputs[1])
        ta = op.get_attr("transpose_a") if t == "MatMul" else op.get_attr("adj_x")
        tb = op.get_attr("transpose_b") if t == "MatMul" else op.get_attr("adj_y")
        m, k = (a[-1], a[-2]) if ta else (a[-2], a[-1])
        n = b[-2] if tb else b[-1]
        batch = math.prod(_shape(op.outputs[0])[:-2])
        return 2 * batch * m * n * k
    return None


def live_ops(graph):
    """The ops of a graph that run: those the outputs or a stateful op (a variable update) depend on.

    TensorFlow's gradient adds ops whose results nothing uses (e.g. the gradient of the first
    convolution with respect to the image); the runtime prunes them, so they are not counted.
    """
    roots = [t.op for t in graph.outputs] + list(getattr(graph, "control_outputs", []))
    roots += [op for op in graph.get_operations() if op.op_def is not None and op.op_def.is_stateful and op.type != "ReadVariableOp"]
    seen, stack = set(), list(roots)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op.name in seen]


def graph_flops(graph):
    """Dense-algebra FLOPs of the live ops of a traced graph (e.g. `concrete_function.graph`).

    Returns:
        {"total": FLOPs, "by_op": {op type: FLOPs}, "ops": number of counted ops,
        "dead": FLOPs of counted op types that nothing uses (pruned at run time, not in total)}.

    Raises:
        ValueError: a counted op has a dynamic shape, or the graph calls nested functions
            (their ops would be missed; trace with the calls inlined).
    """
    by_op = defaultdict(int)
    count = dead = 0
    live = {op.name for op in live_ops(graph)}
    for op in graph.get_operations():
        if op.type in ("PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile"):
            raise ValueError(
                f"graph {graph.name} calls a nested function through {op.type} op {op.name!r}; graph_flops "
                "counts only the top-level graph. Trace the step so that its calls are inlined."
            )
        flops = _op_flops(op)
        if flops is None:
            continue
        if op.name not in live:
            dead += flops
            continue
        by_op[op.type] += flops
        count += 1
    return {"total": sum(by_op.values()), "by_op": dict(by_op), "ops": count, "dead": dead}


def profiler_flops(graph):
    """Total float operations of a graph according to TensorFlow's profiler (all op types it knows)."""
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return int(profile(graph, options=options).total_float_ops)


def layer_forward_flops(model, batch=1):
    """Analytic forward FLOPs per layer of a Keras model: Conv2D and Dense layers only.

    Conv2D: 2 * h_out * w_out * c_out * kh * kw * c_in; Dense: 2 * inputs * units. Bias adds,
    activations, pooling and resizes are not counted (as in `graph_flops`).

    Returns:
        {layer name: FLOPs for `batch` images}, in layer order.
    """
    flops = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, ci, co = (int(d) for d in layer.kernel.shape)
            _, h, w, _ = layer.output.shape
            flops[layer.name] = 2 * int(h) * int(w) * co * kh * kw * ci * batch
        elif isinstance(layer, keras.layers.Dense):
            fan_in, units = (int(d) for d in layer.kernel.shape)
            flops[layer.name] = 2 * fan_in * units * batch
    return flops


def concrete_graph(fn, *specs):
    """The graph of `tf.function(fn)` traced for `specs` (tf.TensorSpec or nests of them)."""
    return tf.function(fn).get_concrete_function(*specs).graph


def spec_like(structure):
    """tf.TensorSpec nest matching a nest of tensors (static shapes)."""
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), structure)
