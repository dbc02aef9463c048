"""The detector every entry point runs: a face finder, the crop classifier and the rules
that turn their output into what a reader gets (one record per face, at the model's
operating point).

``maskflow.detect`` (the CLI), the pyfunc model and the REST server, the batch job, the
evaluate stage, ``evaluate_scenes`` and ``calibrate`` all build it with
:func:`build_detector` from a :class:`MaskModel` (what a registered model carries).
"""
from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from maskflow.config import PROJECT_ROOT
from maskflow.detection.boxes import calibrate_box, iou
from maskflow.detection.finders import FINDERS, build_finder, mtcnn_finder
from maskflow.detection.settings import DetectorSettings
from maskflow.errors import ModelNotFound
from maskflow.faces import Face, crop_face, resize_square
from maskflow.imageio import Frame


class Classifier:
    """Face crops (already at ``input_size``) -> class probabilities, one batch per frame.
    Runs ``tflite`` (the same model compiled by finetune, carried by a registered model)
    when given, else the Keras model."""

    def __init__(self, keras_model, classes: Sequence[str], input_size: int, tflite: str | Path | None = None) -> None:
        self.classes = list(classes)
        self.input_size = int(input_size)
        self.runtime = "tflite" if tflite else "keras"
        self._lite = None
        self._call = None
        if tflite:
            from maskflow.detection.litert import LiteModel

            self._lite = LiteModel(tflite)
        else:
            import tensorflow as tf

            self._call = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32)
        batch = np.stack(crops).astype(np.float32)
        return self._lite(batch)[0] if self._lite is not None else self._call(batch).numpy()



def rank_score(record: Mapping) -> float:
    """What ranks a face and what the operating point thresholds: the finder's confidence
    that it is a face times the classifier's confidence in its label."""
    return float(record["detector_score"]) * float(record["score"])


def reported(records: Sequence[dict], min_score: float | None, same_face_iou: float = 0.5) -> list[dict]:
    """The records at an operating point: ranking score at least ``min_score``, not marked
    ``implausible`` by the finder's landmark check, and one per face (a box overlapping a
    higher-ranked one by more than ``same_face_iou``, as the trained detector's per-class
    peaks do, is the same face). None: all, the ranked list."""
    if min_score is None:
        return list(records)
    kept: list[dict] = []
    for r in sorted((r for r in records if rank_score(r) >= min_score and not r.get("implausible")), key=lambda r: -rank_score(r)):
        if all(iou(r["box"], k["box"]) <= same_face_iou for k in kept):
            kept.append(r)
    chosen = {id(r) for r in kept}
    return [r for r in records if id(r) in chosen]  # in the finder's order


def reporting_threshold(stored: float | None, min_score: float | None = None, every: bool = False) -> float | None:
    """The threshold a caller's answer is reported at: none with ``every`` (the full
    list), else ``min_score`` when given, else the model's stored operating point."""
    if every:
        return None
    return float(min_score) if min_score is not None else None if stored is None else float(stored)


def class_counts(records: Sequence[Mapping], classes: Sequence[str]) -> dict[str, int]:
    """Faces per class among the reported records (every class named, zeros included)."""
    counts = {c: 0 for c in classes}
    for r in records:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return counts


def one_per_face(records: list[dict]) -> list[dict]:
    """Each face's most likely record. Records are one per face; files written before
    2026-12-04 may hold a record per class of one face (same box and finder score), and
    counting faces counts such a face once."""
    best: dict[tuple, dict] = {}
    for r in records:
        face = (tuple(r["box"]), r["detector_score"])
        if face not in best or r["score"] > best[face]["score"]:
            best[face] = r
    return list(best.values())



