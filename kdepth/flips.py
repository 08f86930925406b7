"""The flip group behind the set loss.

Each copy of an image in a flip group is the image under one flip. Every flip here is its own
inverse, so the code that undoes a flip applies the same flip again; `inverse` still exists so
callers say what they mean.
"""

import tensorflow as tf

# name -> axes flipped, counted from the end of an (..., H, W, C) tensor.
FLIPS = {
    "identity": (),
    "lr": (-2,),  # left-right: mirror the width axis
    "ud": (-3,),  # up-down: mirror the height axis
}


def validate_group(group):
    """Checks a flip group (a list of flip names) and returns it as a tuple."""
    group = tuple(group)
    if not group:
        raise ValueError("flip_group is empty; allowed: a non-empty list of " f"{sorted(FLIPS)}, e.g. ['identity', 'lr'].")
    for name in group:
        if name not in FLIPS:
            raise ValueError(f"flip_group has {name!r}; allowed flips are {sorted(FLIPS)}.")
    if len(set(group)) != len(group):
        raise ValueError(f"flip_group {list(group)} repeats a flip; list each flip once.")
    return group


def apply_flip(x, name):
    """Applies flip `name` to an (..., H, W, C) tensor."""
    axes = FLIPS[name]
    return tf.reverse(x, axis=list(axes)) if axes else x


def inverse(name):
    """The flip that undoes `name` (each flip in FLIPS is an involution)."""
    return name


def make_group(x, group):
    """Stacks the flipped copies of x (..., H, W, C) on a new axis before H: (..., G, H, W, C)."""
    return tf.stack([apply_flip(x, name) for name in group], axis=-4)


def undo_group(x, group):
    """Maps each copy of an (..., G, H, W, C) group back to the identity frame."""
    copies = tf.unstack(x, num=len(group), axis=-4)
    return tf.stack([apply_flip(c, inverse(name)) for c, name in zip(copies, group, strict=True)], axis=-4)
