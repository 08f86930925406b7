"""The tf.data pipeline: source samples -> resized, masked, jittered flip groups in batches.

One function, `build_dataset`, serves every source, split and stage. An element of the result is

    images: float32 (B, G, H, W, 3), raw RGB 0-255, copy g = the image under flip_group[g]
    target: {"depth": float32 (B, G, h, w, 1) metres, 0 at holes,
             "mask":  float32 (B, G, h, w, 1), 1 where the depth is valid}

so a flip group travels as one element and is never split across devices when a batch is
sharded. The ground truth of each copy is flipped with its image; `kdepth.flips.undo_group`
maps predictions back.
"""

import tensorflow as tf

from kdepth import flips
from kdepth.ops import masked_resize

AUTOTUNE = tf.data.AUTOTUNE

# data.cache = "auto" keeps a training split in memory up to this size: the 795 NYU training
# frames take 0.4 GB at the paper's 232x310, a 2000-sample split 43 MB at 48x64.
AUTO_CACHE_BYTES = 1 << 30


def _resize_sample(sample, input_size, target_size, depth_resize):
    """One source sample -> (uint8 (H, W, 3) image, float32 (h, w, 1) depth) at the model's sizes."""
    image = tf.cast(sample["image"], tf.float32)
    # Antialiasing matters when a 480x640 frame becomes a 64x80 input: plain bilinear aliases.
    image = tf.image.resize(image, input_size, method="bilinear", antialias=True)
    # Rounded back to uint8, as an image resized once when written would be stored: the cache
    # then holds a quarter of the image bytes, and cached and uncached pipelines give equal batches.
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    depth = masked_resize(sample["depth"][..., None], target_size, method=depth_resize)
    return image, depth