@dataclass
class MaskModel:
    """What a registered maskflow model carries: the crop classifier, the detector settings
    it was evaluated with, the trained CenterNet (``experiment=centernet``) and the folders
    holding the pretrained finders' files (its own copies first)."""

    classifier: Classifier
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    face_model: Any = None
    face_classes: list[str] = field(default_factory=list)
    finder_dirs: list[str] = field(default_factory=list)

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str], keras_model: Any = None) -> "MaskModel":
        """From a registered model's artifact files (``MaskDetectionModel``'s): the classifier
        runs ``tflite_model`` through LiteRT where there is one, else ``keras_model``."""
        import json

        meta = json.loads(Path(artifacts["meta"]).read_text())
        # Missing keys (older versions) take DetectorSettings' defaults.
        return cls(Classifier(keras_model, meta["classes"], int(meta["input_size"]), artifacts.get("tflite_model")),
                   DetectorSettings.from_stored(meta.get("detector")), None, list(meta.get("face_classes") or []),
                   # The pretrained finders' model files travel as artifacts: no ../shared at run time.
                   sorted({str(Path(p).parent) for k, p in artifacts.items() if k.startswith("finder_")}))

    @classmethod
    def from_uri(cls, uri: str, tracking_uri: str | None = None) -> "MaskModel":
        """From an MLflow model URI (``models:/maskflow@champion``) or local model folder.
        A LiteRT model folder, or a ``models:/`` URI resolved before in an unchanged sqlite
        store, is read without MLflow (:mod:`maskflow.detection.model_files`)."""
        from maskflow.detection import model_files

        store = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT}/mlflow.db"
        folder = Path(uri) if ":/" not in uri else model_files.remembered(uri, store)  # a folder, or a URI resolved before
        artifacts = model_files.artifact_files(folder) if folder is not None else None
        if artifacts is not None:
            return cls.from_artifacts(artifacts)

        import mlflow

        mlflow.set_tracking_uri(store)
        from mlflow.exceptions import MlflowException

        path = list(sys.path)
        try:
            # suppress_warnings: no check of the model's pip requirements against this
            # environment, 0.3 s a start (`mlflow models serve` still checks them).
            loaded = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
        except (MlflowException, OSError) as exc:
            raise ModelNotFound.at(uri, mlflow.get_tracking_uri(), exc,
                                   "pass --model with a models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ URI or a "
                                   "model folder, and --tracking-uri for another store") from exc
        model = loaded.unwrap_python_model().mask_model()
        # MLflow put the model's packaged code first on sys.path. This process already runs
        # maskflow, but processes it spawns later (prepare's workers, a batch's actors)
        # would import that older copy instead: take it off again.
        sys.path[:] = path
        model_files.remember(uri, store)
        return model


def build_detector(settings: DetectorSettings, model: MaskModel, faces_only: bool = False, detect_every: int = 1,
                   finder_dirs: Sequence[str] = ()) -> "Detector":
    """The one place that chooses a finder for ``settings.backend``: the trained CenterNet
    the model carries (``facedet``), MTCNN, or a pretrained finder or fusion
    (:func:`maskflow.detection.finders.build_finder`, files from ``finder_dirs``, else the
    model's own), paired with the model's classifier."""
    labels = settings.labels if settings.backend == "facedet" and not faces_only else "classifier"
    calibration = settings.calibration()  # the finder's boxes -> the annotations' convention
    if faces_only:
        finder = None
    elif settings.backend == "facedet":
        from maskflow.detection.centernet import CenterNetFinder  # Keras: only for the trained detector

        if model.face_model is None:
            raise ValueError("detect.backend=facedet, but this model carries no trained face detector "
                             "(register one with the pipeline's facedet stage, or use --backend yunet)")
        if settings.peaks not in ("class", "face"):
            raise ValueError(f"unknown peaks {settings.peaks!r} (class | face)")
        # Per-class peaks name their class, so they only make sense with the detector's labels.
        finder = CenterNetFinder.from_settings(model.face_model, model.face_classes, settings,
                                               per_class=settings.peaks == "class" and labels == "detector")
    elif settings.backend == "mtcnn":
        finder = mtcnn_finder({"min_face": settings.min_face, "max_side": settings.max_side, "thresholds": settings.thresholds})
    elif settings.backend in FINDERS:
        finder = build_finder(settings.backend, settings.finders, list(finder_dirs) or model.finder_dirs)
    else:
        raise ValueError(f"unknown detector backend {settings.backend!r} (facedet | {' | '.join(FINDERS)})")
    return Detector(model.classifier, finder, settings, labels=labels, box_calibration=calibration, faces_only=faces_only,
                    detect_every=detect_every, face_classes=model.face_classes)


