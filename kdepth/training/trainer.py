"""The trainer model: owns the loop (losses, metrics, flip groups) around a plain depth network.

After the keras-io trainer pattern: `DepthTrainer` wraps the network built by
`kdepth.models.DepthNetwork` and overrides `train_step` / `test_step`. The network owns
the math and is what gets saved and exported; the trainer only exists while fitting.
"""

import keras
import tensorflow as tf

from kdepth import flips
from kdepth.config import choices
from kdepth.errors import ConfigError
from kdepth.losses import GradientMatchingLoss, MaskedMSE, ScaleInvariantLoss, SetLoss
from kdepth.metrics import logged_metrics
from kdepth.models import SCALE_NAMES
from kdepth.ops import masked_resize
from kdepth.training.distribute import all_reduce_and_clip, logs_for_keras

ON_NAN = choices("train", "on_nan")  # what a non-finite loss does: stop training, or skip the batch's update


def _split_at(network, names):
    """(fronts, rest): sub-models of `network` sharing its layers, cut at the layers `names`.

    Each front maps the image to one named layer's output; `rest` maps (image, those outputs)
    to the outputs. Raises ConfigError (a ValueError) if a name is not a layer, or if a weighted
    layer before a cut also reaches the outputs another way or lies before two cuts (it would
    then run twice).
    """
    known = [layer.name for layer in network.layers]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"recompute (train.recompute) = {unknown} are not layers of the network; its layers are {known}.")
    cuts = [network.get_layer(name).output for name in names]
    fronts = [keras.Model(network.input, cut, name=f"{network.name}_to_{name}") for name, cut in zip(names, cuts, strict=True)]
    rest = keras.Model([network.input, *cuts], network.output, name=f"{network.name}_after_recomputed")
    for i, (name, front) in enumerate(zip(names, fronts, strict=True)):
        others = [rest, *fronts[:i], *fronts[i + 1 :]]
        twice = [layer.name for layer in front.layers if layer.weights and any(layer in o.layers for o in others)]
        if twice:
            raise ConfigError(
                f"recompute (train.recompute) = {name!r}: the layers {twice} before it also feed the outputs another way, "
                "so they would run twice. Choose layers whose output is the only path from the layers before them to the outputs."
            )
    return fronts, rest


_PASS_THROUGH = ("Cast", "Identity")  # ops between a kernel gradient's MatMul and the gradient
_MATMUL = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")


