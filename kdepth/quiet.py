"""A quiet TensorFlow start-up for the command line.

TensorFlow 2.21 writes its start-up lines (the absl "before absl::InitializeLog()" banner,
"oneDNN custom operations are on", cudart_stub's "Could not find cuda drivers", the failed
cuInit of a machine without a GPU, duplicate cuDNN/cuFFT/cuBLAS factory registrations, TF-TRT
warnings) from C++ static initialisers and from absl logging before absl is initialised. absl
then ignores every threshold, so no environment variable (TF_CPP_MIN_LOG_LEVEL included) hides
them, and CUDA_VISIBLE_DEVICES does not stop the cuInit call. `start_tensorflow` therefore
imports TensorFlow and enumerates its devices (where those lines are printed) with file
descriptor 2 sent to a temporary file, then restores it and writes back every captured line
that is not one of the known start-up lines. Python warnings and anything else printed in
that window therefore still reach stderr, in order.

On a machine with an NVIDIA device (/dev/nvidia* or nvidia-smi) the CUDA lines are kept: there
a failed cuInit is a real problem. KDEPTH_TF_LOG=1 (or `kdepth --tf-log`) turns all of this
off and restores TensorFlow's own logging, TF_CPP_MIN_LOG_LEVEL included.
"""

import contextlib
import glob
import os
import re
import shutil
import sys
import tempfile

OPT_OUT_ENV = "KDEPTH_TF_LOG"
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# 2: TensorFlow's own INFO and WARNING lines after start-up are hidden, its errors still show.
QUIET_LOG_LEVEL = "2"

# Printed on every machine; harmless.
START_UP_LINES = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"port\.cc:\d+\] oneDNN custom operations are on",
    r"cpu_feature_guard\.cc:\d+\]",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
    r"Unable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting to register factory for plugin .* when one has already been registered",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"Attempting to register factory for plugin .* when one has already been registered",
)
# Printed because there is no GPU; hidden only when the machine has no NVIDIA device.
NO_GPU_LINES = (
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used",
    r"cuda_platform\.cc:\d+\] failed call to cuInit: ",
    r"cuda_executor\.cc:\d+\] .*(cuInit|no NVIDIA GPU device is present)",
    r"Cannot dlopen some GPU libraries",
)

_set_by_us = False


def tf_log_wanted():
    """True if the user asked for TensorFlow's own logging (KDEPTH_TF_LOG set, not 0 or empty)."""
    return os.environ.get(OPT_OUT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def has_nvidia_device():
    """True if this machine shows an NVIDIA device node or has nvidia-smi on the PATH."""
    return bool(glob.glob("/dev/nvidia*")) or shutil.which("nvidia-smi") is not None


def noise_pattern(nvidia=None):
    """The compiled regex of the start-up lines to hide (CUDA lines only without an NVIDIA device)."""
    nvidia = has_nvidia_device() if nvidia is None else nvidia
    lines = START_UP_LINES if nvidia else START_UP_LINES + NO_GPU_LINES
    return re.compile("|".join(f"(?:{p})" for p in lines))


def configure_environment():
    """Sets TF_CPP_MIN_LOG_LEVEL=2 unless the user set it or asked for TensorFlow's logging.

    Call before TensorFlow is imported. Returns True if it set the variable.
    """
    global _set_by_us
    if not tf_log_wanted() and LOG_LEVEL_ENV not in os.environ:
        os.environ[LOG_LEVEL_ENV] = QUIET_LOG_LEVEL
        _set_by_us = True
    return _set_by_us


def restore_tf_log():
    """Turns the quiet start-up off for this process (what `kdepth --tf-log` does)."""
    global _set_by_us
    os.environ[OPT_OUT_ENV] = "1"
    if _set_by_us:
        os.environ.pop(LOG_LEVEL_ENV, None)
        _set_by_us = False


def filter_lines(text, pattern):
    """The lines of `text` (with their line ends) that `pattern` does not match."""
    return "".join(line for line in text.splitlines(keepends=True) if not pattern.search(line))


@contextlib.contextmanager
def filtered_stderr(pattern):
    """Sends file descriptor 2 to a temporary file inside the block, then writes back to stderr
    every captured line `pattern` does not match (also when the block raises)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b", prefix="kdepth-stderr-") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_lines(capture.read().decode("utf-8", "replace"), pattern)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def start_tensorflow():
    """Imports TensorFlow and initialises its platforms without their start-up lines on stderr.

    Does nothing if TensorFlow is already imported or KDEPTH_TF_LOG is set. Returns True if it
    imported TensorFlow.
    """
    configure_environment()
    if tf_log_wanted() or "tensorflow" in sys.modules:
        return False
    with filtered_stderr(noise_pattern()):
        import tensorflow as tf

        # Enumerating the devices loads the CUDA platform (and calls cuInit) now, inside the
        # window; it does not initialise the runtime, so a tf.distribute strategy made later
        # can still configure it.
        tf.config.list_physical_devices()
    return True


# LiteRT's one INFO line, printed when the first interpreter allocates its tensors.
LITERT_LINES = (r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",)


def litert_quietly():
    """A context manager hiding LiteRT's XNNPACK INFO line (nothing else) unless KDEPTH_TF_LOG is set."""
    if tf_log_wanted():
        return contextlib.nullcontext()
    return filtered_stderr(re.compile("|".join(LITERT_LINES)))