class Detector:
    """Find-then-label for one frame at a time, with optional box carry-over on video.

    ``finder`` (a :class:`maskflow.detection.Finder`) finds faces; ``labels`` says who
    labels them: ``classifier`` classifies their crops in one batch, ``detector`` takes the
    trained CenterNet's class maps (no crops), ``fuse`` averages the two distributions (a
    class one model lacks has probability 0 there). Build one with :func:`build_detector`."""

    def __init__(self, classifier: Classifier, finder, settings: DetectorSettings, labels: str = "classifier",
                 box_calibration: Mapping | None = None, faces_only: bool = False, detect_every: int = 1,
                 face_classes: Sequence[str] = ()) -> None:
        self.classifier = classifier
        self.face_classes = list(face_classes)  # the trained detector's classes (labels detector | fuse)
        self.finder = finder
        self.settings = settings
        self.labels = labels
        self.faces_only = faces_only
        self.min_confidence = settings.min_confidence
        self.margin = settings.margin
        self.box_calibration = dict(box_calibration) if box_calibration else None
        self.detect_every = max(1, detect_every)
        # Scoring only: the probability from which a face also stands for another class (mAP).
        self.runner_up = float(settings.runner_up) if settings.runner_up else None
        # The operating point: faces ranked below it are not reported (None: the full ranked list).
        # A face crop (faces_only) is one face by definition: always reported.
        self.min_score = None if settings.operating_point is None or faces_only else float(settings.operating_point)
        self._last_found: tuple[str, int] | None = None  # (source, frame) of the last detection
        self._last_labels: list[dict] = []  # records of the last labelled detection

    @property
    def classes(self) -> list[str]:
        """The labels this detector can output."""
        if self.labels == "detector":
            return self.face_classes
        if self.labels == "fuse":
            return self.face_classes + [c for c in self.classifier.classes if c not in self.face_classes]
        return self.classifier.classes

    def __call__(self, frame: Frame) -> list[dict]:
        """The faces of one frame a reader gets (at the operating point); on video between
        detections, the last frame's."""
        return self.report(self.ranked(frame))

    def ranked(self, frame: Frame) -> list[dict]:
        """Every candidate face of one frame, the ranked list that mAP is computed from."""
        return self.label(frame, self.find(frame))

    def report(self, records: list[dict]) -> list[dict]:
        """The records at this detector's operating point (all of them when it has none)."""
        return reported(records, self.min_score)

    def find(self, frame: Frame) -> list[Face] | None:
        """The faces of a frame (the face detector), or None on a video frame between detections."""
        last = self._last_found
        if frame.is_video and last and last[0] == frame.source and frame.index - last[1] < self.detect_every:
            return None
        self._last_found = (frame.source, frame.index)
        h, w = frame.rgb.shape[:2]
        if self.faces_only:
            return [Face((0, 0, w, h), 1.0)]
        # A still image gets the finder's stills effort (upscaling, tiles, zoomed pass).
        found = self.finder.find(frame.rgb, still=not frame.is_video)
        return [f for f in found if f.score >= self.min_confidence]

    def label(self, frame: Frame, faces: list[Face] | None) -> list[dict]:
        """Classify the found faces in one batch, one record each, every candidate (None:
        repeat the last labelled frame's); :meth:`report` applies the operating point."""
        if faces is None:
            return [dict(face) for face in self._last_labels]
        h, w = frame.rgb.shape[:2]
        classes = self.classes
        if self.labels == "detector":  # the detector's own class maps: no crops to classify
            probs = np.array([f.probs for f in faces], np.float64).reshape(len(faces), len(classes))
        else:
            size = self.classifier.input_size
            if self.faces_only:
                crops = [resize_square(frame.rgb, size)]
            else:
                crops = [crop_face(frame.rgb, f.box, self.margin, size) for f in faces]
            if self.settings.classify_flip and crops:  # the mirrored crops in the same batch, averaged in
                both = self.classifier(crops + [np.ascontiguousarray(c[:, ::-1]) for c in crops])
                probs = (both[: len(crops)] + both[len(crops):]) / 2
            else:
                probs = self.classifier(crops)  # every face of the frame in one batch
        if self.labels == "fuse":
            probs = np.array([_fuse(f.probs, self.face_classes, p, self.classifier.classes, classes)
                              for f, p in zip(faces, probs)]).reshape(len(faces), len(classes))
        out = []
        for face, p in zip(faces, probs):
            k = face.class_index() if self.labels == "detector" else int(np.argmax(p))
            box = face.box if self.faces_only else calibrate_box(face.box, self.box_calibration, w, h)
            record = {"box": [int(v) for v in box], "label": classes[k], "score": round(float(p[k]), 6),
                      "detector_score": round(float(face.score), 6),
                      "probs": {c: round(float(v), 6) for c, v in zip(classes, p)}}
            if not face.plausible:  # the finder's landmark check: in the ranked list only
                record["implausible"] = True
            out.append(record)
        self._last_labels = out
        return out


def _fuse(p_det: Sequence[float], det_classes: Sequence[str], p_cls: Sequence[float], cls_classes: Sequence[str],
          classes: Sequence[str]) -> np.ndarray:
    """The mean of two class distributions over ``classes`` (absent classes count as 0)."""
    a, b = dict(zip(det_classes, p_det)), dict(zip(cls_classes, p_cls))
    return np.array([(a.get(c, 0.0) + b.get(c, 0.0)) / 2 for c in classes], np.float32)


def pipelined(detector: Detector, frames: Iterator[Frame]) -> Iterator[tuple[Frame, list[dict]]]:
    """(frame, records) in order, with MTCNN on frame n+1 (a worker thread) overlapping
    the classification and output of frame n (this thread); TF releases the GIL, so the
    two run on both cores. Decoding already runs on its own reader thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="detect") as pool:
        pending: deque = deque()
        for frame in frames:
            pending.append((frame, pool.submit(detector.find, frame)))
            if len(pending) > 1:
                done, found = pending.popleft()
                yield done, detector.report(detector.label(done, found.result()))
        while pending:
            done, found = pending.popleft()
            yield done, detector.report(detector.label(done, found.result()))