def defer_dense_gradients(grads):
    """Makes the dense kernels' gradients wait until every other gradient exists.

    The backward pass reaches scale 1's dense layers early, and TensorFlow computes a kernel
    gradient as soon as its two inputs exist; `scale1_dense1`'s (0.54 GB in float32 at 232x310)
    would then stay alive through the backbone's whole backward pass, where the step's memory
    peaks. Computed last instead, only its inputs (a few MB: the layer's input and its output's
    gradient) are kept until then. Values are unchanged, only the order of ops. In graph mode
    (a `tf.function` train step); eagerly every gradient exists already and nothing changes.

    Args:
        grads: the gradients `tape.gradient` returned (None for unconnected variables).

    Returns:
        The number of gradients deferred.
    """
    if tf.executing_eagerly():
        return 0
    deferred, others = [], []
    for g in grads:
        if g is None:
            continue
        op = g.op
        while op.type in _PASS_THROUGH and op.inputs:
            op = op.inputs[0].op
        if op.type in _MATMUL:
            deferred.append(op)
        else:
            others.append(g.op)
    if not others:
        return 0
    for op in deferred:
        # Operation._add_control_inputs is private, but it is how TensorFlow's own automatic
        # control dependencies order ops after they are made; no public API adds one later.
        op._add_control_inputs(others)
    return len(deferred)


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="kdepth")
class DepthTrainer(keras.Model):
    """Trains a depth network on flip-group batches.

    A batch is `(images (B, G, H, W, 3), {"depth": (B, G, h, w, 1), "mask": ...})` from
    `kdepth.data.pipeline`. All B*G copies go through the network in one forward pass. The
    loss is

        sum_s mse_weights[s] * MaskedMSE(scale s)        (target resized to each scale, holes kept)
        + set_weight   * SetLoss(final scale, flip group)
        + silog_weight * ScaleInvariantLoss(final scale)
        + grad_weight  * GradientMatchingLoss(final scale)

    Every term is a `keras.losses.Loss` whose reduction divides by the replica count under
    `tf.distribute`, so gradients are right on any number of devices; each term is logged on
    its own. Metrics (delta1-3, AbsRel, RMSE, edge_delta1) compare the final scale, resized to the target
    size, with the ground truth on valid pixels.

    Args:
        network: a `kdepth.models.DepthNetwork` (outputs {"scale1", "scale2"[, "scale3"]} in metres).
        flip_group: flip names of the copies in each element.
        mse_weights: {scale name: weight}; scales missing from the network are ignored.
        space: "log" or "linear" for the MSE and set loss.
        mse_root: use the per-sample root of the MSE (RMSE), the poster's experiment 4.
        set_weight, silog_weight, silog_lambda, grad_weight: the other terms (0 = off).
        on_nan: a batch with a non-finite loss or gradient never updates the weights;
            "stop" logs its loss so `callbacks.NonFiniteGuard` stops training, "skip-batch"
            skips it and goes on (`skipped_batches` counts them).
        recompute: names of network layers whose output is the only way the layers before
            them reach the outputs (`network.recompute_layers`, e.g. VGG16's "block1_pool"): in
            training, the forward pass up to each is run again in the backward pass instead of
            keeping its activations. The same gradients, less memory, more compute. () = none.
    """

    def __init__(
        self,
        network,
        flip_group=("identity",),
        mse_weights=None,
        space="log",
        mse_root=False,
        set_weight=0.0,
        silog_weight=0.0,
        silog_lambda=0.5,
        grad_weight=0.0,
        on_nan="stop",
        recompute=(),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if on_nan not in ON_NAN:
            raise ValueError(f"on_nan received {on_nan!r}; allowed: {list(ON_NAN)}.")
        self.on_nan = on_nan
        self.network = network
        self.recompute = (recompute,) if isinstance(recompute, str) else tuple(recompute or ())
        self._split = _split_at(network, self.recompute) if self.recompute else None
        self.flip_group = flips.validate_group(flip_group)
        built = network.scale_names
        self.final_scale = network.final_scale
        weights = dict(mse_weights or {self.final_scale: 1.0})
        unknown = set(weights) - set(SCALE_NAMES)
        if unknown:
            raise ValueError(f"mse_weights has {sorted(unknown)}; allowed keys: {list(SCALE_NAMES)}.")
        self.mse_weights = {s: float(weights[s]) for s in built if weights.get(s, 0.0) > 0}
        self.space = space
        self.mse_root = bool(mse_root)
        self.set_weight = float(set_weight)
        self.silog_weight = float(silog_weight)
        self.silog_lambda = float(silog_lambda)
        self.grad_weight = float(grad_weight)

        self.mse_losses = {s: MaskedMSE(space=space, root=mse_root, name=f"mse_{s}") for s in self.mse_weights}
        self.set_loss = SetLoss(group=list(self.flip_group), space=space, name="set")
        self.silog_loss = ScaleInvariantLoss(lam=silog_lambda, name="silog")
        self.grad_loss = GradientMatchingLoss(name="grad")
        names = [f"mse_{s}" for s in self.mse_weights]
        if self.set_weight > 0 and len(self.flip_group) > 1:
            names.append("set")
        if self.silog_weight > 0:
            names.append("silog")
        if self.grad_weight > 0:
            names.append("grad")
        self.term_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.depth_metrics = logged_metrics()
        # Batches whose update was skipped as non-finite, per epoch (logged as skipped_batches).
        self.skipped_tracker = keras.metrics.Sum(name="skipped_batches")
        self.overflow_tracker = None  # set by compile() under a LossScaleOptimizer

    def call(self, images, training=False):
        """Runs the network on (B, H, W, 3) or (B, G, H, W, 3) images; returns its output dict."""
        if len(images.shape) == 5:
            shape = tf.shape(images)
            folded = tf.reshape(images, tf.concat([[-1], shape[2:]], axis=0))
            out = self._run_network(folded, training)
            return {k: tf.reshape(v, tf.concat([shape[:2], tf.shape(v)[1:]], axis=0)) for k, v in out.items()}
        return self._run_network(images, training)

    def _run_network(self, images, training):
        if self._split is None or not training:
            return self.network(images, training=training)
        fronts, rest = self._split
        cuts = [tf.recompute_grad(lambda x, front=front: front(x, training=True))(images) for front in fronts]
        return rest([images, *cuts], training=True)

    def _fold(self, x):
        """(B, G, h, w, C) -> (B*G, h, w, C)."""
        return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))

    def compute_terms(self, target, preds):
        """Returns ({term name: unweighted per-replica loss}, weighted total)."""
        depth = self._fold(target["depth"])
        depth = depth * self._fold(target["mask"])  # holes are 0 whatever the source wrote there
        terms, total = {}, 0.0
        for scale, weight in self.mse_weights.items():
            pred = self._fold(preds[scale])
            gt = masked_resize(depth, pred.shape[1:3])
            terms[f"mse_{scale}"] = self.mse_losses[scale](gt, pred)
            total += weight * terms[f"mse_{scale}"]
        final = preds[self.final_scale]
        if "set" in self.term_trackers:
            terms["set"] = self.set_loss(final, final)  # the set loss needs no ground truth
            total += self.set_weight * terms["set"]
        if "silog" in self.term_trackers or "grad" in self.term_trackers:
            flat = self._fold(final)
            gt = masked_resize(depth, flat.shape[1:3])
            if "silog" in self.term_trackers:
                terms["silog"] = self.silog_loss(gt, flat)
                total += self.silog_weight * terms["silog"]
            if "grad" in self.term_trackers:
                terms["grad"] = self.grad_loss(gt, flat)
                total += self.grad_weight * terms["grad"]
        return terms, total

    def _results(self, training=True):
        training_only = (self.skipped_tracker, self.overflow_tracker)
        results = {m.name: m.result() for m in self.metrics if training or m not in training_only}
        return logs_for_keras(results)  # shape (1,) on several workers, see distribute.logs_for_keras

    def _update_states(self, target, preds, terms, total):
        # Loss values are per replica (divided by the replica count); log the global value.
        scale = tf.cast(_replicas(), tf.float32)
        for metric in self.metrics:
            if metric.name == "loss":  # the tracker compile() creates
                metric.update_state(total * scale)
        for name, tracker in self.term_trackers.items():
            tracker.update_state(terms[name] * scale)
        gt = self._fold(target["depth"]) * self._fold(target["mask"])
        pred = tf.image.resize(self._fold(preds[self.final_scale]), tf.shape(gt)[1:3], method="bilinear")
        for metric in self.depth_metrics:
            metric.update_state(gt, pred)

    def train_step(self, data):
        images, target, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            preds = self(images, training=True)
            terms, total = self.compute_terms(target, preds)
            if self.losses:  # kernel regularisers, if any
                # Divided by the replicas like the loss terms (what Keras's compute_loss does).
                total += tf.add_n(self.losses) / tf.cast(_replicas(), tf.float32)
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        defer_dense_gradients(grads)
        grads = all_reduce_and_clip(grads, self.optimizer)  # clip the global, not per-replica, gradient
        return self._apply_if_finite(grads, variables, target, preds, terms, total)

    def compile(self, *args, **kwargs):
        """Keras's compile; under a LossScaleOptimizer it also counts the overflow steps it skips."""
        super().compile(*args, **kwargs)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) and self.overflow_tracker is None:
            # Steps whose scaled gradients overflowed: the optimizer skips them and halves its scale.
            self.overflow_tracker = keras.metrics.Sum(name="loss_scale_skips")

    def _all_replicas_finite(self, total, grads):
        """True if the loss and the gradients are finite on every replica (one value for all of them)."""
        checks = [tf.reduce_all(tf.math.is_finite(total))]
        if self.overflow_tracker is None:
            return tf.equal(self._on_all_replicas(checks + self._grads_finite(grads)), 1.0)
        # A LossScaleOptimizer skips non-finite gradients itself and lowers its loss scale;
        # hiding them from it would keep the scale too high for ever. Count them instead (a
        # non-finite loss is skipped here and counted in skipped_batches).
        loss_finite = self._on_all_replicas(checks)
        overflow = loss_finite * (1.0 - self._on_all_replicas(self._grads_finite(grads)))
        self.overflow_tracker.update_state(overflow / tf.cast(_replicas(), tf.float32))
        return tf.equal(loss_finite, 1.0)

    @staticmethod
    def _grads_finite(grads):
        return [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]

    @staticmethod
    def _on_all_replicas(checks):
        """1.0 if every check holds on every replica, else 0.0 (the same value on all of them)."""
        bad = 1.0 - tf.cast(tf.reduce_all(tf.stack(checks)), tf.float32)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Every replica must take the same branch: the update all-reduces across them.
            bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
        return tf.cast(tf.equal(bad, 0.0), tf.float32)

    def _apply_if_finite(self, grads, variables, target, preds, terms, total):
        """The optimizer update only if the loss and the gradients are finite.

        A non-finite batch leaves the weights, the optimizer's moments and its `iterations`
        unchanged (the update is not run at all, rather than run with zero gradients, which
        would still decay Adam's moments) and adds 1 to `skipped_batches`. This holds in both
        `on_nan` modes: a NaN gradient can come with a finite loss (max-pooling hides a NaN
        pixel in the forward pass, not in the backward one), and applying it would poison the
        weights and the next backup before any loss showed it. "stop" still updates the loss
        metrics, so `NonFiniteGuard` sees and names the non-finite term and stops;
        "skip-batch" leaves the metrics out of the bad batch and goes on.
        """
        if not self.optimizer.built:
            self.optimizer.build(variables)  # outside the branch: variables are created once
        finite = self._all_replicas_finite(total, grads)

        def apply():
            self.optimizer.apply(grads, variables)
            return tf.constant(True)

        def skip():
            return tf.constant(False)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, apply, skip)
        else:
            # As keras.optimizers.LossScaleOptimizer does it: a cond whose branch updates
            # mirrored variables (merge_call) must run in the cross-replica context.
            def cross_replica(strategy, finite, grads):
                def apply_each():
                    strategy.extended.call_for_each_replica(lambda g: self.optimizer.apply(g, variables), args=(grads,))
                    return tf.constant(True)

                # `finite` is the same on every replica (all-reduced): take the first.
                tf.cond(strategy.experimental_local_results(finite)[0], apply_each, skip)

            tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))

        def update():
            self._update_states(target, preds, terms, total)
            return tf.constant(True)

        if self.on_nan == "skip-batch":
            tf.cond(finite, update, skip)
        else:
            self._update_states(target, preds, terms, total)
        # The Sum is reduced over replicas: each adds its share so a skipped batch counts once.
        self.skipped_tracker.update_state((1.0 - tf.cast(finite, tf.float32)) / tf.cast(_replicas(), tf.float32))
        return self._results()

    def test_step(self, data):
        images, target, _ = keras.utils.unpack_x_y_sample_weight(data)
        preds = self(images, training=False)
        terms, total = self.compute_terms(target, preds)
        self._update_states(target, preds, terms, total)
        return self._results(training=False)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy, Keras 3.15 builds from a batch it pulls from the dataset and merges
        # with one strategy.reduce over the whole (images, {"depth", "mask"}) structure: that
        # reduce fails with several workers (keras-team/keras#20585), and the extra pass over
        # the dataset starts the seeded shuffle and jitter elsewhere than on one device. Only
        # shapes and dtypes are used, so give it the dataset's element spec instead.
        if iterator is not None and data_batch is None and self._distribute_strategy is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "flip_group": list(self.flip_group),
                "mse_weights": self.mse_weights,
                "space": self.space,
                "mse_root": self.mse_root,
                "set_weight": self.set_weight,
                "silog_weight": self.silog_weight,
                "silog_lambda": self.silog_lambda,
                "grad_weight": self.grad_weight,
                "on_nan": self.on_nan,
                "recompute": list(self.recompute),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
