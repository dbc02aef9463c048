"""The MLflow pyfunc model: image bytes in, class labels and scores out.

Bundles preprocessing and class names with the Keras model so that
``mlflow.pyfunc.load_model("models:/maskflow@champion").predict(frame)`` works in a fresh
process. Input: a DataFrame with an ``image`` column of base64-encoded (or raw) JPEG/PNG
bytes, one face image per row. Output: ``label``, ``score`` and ``prob_<class>`` per row;
rows that cannot be decoded get ``label`` "error" and an ``error`` reason, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc
import numpy as np


def encode_images(paths: Sequence[str | Path]) -> "pd.DataFrame":  # noqa: F821
    """A pyfunc input frame from image files (base64 strings in column ``image``)."""
    import pandas as pd

    return pd.DataFrame({"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]})


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from None
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


class MaskClassifier(mlflow.pyfunc.PythonModel):
    """Face image -> mask class. Artifacts: ``keras_model`` (.keras) and ``meta`` (JSON)."""

    def load_context(self, context) -> None:
        import keras

        from maskflow import backbones  # noqa: F401 - registers the Preprocess layer

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.classes: list[str] = list(meta["classes"])
        self.input_size: int = int(meta["input_size"])
        self.max_pixels: int = int(meta.get("max_pixels", 40_000_000))
        self.model = keras.models.load_model(context.artifacts["keras_model"], compile=False)

    def classify(self, faces: list[np.ndarray]) -> np.ndarray:
        """RGB face crops (any size) -> class probabilities, one batch."""
        from maskflow.faces import resize_square

        if not faces:
            return np.zeros((0, len(self.classes)), np.float32)
        batch = np.stack([resize_square(f, self.input_size) for f in faces]).astype(np.float32)
        return np.asarray(self.model(batch, training=False))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        from maskflow.imageio import DecodeError, decode_image

        column = model_input["image"] if isinstance(model_input, pd.DataFrame) else model_input
        faces, rows, errors = [], [], {}
        for i, value in enumerate(list(column)):
            try:
                faces.append(decode_image(_to_bytes(value), max_pixels=self.max_pixels).rgb)
                rows.append(i)
            except (DecodeError, ValueError) as exc:
                errors[i] = getattr(exc, "reason", None) or str(exc)
        probs = self.classify(faces)
        out = []
        by_row = dict(zip(rows, probs))
        for i in range(len(column)):
            if i in errors:
                out.append({"label": "error", "score": 0.0, "error": errors[i], **{f"prob_{c}": 0.0 for c in self.classes}})
            else:
                p = by_row[i]
                k = int(np.argmax(p))
                out.append({"label": self.classes[k], "score": float(p[k]), "error": "", **{f"prob_{c}": float(v) for c, v in zip(self.classes, p)}})
        return pd.DataFrame(out)
