"""A compiled classifier (.tflite) run through LiteRT (``ai_edge_litert``, XNNPACK kernels):
inference needs neither TensorFlow nor Keras, so ``detect``, the servers and batch actors
start in a fraction of a second. TensorFlow's own interpreter (deprecated) is the fallback
where LiteRT is not installed."""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np


def interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT is a dependency; TF's copy still runs the same files
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


@contextmanager
def native_stderr_muted():
    """The process's stderr (file descriptor 2) muted, for C++ notes printed whatever the
    log settings: LiteRT's "Created TensorFlow Lite XNNPACK delegate" on every interpreter,
    TensorFlow's oneDNN and CUDA notes on import. Failures still raise, with their message."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LiteModel:
    """Batches of any size through one interpreter, one call at a time (interpreters are
    not thread-safe). ``outputs``: the output tensors' indices in the caller's order
    (default: the file's)."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None, outputs: Sequence[int] | None = None) -> None:
        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        # OMP_NUM_THREADS, where a scheduler (Ray's actors, a container) set it, else every core.
        threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count()
        with native_stderr_muted():
            self._interpreter = interpreter_class()(model_content=content, num_threads=threads)
            self._interpreter.allocate_tensors()
        self._lock = threading.Lock()
        image = self._interpreter.get_input_details()[0]
        self._input, self._image_shape, self._batch = image["index"], list(image["shape"][1:]), None
        self.output_details = self._interpreter.get_output_details()
        self._outputs = list(outputs) if outputs is not None else [d["index"] for d in self.output_details]

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            if len(images) != self._batch:  # resizing costs microseconds; tensors are re-planned
                self._interpreter.resize_tensor_input(self._input, [len(images), *self._image_shape])
                self._interpreter.allocate_tensors()
                self._batch = len(images)
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(images, np.float32))
            self._interpreter.invoke()
            return [self._interpreter.get_tensor(i).copy() for i in self._outputs]
