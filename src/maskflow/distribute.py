"""tf.distribute strategy selection: the same training code on 1 CPU, N GPUs or N workers."""

from __future__ import annotations

import logging

# TensorFlow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger(__name__)


def strategy_for(mode: str = "auto"):
    """``auto``: MirroredStrategy when more than one GPU is visible, else the default
    (single-device) strategy; ``mirrored``/``multiworker``/``none`` force one."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if mode == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if mode not in ("auto", "none", "mirrored"):
        raise ValueError(f"train.distribute must be auto, mirrored, multiworker or none; got {mode!r}")
    return tf.distribute.get_strategy()
