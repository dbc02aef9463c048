"""Stage ``export``: portable models, each re-scored on the test split, and the registry.

Formats: ``.keras``, TF SavedModel, TFLite float16 and TFLite int8 (calibrated on
train-split crops). Each export's test accuracy, change against the Keras model, size
and single-image latency are logged (``export_<format>_*``). A pyfunc model (Keras model
+ preprocessing + class names) is logged with a signature and input example and
registered as a version of ``export.registered_model``; a version already registered
for the same trained model is reused, so re-running does not pile up versions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from maskflow.cache import digest, sha256_bytes, sha256_file, stage_cache
from maskflow.contracts import Evaluation, Exported, PreparedData, StageContext, TrainedModel
from maskflow.datasets import split_arrays
from maskflow.detection.finders import file_sha256, finder_files
from maskflow.detection.litert import LiteModel, native_stderr_muted
from maskflow.detection.settings import DetectorSettings
from maskflow.detection.weights import resolve
from maskflow.evaluate import load_model
from maskflow.faces import resize_square
from maskflow.serving import pyfunc

# MLflow, Pillow are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.

log = logging.getLogger(__name__)


def _images(paths: Sequence[str], size: int) -> Iterable[np.ndarray]:
    from PIL import Image

    for p in paths:
        yield resize_square(np.asarray(Image.open(p).convert("RGB")), size).astype(np.float32)


def to_tflite(saved_model: Path, mode: str, representative: Sequence[str], size: int) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        # Full-integer kernels inside; float input/output so callers feed the same images.
        converter.representative_dataset = lambda: ([img[None]] for img in _images(representative, size))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    else:
        raise ValueError(mode)
    with native_stderr_muted():  # the quantizer's C++ prints its settings ("fully_quantize: 0, ...")
        return converter.convert()


class TFLiteClassifier:
    """A TFLite model behind ``predict(batch)``, through LiteRT as detection runs it (image
    by image, as on a device)."""

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        self.model = LiteModel(model_path, threads)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.array([self.model(image[None])[0][0] for image in batch])


def _score(predict, paths: Sequence[str], y: np.ndarray, size: int, batch: int = 32) -> tuple[float, float]:
    """(accuracy, median single-image latency ms) of a ``predict(batch) -> probs`` callable."""
    preds = []
    paths = list(paths)
    for i in range(0, len(paths), batch):
        preds.append(np.asarray(predict(np.stack(list(_images(paths[i : i + batch], size))))).argmax(axis=1))
    accuracy = float((np.concatenate(preds) == y).mean())
    one = np.stack(list(_images(paths[:1], size)))
    predict(one)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        predict(one)
        times.append(time.perf_counter() - t)
    return accuracy, float(np.median(times) * 1000)


EXPORT_VERSION = 1  # bump when the exported files or their scoring change


def run(cfg: DictConfig, ctx: StageContext) -> Exported:
    """Export and re-score each format (cached by the model's and data's content), then
    register the pyfunc model (a version of the same files and settings is reused)."""
    import mlflow

    prepared: PreparedData = ctx.need("prepare")
    trained: TrainedModel = ctx.need("ensemble")
    evaluation: Evaluation = ctx.need("evaluate")
    out = ctx.run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    key = digest({"version": EXPORT_VERSION, "model": sha256_file(trained.model_path), "data": prepared.digest,
                  "export": {k: v for k, v in OmegaConf.to_container(cfg.export, resolve=True).items()
                             if k in ("formats", "representative_samples", "eval_limit")}})
    result, cached = stage_cache(ctx.cache_dir, "export", key, out, lambda: _export(cfg, ctx, out))
    metrics = result["metrics"]
    artifacts = {fmt: out / name for fmt, name in result["artifacts"].items()}
    log.info("export: %s%s", "cached; " if cached else "", {k: round(v, 4) for k, v in metrics.items()})
    version = None
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
        for fmt, path in artifacts.items():
            if path.is_dir():
                mlflow.log_artifacts(str(path), f"export/{path.name}")
            else:
                mlflow.log_artifact(str(path), "export")
        version = _register(cfg, ctx, trained, prepared, evaluation, out)
    return Exported(artifacts=artifacts, registered_model=str(cfg.export.registered_model) if version else None,
                    version=version, alias=None)


def _export(cfg: DictConfig, ctx: StageContext, out: Path) -> dict:
    """Write every format into ``out`` and score it; returns metrics and artifact names."""
    import tensorflow as tf

    prepared: PreparedData = ctx.need("prepare")
    trained: TrainedModel = ctx.need("ensemble")
    ex = cfg.export
    size, classes = trained.input_size, list(trained.classes)
    model = load_model(trained.model_path)
    paths, y = split_arrays(prepared.manifest, "test", classes)
    if ex.get("eval_limit"):
        paths, y = paths[: int(ex.eval_limit)], y[: int(ex.eval_limit)]
    rep_paths, _ = split_arrays(prepared.manifest, "train", classes)
    rep_paths = sorted(rep_paths)[:: max(1, len(rep_paths) // int(ex.representative_samples))][: int(ex.representative_samples)]

    artifacts: dict[str, Path] = {}
    metrics: dict[str, float] = {}
    keras_call = tf.function(lambda b: model(b, training=False))  # graph mode, as a server would run it
    base_acc, base_ms = _score(lambda b: keras_call(tf.constant(b)).numpy(), paths, y, size)
    metrics.update(export_keras_test_accuracy=base_acc, export_keras_latency_ms_b1=base_ms)
    formats = list(ex.formats)
    if "keras" in formats:
        artifacts["keras"] = out / "model.keras"
        shutil.copy(trained.model_path, artifacts["keras"])
    saved = out / "saved_model"
    if {"savedmodel", "tflite_fp16", "tflite_int8"} & set(formats):
        if saved.exists():
            shutil.rmtree(saved)
        model.export(str(saved), format="tf_saved_model", verbose=False)
        artifacts["savedmodel"] = saved
        if "savedmodel" in formats:
            served = tf.saved_model.load(str(saved))
            acc, ms = _score(lambda b: served.serve(tf.constant(b)).numpy(), paths, y, size)
            metrics.update(export_savedmodel_test_accuracy=acc, export_savedmodel_latency_ms_b1=ms)
    for fmt in ("tflite_fp16", "tflite_int8"):
        if fmt not in formats:
            continue
        target = out / f"model_{fmt.split('_')[1]}.tflite"
        target.write_bytes(to_tflite(saved, fmt.split("_")[1], rep_paths, size))
        artifacts[fmt] = target
        acc, ms = _score(TFLiteClassifier(target).predict, paths, y, size)
        metrics.update({f"export_{fmt}_test_accuracy": acc, f"export_{fmt}_latency_ms_b1": ms,
                        f"export_{fmt}_size_mb": target.stat().st_size / 2**20})
    for fmt in formats:
        if f"export_{fmt}_test_accuracy" in metrics:
            metrics[f"export_{fmt}_accuracy_delta"] = metrics[f"export_{fmt}_test_accuracy"] - base_acc
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return {"metrics": metrics, "artifacts": {fmt: path.name for fmt, path in artifacts.items()}}


def _register(cfg, ctx, trained: TrainedModel, prepared: PreparedData, evaluation: Evaluation, out: Path) -> str:
    """Log the pyfunc model and register it, reusing a version of the same trained model."""

    tags = {"backbone": cfg.model.name, "data_digest": prepared.digest, "data_name": cfg.data.name,
            "run_id": ctx.run_id or "",
            **{k: f"{v:.6g}" for k, v in evaluation.metrics.items()
               if k.startswith(("test_", "scenes_")) or k in ("latency_ms_b1", "params_total", "operating_point")}}
    facedet = ctx.results.get("facedet")
    face_model = facedet.model_path if facedet is not None and str(cfg.detect.get("backend", "mtcnn")) == "facedet" else None
    if face_model is not None:
        tags.update({k: f"{v:.6g}" for k, v in facedet.metrics.items()})
    detector = OmegaConf.to_container(cfg.detect, resolve=True)
    if evaluation.box_calibration:  # fitted on a scene set's train split: boxes in its convention
        detector = DetectorSettings.from_stored(detector).with_calibration(evaluation.box_calibration).to_dict()
    if "operating_point" in evaluation.metrics:  # chosen on val by evaluate (or fixed by detect.operating_point)
        detector["operating_point"] = float(evaluation.metrics["operating_point"])
    meta = pyfunc.meta_for(trained.classes, trained.input_size, cfg.model.name, detector,
                            facedet.classes if face_model is not None else ())
    examples = split_arrays(prepared.manifest, "test", trained.classes)[0][:2]
    return register_pyfunc(str(cfg.export.registered_model), trained.model_path, meta, out / "pyfunc_meta.json",
                           [Path(p) for p in examples], tags, face_model, _finder_files(cfg), trained.tflite_path)


def _finder_files(cfg) -> list[Path]:
    """The pretrained finder's model files (checked by sha256), to travel inside the model."""

    finders = cfg.detect.get("finders") or {}
    names = finder_files(str(cfg.detect.get("backend", "mtcnn")), finders)
    return [resolve(name, file_sha256(finders, name), [cfg.paths.face_weights_dir]) for name in names]


