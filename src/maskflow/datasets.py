"""tf.data input pipelines over the prepared face crops."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from maskflow.data import read_manifest

# TensorFlow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.


def split_arrays(manifest: Path, split: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Crop paths and integer labels of one split (labels outside ``classes`` dropped)."""
    index = {c: i for i, c in enumerate(classes)}
    rows = [r for r in read_manifest(manifest, split) if r["label"] in index]
    return [r["crop"] for r in rows], np.array([index[r["label"]] for r in rows], dtype=np.int64)


def image_dataset(paths: Sequence[str], size: int, batch_size: int, labels: np.ndarray | None = None,
                  num_classes: int | None = None, shuffle: bool = False, seed: int = 0):
    """Decoded, resized RGB float32 in [0, 255] (+ one-hot labels), batched and prefetched."""
    import tensorflow as tf

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.resize(image, (size, size), method="area", antialias=True)
        return tf.cast(image, tf.float32)

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    if labels is not None:
        onehot = np.eye(int(num_classes), dtype=np.float32)[labels]
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(onehot)))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (load(p), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    counts[counts == 0] = 1.0
    weights = len(labels) / (num_classes * counts)
    return {i: float(w) for i, w in enumerate(weights)}