def _jitter(image, seed, brightness, contrast, saturation):
    """Photometric jitter on a 0-255 image, the same for every copy of a flip group."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    x = image / 255.0
    if brightness > 0:
        x = x * tf.random.stateless_uniform([], seeds[0], 1.0 - brightness, 1.0 + brightness)
    if contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1.0 - contrast, 1.0 + contrast, seeds[1])
    if saturation > 0:
        x = tf.image.stateless_random_saturation(x, 1.0 - saturation, 1.0 + saturation, seeds[2])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def _to_group(image, depth, group, seed=None, jitter=None):
    """A cached-size sample -> its flip group: float32 image (jittered if `seed` is given) and target."""
    image = tf.cast(image, tf.float32)
    if seed is not None:
        image = _jitter(image, seed, *jitter)
    mask = tf.cast(depth > 0, tf.float32)
    return flips.make_group(image, group), {
        "depth": flips.make_group(depth, group),
        "mask": flips.make_group(mask, group),
    }


def build_dataset(
    source,
    split,
    *,
    input_size,
    target_size=None,
    flip_group=("identity",),
    batch_size=8,
    training=False,
    seed=0,
    jitter=(0.0, 0.0, 0.0),
    shuffle_buffer=0,
    cache=False,
    skip_bad_files=False,
    depth_resize="masked_area",
    repeat=False,
    drop_remainder=None,
):
    """Builds the batched pipeline of flip groups for one split of a source.

    Args:
        source: a `kdepth.data.sources.Source`.
        split: split name, e.g. "train".
        input_size: (H, W) of the images fed to the network.
        target_size: (h, w) of the ground truth; None = input_size.
        flip_group: flip names (kdepth.flips.FLIPS) stacked per element, G = len(flip_group).
        batch_size: flip groups per batch.
        training: shuffle, jitter and drop the last partial batch.
        seed: makes shuffling and jitter deterministic.
        jitter: (brightness, contrast, saturation) maximum relative changes; 0 = off.
        shuffle_buffer: samples in the shuffle buffer after caching (0 = source order only).
        cache: keep decoded, resized samples in memory after the first pass, as uint8 images
            and float32 depth at the model's sizes (before the random augmentations). The
            batches equal the uncached ones for the same seed (for sources that shuffle by
            sample index, i.e. all but tfds, and when no sample is skipped). In training the
            first batch waits for the whole split to be decoded once (it fills the shuffle).
        skip_bad_files: drop unreadable samples (logged and counted by the source) instead of
            stopping with the file's name.
        depth_resize: "masked_area" or "nearest"; either keeps holes out of valid pixels.
        repeat: repeat forever (with a fresh shuffle each pass).
        drop_remainder: default `training`.

    Returns:
        A `tf.data.Dataset` of (images, {"depth", "mask"}) batches as described in the module.

    Raises:
        ValueError: batch_size < 1, or a flip group that is empty, repeats a flip or names an
            unknown one.
    """
    input_size = tuple(int(v) for v in input_size)
    target_size = tuple(int(v) for v in (target_size or input_size))
    group = flips.validate_group(flip_group)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, received {batch_size}.")
    if drop_remainder is None:
        drop_remainder = training
    ds = _resized_samples(source, split, input_size, target_size, depth_resize, training, seed, cache, skip_bad_files)
    if repeat:
        ds = ds.repeat()
    if training and shuffle_buffer > 0:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = _flip_groups(ds, group, seed, jitter if training else None)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def _resized_samples(source, split, input_size, target_size, depth_resize, training, seed, cache, skip_bad_files):
    """(uint8 image, float32 depth) pairs at the model's sizes, cached and shuffled if asked."""
    # With the cache, the source is read in order and the per-pass shuffle of its samples comes
    # after the cache instead (same seed, same buffer = the whole split): every pass then draws
    # the permutation the uncached source would, so data.cache changes the speed, not the batches.
    ds = source.raw_dataset(split, shuffle=training and not cache, seed=seed, skip_bad_files=skip_bad_files)
    ds = ds.map(
        lambda s: _resize_sample(s, input_size, target_size, depth_resize),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if cache:
        # Decoded and resized, before the random augmentations: uint8 images, small depth maps.
        ds = ds.cache()
        if training:
            ds = ds.shuffle(source.num_samples(split), seed=seed, reshuffle_each_iteration=True)
    return ds


def _flip_groups(ds, group, seed, jitter):
    """Maps (image, depth) pairs to flip groups, jittered when `jitter` (a triple) is not all 0.

    Everything after the cache runs on every step: the random jitter, the flip group and the
    float32 cast, fused into one map so each sample costs one function call.
    """
    if jitter is not None and any(j > 0 for j in jitter):
        # One independent stateless seed per element keeps jitter deterministic yet varied.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        return tf.data.Dataset.zip(ds, seeds).map(
            lambda pair, s: _to_group(pair[0], pair[1], group, s, jitter),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return ds.map(lambda image, depth: _to_group(image, depth, group), num_parallel_calls=AUTOTUNE, deterministic=True)


def cached_bytes(num_samples, input_size, target_size):
    """Bytes the cache holds for a split: a uint8 RGB image and a float32 depth map per sample."""
    (h, w), (th, tw) = input_size, target_size
    return num_samples * (h * w * 3 + th * tw * 4)


def steps_per_epoch(train, num_samples):
    """Batches per epoch: `train.steps_per_epoch`, or one pass over `num_samples` when it is 0."""
    return train.steps_per_epoch or max(1, num_samples // train.batch_size)


def resolve_cache(config, source, split, *, training):
    """Whether `dataset_from_config` caches `split`, and a line saying why.

    `data.cache` true or false is taken as given. "auto" caches a training split when the run
    reads it at least twice, it takes at most `AUTO_CACHE_BYTES`, and the batches are then
    provably the ones the uncached pipeline gives: the source shuffles by sample index (not
    tfds) and no bad sample is skipped. Decoding full-size files at every step costs a tiny input
    4-7% of its step (docs/performance.md); after the first pass the cache costs nothing per
    step. Evaluation pipelines are never cached by "auto".

    Returns:
        (cache, note): a bool, and e.g. "cache: on, 2000 samples, 43 MB in memory (data.cache = auto)".
    """
    data, train = config.data, config.train
    n = source.num_samples(split)
    size = cached_bytes(n, config.model.input_size, data.target_size or config.model.input_size)
    held = f"{n} samples, {size / 1e6:,.0f} MB"
    if data.cache != "auto":
        return bool(data.cache), f"cache: {'on' if data.cache else 'off'}, {held} (data.cache = {str(data.cache).lower()})"
    passes = train.epochs * steps_per_epoch(train, n) * train.batch_size / n
    refusals = (
        (not training, "an evaluation pass"),
        (passes < 2, f"the run reads the split {passes:.2g} times"),
        (not source.shuffles_by_index, "the source shuffles its own records"),
        (data.skip_bad_files, "data.skip_bad_files = true"),
        (size > AUTO_CACHE_BYTES, f"over {AUTO_CACHE_BYTES / 2**30:g} GiB"),
    )
    why_not = next((why for refused, why in refusals if refused), None)
    if why_not:
        return False, f"cache: off, {held}: {why_not} (data.cache = auto)"
    return True, f"cache: on, {held} in memory (data.cache = auto)"


def dataset_from_config(config, split, *, training, source=None, flip_group=None, batch_size=None, repeat=False):
    """Builds `build_dataset` for `split` from a resolved kdepth config.

    Validation and test pipelines use the same code with training=False (no shuffle or jitter);
    `flip_group` defaults to the configured group for training and ("identity",) otherwise.
    """
    from kdepth.data.sources import open_source

    data = config.data
    source = source or open_source(data, config.model.input_size)
    if flip_group is None:
        flip_group = data.flip_group if training else ("identity",)
    ds = build_dataset(
        source,
        split,
        input_size=config.model.input_size,
        target_size=data.target_size or None,
        flip_group=flip_group,
        batch_size=batch_size or config.train.batch_size,
        training=training,
        seed=data.seed,
        jitter=(data.jitter_brightness, data.jitter_contrast, data.jitter_saturation) if training else (0.0, 0.0, 0.0),
        shuffle_buffer=data.shuffle_buffer,
        cache=resolve_cache(config, source, split, training=training)[0],
        skip_bad_files=data.skip_bad_files,
        depth_resize=data.depth_resize,
        repeat=repeat,
    )
    return ds, source
