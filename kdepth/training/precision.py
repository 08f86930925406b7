"""Whether a mixed precision will be fast on the machine that trains, said before training starts.

On a CPU, TensorFlow's float16 kernels and, without AVX512-BF16 or AMX, its bfloat16 backward
kernels are emulated, so a "mixed" precision meant to be faster than float32 is several times
slower (docs/performance.md). `fit` names the cause and the fix instead of leaving the user to
find out from the step time.
"""

from pathlib import Path

# x86 feature flags (as /proc/cpuinfo spells them) with bfloat16 arithmetic that oneDNN uses.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags from `cpuinfo`'s first "flags" line, or None where it cannot be read.

    Returns:
        A set of flag names such as {"avx2", "fma"}; None off Linux or on a CPU whose cpuinfo has
        no "flags" line (an ARM machine says "Features").
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def slow_precision_warning(precision, has_gpu, flags):
    """A warning when `precision` will train slower than float32 here, else None.

    Args:
        precision: the `train.precision` value.
        has_gpu: whether TensorFlow sees a GPU (the mixed precisions are fast there).
        flags: `cpu_flags()`: a set of x86 flag names, or None when unknown (no warning for bf16).

    Returns:
        A sentence naming the cause and the fix, or None.
    """
    if has_gpu or precision == "float32":
        return None
    fix = "Set train.precision=float32 (the default) for full speed on this machine."
    if precision == "mixed_float16":
        return (
            "warning: train.precision = mixed_float16 on a CPU: TensorFlow has no fast float16 kernels for a CPU, "
            f"so each step takes several times float32's (docs/performance.md); it is meant for GPUs. {fix}"
        )
    if precision == "mixed_bfloat16" and flags is not None and not flags & set(BF16_CPU_FLAGS):
        return (
            f"warning: train.precision = mixed_bfloat16, but this CPU has none of {list(BF16_CPU_FLAGS)}: its "
            "bfloat16 backward passes are emulated, a convolution's taking 6.4x float32's time on such a CPU "
            f"(docs/performance.md). {fix}"
        )
    return None
