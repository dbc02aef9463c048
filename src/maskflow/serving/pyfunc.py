"""The MLflow pyfunc model: images in, detected faces with mask labels out.

Bundles the Keras classifier, its preprocessing, the class names and the detector
settings, so that ``mlflow models serve -m models:/maskflow@champion`` and
``mlflow.pyfunc.load_model(...).predict(df)`` both detect and classify with the settings
the model was evaluated with.

Input: a DataFrame with an ``image`` column of base64-encoded JPEG/PNG/... bytes, one
image per row, and an optional ``source`` column echoed back. Output: one record per row,
the same shape as ``maskflow.detect --jsonl``: one record per face, at the model's
operating point, and the faces per class::

    {"source": "...", "frame": 0, "faces": [{"box": [x, y, w, h], "label": ..., "score": ...,
     "detector_score": ..., "probs": {class: p, ...}}], "counts": {class: n, ...}}

Params: ``min_score`` reports faces whose score x detector_score is at least this instead
of the stored operating point; ``all=true`` reports every candidate (the ranked list);
``faces_only=true`` classifies each image as one face (box = whole image). A
request with any undecodable, oversized or malformed row is refused as a whole with
``MlflowException(INVALID_PARAMETER_VALUE)``, which the scoring server answers with HTTP
400 naming the rows and reasons; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc
import pandas as pd

from maskflow.imageio import MIN_IMAGE_SIDE, DecodeError, Frame, decode_image
from maskflow.tracking import pip_requirements

# Keras, MLflow, pandas are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.

# Request limits (per image): base64 text length and decoded pixel count.
MAX_IMAGE_BYTES = 16 * 2**20
MAX_PIXELS = 40_000_000


def encode_images(paths: Sequence[str | Path], sources: bool = False) -> "pd.DataFrame":  # noqa: F821
    """A pyfunc input frame from image files (base64 strings in column ``image``)."""
    import pandas as pd

    frame = {"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]}
    if sources:
        frame["source"] = [str(p) for p in paths]
    return pd.DataFrame(frame)


def signature():
    """Input: ``image`` (base64 string) and optional ``source``; params ``faces_only``, ``min_score``, ``all``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "source", required=False)]),
        params=ParamSchema([ParamSpec("faces_only", "boolean", False), ParamSpec("min_score", "double", None),
                            ParamSpec("all", "boolean", False)]),
    )