def register_pyfunc(name: str, keras_model: Path, meta: dict, meta_path: Path, examples: Sequence[Path], tags: dict[str, str],
                    face_model: Path | None = None, finder_files: Sequence[Path] = (), tflite: Path | None = None) -> str:
    """Log the pyfunc to the active run and register it as a version of ``name``; a
    version of the same Keras files (classifier, face detector) with the same metadata
    (classes, detector settings) under the same pyfunc contract is reused instead."""
    import mlflow
    from mlflow.tracking import MlflowClient

    model_sha = sha256_file(keras_model)
    if face_model is not None:  # the served model is the pair
        model_sha = sha256_bytes(f"{model_sha}:{sha256_file(face_model)}".encode())
    if tflite is not None:  # the classifier detection runs
        model_sha = sha256_bytes(f"{model_sha}:tflite:{sha256_file(tflite)}".encode())
    # ... and what it does with them: other detector settings make another version.
    model_sha = sha256_bytes(f"{model_sha}:{json.dumps(meta, sort_keys=True, default=str)}".encode())
    client = MlflowClient()
    try:
        existing = client.search_model_versions(f"name = '{name}' and tag.model_sha256 = '{model_sha}'")
    except Exception:  # noqa: BLE001 - older servers lack tag filters; register anew
        existing = []
    existing = [v for v in existing if v.tags.get("pyfunc_api") == str(pyfunc.PYFUNC_API)]
    identity = {"model_sha256": model_sha, "pyfunc_api": str(pyfunc.PYFUNC_API), "classifier_sha256": sha256_file(keras_model)}
    present: dict[str, str] = {}
    if existing:
        chosen = max(existing, key=lambda v: int(v.version))
        version, present = str(chosen.version), dict(chosen.tags)
        log.info("export: model already registered as %s version %s", name, version)
    else:
        info = pyfunc.log_pyfunc(keras_model, meta, meta_path, examples, face_model, finder_files, tflite)
        # The identity tags go on with the registration itself, so a run killed right after
        # it leaves a version the next run finds (and finishes below) instead of a duplicate.
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints what the line below logs
            version = str(mlflow.register_model(info.model_uri, name, tags=identity).version)
        log.info("export: registered %s version %s", name, version)
    for key, value in {**tags, **identity}.items():  # completes a version a killed run left without its tags
        if key not in present:
            client.set_model_version_tag(name, version, key, value)
    mlflow.set_tag("registered_version", version)
    return version