def _to_bytes(value: Any, max_bytes: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        if len(value) * 3 // 4 > max_bytes:
            raise ValueError(f"image is {len(value) * 3 / 4 / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from None
    else:
        raise ValueError(f"expected a base64 string, got {type(value).__name__}")
    if len(data) > max_bytes:
        raise ValueError(f"image is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    if not data:
        raise ValueError("empty image")
    return data


class MaskDetectionModel(mlflow.pyfunc.PythonModel):
    """Detect faces and classify masks. Artifacts: ``keras_model`` (the classifier, .keras),
    ``tflite_model`` (the same, compiled: what detection runs; absent before 2026-12),
    ``meta`` (JSON: classes, input_size, detector settings, limits) and, with
    ``detector.backend=facedet``, ``face_detector`` (the trained detector, .keras); with
    a pretrained finder, ``finder_<i>`` (its ONNX files, checked by sha256 at load)."""

    def load_context(self, context) -> None:
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.artifacts: dict[str, str] = dict(context.artifacts)
        # Missing keys (older versions) take DetectorSettings' defaults.
        self.detector_settings: dict[str, Any] = dict(meta.get("detector") or {})
        self.max_pixels: int = int(meta.get("max_pixels", MAX_PIXELS))
        self.max_bytes: int = int(meta.get("max_image_bytes", MAX_IMAGE_BYTES))
        # The classifier compiled to TFLite, as evaluated, runs through LiteRT: no TensorFlow
        # at inference. Keras loads only for versions registered before it, and for the
        # trained face detector (detect.backend=facedet).
        self.model = None if "tflite_model" in self.artifacts else _load_keras(self.artifacts["keras_model"])
        face_path = self.artifacts.get("face_detector")
        self.face_model = _load_keras(face_path, detector=True) if face_path else None
        self._detectors: dict[bool, Any] = {}
        # One prediction at a time per loaded model: the finder (OpenCV's per-call input
        # size) and the TFLite interpreter keep state between calls, and servers such as
        # `mlflow models serve` call predict from several threads. A prediction already
        # keeps both cores busy, so taking turns costs no throughput here.
        self._lock = threading.Lock()

    def mask_model(self):
        """The classifier, its detector settings and the detectors' files (:class:`maskflow.detection.detector.MaskModel`)."""
        from maskflow.detection.detector import MaskModel

        return dataclasses.replace(MaskModel.from_artifacts(self.artifacts, self.model), face_model=self.face_model)

    def detector(self, faces_only: bool = False):
        """The detect-then-classify loop of ``maskflow.detect``, built once per mode; it
        reports every candidate, and :meth:`predict` applies the operating point."""
        if faces_only not in self._detectors:
            from maskflow.detection.detector import build_detector

            model = self.mask_model()
            self._detectors[faces_only] = build_detector(dataclasses.replace(model.settings, operating_point=None), model,
                                                         faces_only)
        return self._detectors[faces_only]

    def operating_point(self, params: dict[str, Any]) -> float | None:
        """The threshold a request reports faces at: its ``min_score``, else the stored
        operating point; None (every candidate) with ``all``."""
        from maskflow.detection.detector import reporting_threshold

        stored = (getattr(self, "detector_settings", None) or {}).get("operating_point")
        return reporting_threshold(stored, params.get("min_score"), bool(params.get("all")))

    # pd.DataFrame: MLflow infers no schema from it (signature() declares one), and asks for
    # no type hints either.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[dict]:
        from mlflow.exceptions import MlflowException

        if isinstance(model_input, pd.DataFrame) and len(model_input) == 0:
            raise MlflowException.invalid_parameter_value("the request has no rows: send at least one image")
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            raise MlflowException.invalid_parameter_value("expected rows with an 'image' column of base64-encoded images")
        sources = list(model_input["source"]) if "source" in model_input.columns else [None] * len(model_input)
        images, errors = [], []
        for i, value in enumerate(model_input["image"]):
            try:
                rgb = decode_image(_to_bytes(value, self.max_bytes), max_pixels=self.max_pixels).rgb
            except (DecodeError, ValueError) as exc:
                errors.append(f"row {i}: {exc}")
                continue
            if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:  # the rule prepare and the detect CLI apply
                errors.append(f"row {i}: tiny_image ({rgb.shape[1]}x{rgb.shape[0]} px, under {MIN_IMAGE_SIDE} px)")
            images.append(rgb)
        if errors:
            raise MlflowException.invalid_parameter_value(
                f"{len(errors)} of {len(model_input)} images refused (nothing was scored): " + "; ".join(errors[:20]))
        from maskflow.detection.detector import class_counts, reported

        params = params or {}
        faces_only = bool(params.get("faces_only", False))
        threshold = None if faces_only else self.operating_point(params)  # a crop is one face: always reported
        out = []
        with self._lock:
            detector = self.detector(faces_only)
            for i, (rgb, source) in enumerate(zip(images, sources)):
                name = str(source) if isinstance(source, str) and source else f"row-{i}"
                faces = reported(detector(Frame(name, 0, rgb, False)), threshold)
                out.append({"source": name, "frame": 0, "faces": faces, "counts": class_counts(faces, detector.classes)})
        return out


def _load_keras(path: str, detector: bool = False):
    import keras

    from maskflow import backbones  # noqa: F401 - registers the Preprocess layer

    if detector:
        from maskflow.detection import centernet  # noqa: F401 - registers the detector's layers
    return keras.models.load_model(path, compile=False)


# Compatibility: versions registered before PYFUNC_API 2 (maskflow 0.1, before 2026-11)
# pickled this class name; they load as the current model, settings they lack taking
# DetectorSettings' defaults. Remove once those versions are deleted from the registry.
MaskClassifier = MaskDetectionModel


def meta_for(classes: Sequence[str], input_size: int, model_name: str, detector: dict,
             face_classes: Sequence[str] = ()) -> dict:
    return {"classes": list(classes), "input_size": int(input_size), "model": model_name,
            "detector": dict(detector), "face_classes": list(face_classes), "max_pixels": MAX_PIXELS,
            "max_image_bytes": MAX_IMAGE_BYTES, "api": PYFUNC_API}


# Bumped when the pyfunc's input/output contract changes: a trained model already
# registered under an older contract is registered again rather than reused.
# 3: the trained face detector travels with the model; labels may be the scene classes;
# 4: one record per face with "probs", "counts" per row, the stored operating point (params
# min_score, all), predict safe from many threads; 5: loads without TensorFlow (the classifier
# through LiteRT, Keras only for the trained face detector).
PYFUNC_API = 5


def log_pyfunc(keras_model: Path, meta: dict, meta_path: Path, example_images: Sequence[Path], face_model: Path | None = None,
               finder_files: Sequence[Path] = (), tflite: Path | None = None):
    """Log the pyfunc model (with signature, input example and this package's code) to
    the active MLflow run; returns MLflow's ModelInfo."""

    meta_path.write_text(json.dumps(meta))
    package_dir = Path(__file__).parents[1]  # the whole maskflow package travels with the model
    artifacts = {"keras_model": str(keras_model), "meta": str(meta_path)}
    if face_model is not None:
        artifacts["face_detector"] = str(face_model)
    if tflite is not None:
        artifacts["tflite_model"] = str(tflite)
    for i, path in enumerate(finder_files):
        artifacts[f"finder_{i}"] = str(path)
    # MLflow's notes while logging: that a python_model is pickled (this class, by design:
    # its state is the artifacts) and that it checks the input example. Errors still show.
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        return mlflow.pyfunc.log_model(
            name="pyfunc",
            python_model=MaskDetectionModel(),
            artifacts=artifacts,
            code_paths=[str(package_dir)],
            signature=signature(),
            input_example=encode_images(example_images[:2]),
            pip_requirements=pip_requirements(),
        )
    finally:
        pyfunc_log.setLevel(level)
