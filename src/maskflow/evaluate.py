"""Stage ``evaluate``: honest test-split metrics, cross-dataset metrics, cost of the model.

Metrics land in the pipeline's MLflow run as ``test_*`` (the leak-free test split) and
``xtest_<set>_*`` (every usable sample of each set in ``evaluate.extra``, which is never
trained or tuned on), next to complexity (``params_total``, ``model_size_mb``,
``flops_b1``) and CPU cost (``latency_ms_b1``, ``throughput_b32``). Plots go under
``evaluate/``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from maskflow import prepare
from maskflow.annotations import FORMATS as SCENE_FORMATS
from maskflow.cache import atomic_write_json, digest, read_json, sha256_file, stage_cache
from maskflow.contracts import Evaluation, PreparedData, StageContext, TrainedModel
from maskflow.data import read_manifest, scene_set
from maskflow.datasets import image_dataset, split_arrays
from maskflow.detection.calibration import KEYS as CALIBRATION_KEYS
from maskflow.detection.calibration import fit_calibration
from maskflow.detection.detector import Classifier, MaskModel, build_detector
from maskflow.detection.settings import DetectorSettings
from maskflow.imageio import DecodeError, Frame, read_image
from maskflow.scoring import (
    at_operating_point,
    choose_operating_point,
    detect_scenes,
    face_outcomes,
    run_scenes,
    scene_metrics,
)

# MLflow, Pillow, matplotlib, scikit-learn are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- metrics


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by count."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs((pred[mask] == y[mask]).mean() - conf[mask].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], bins: int = 10) -> dict[str, float]:
    """Accuracy, macro F1, per-class P/R/F1, ROC-AUC (one-vs-rest), log loss and ECE.

    Only classes present in ``y`` enter per-class and AUC numbers (a cross-dataset set
    may lack one); predictions of absent classes still count as errors."""
    from sklearn.metrics import f1_score, log_loss, precision_recall_fscore_support, roc_auc_score

    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    present = sorted(set(y.tolist()))
    out: dict[str, float] = {"accuracy": float((pred == y).mean()), "n": float(len(y))}
    out["f1_macro"] = float(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i in present:
        out[f"precision_{classes[i]}"], out[f"recall_{classes[i]}"], out[f"f1_{classes[i]}"] = float(p[i]), float(r[i]), float(f[i])
    # float32 softmax rows sum to 1 only within ~1e-7: renormalised in float64 for sklearn.
    clipped = np.clip(np.asarray(probs, np.float64), 1e-7, 1.0)
    out["loss"] = float(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=labels))
    out["ece"] = expected_calibration_error(probs, y, bins)
    if len(present) == 2 and len(classes) == 2:
        out["roc_auc"] = float(roc_auc_score(y, probs[:, 1]))
    elif len(present) > 2:
        sub = probs[:, present] / np.clip(probs[:, present].sum(axis=1, keepdims=True), 1e-12, None)
        out["roc_auc"] = float(roc_auc_score(y, sub, multi_class="ovr", labels=present))
    elif len(present) == 2:
        a, b = present
        out["roc_auc"] = float(roc_auc_score((y == b).astype(int), probs[:, b] / np.clip(probs[:, a] + probs[:, b], 1e-12, None)))
    return out


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return matrix


# ------------------------------------------------------------------------ model costs


def latency(model, size: int, runs: int) -> dict[str, float]:
    """Median single-image latency (ms) and batch-32 throughput (images/s) on this CPU."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False))
    one = tf.random.uniform((1, size, size, 3), 0, 255, seed=0)
    batch = tf.random.uniform((32, size, size, 3), 0, 255, seed=0)
    for _ in range(3):
        call(one).numpy()
    call(batch).numpy()
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        call(one).numpy()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    reps = max(1, runs // 10)
    for _ in range(reps):
        call(batch).numpy()
    per_batch = (time.perf_counter() - t) / reps
    return {"latency_ms_b1": float(np.median(times) * 1000), "latency_ms_b1_p95": float(np.percentile(times, 95) * 1000),
            "throughput_b32": float(32 / per_batch)}


def flops(model, size: int) -> float | None:
    """Floating-point operations of one forward pass (TF profiler on the frozen graph)."""
    from maskflow.detection.litert import native_stderr_muted

    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        # TF 1's profiler: its deprecation notes (TF's log) and grappler's session notes
        # (C++ stderr) are nothing a user acts on.
        tf_log.setLevel(logging.ERROR)

        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))
        builder = tf.compat.v1.profiler.ProfileOptionBuilder
        options = builder(builder.float_operation()).with_empty_output().build()
        with native_stderr_muted():
            graph = convert_variables_to_constants_v2(concrete).graph
            info = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
        return float(info.total_float_ops) if info.total_float_ops else None
    except Exception as exc:  # noqa: BLE001 - FLOPs are optional, never a failure
        log.warning("FLOPs not computed: %s", exc)
        return None
    finally:
        tf_log.setLevel(level)


# ------------------------------------------------------------------------------ plots


def _plots(out: Path, y, probs, classes, cm, history: list[dict[str, float]], paths: Sequence[str], bins: int, worst: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from sklearn.metrics import precision_recall_curve, roc_curve

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.6 * n + 2, 1.6 * n + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(n), classes, rotation=30, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    fig.savefig(out / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4))
    for i, name in enumerate(classes):
        positives = (y == i).astype(int)
        if 0 < positives.sum() < len(y):
            fpr, tpr, _ = roc_curve(positives, probs[:, i])
            prec, rec, _ = precision_recall_curve(positives, probs[:, i])
            ax_roc.plot(fpr, tpr, label=name)
            ax_pr.plot(rec, prec, label=name)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    ax_roc.legend()
    ax_pr.legend()
    fig.savefig(out / "roc_pr.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    centers, accs = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            centers.append(conf[mask].mean())
            accs.append(correct[mask].mean())
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(centers, accs, "o-")
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability (test)")
    fig.savefig(out / "reliability.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    if history:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        epochs = range(1, len(history) + 1)
        for metric, ax in zip(("loss", "accuracy"), axes):
            for prefix in ("", "val_"):
                if prefix + metric in history[0]:
                    ax.plot(epochs, [h[prefix + metric] for h in history], "o-", label=prefix + metric)
            ax.set(xlabel="epoch", title=f"fine-tuning {metric}")
            ax.legend()
        fig.savefig(out / "training_curves.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    wrong = np.nonzero(~correct)[0]
    wrong = wrong[np.argsort(-conf[wrong])][:worst]
    if len(wrong):
        cols = min(8, len(wrong))
        rows = int(np.ceil(len(wrong) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, i in zip(axes.ravel(), wrong):
            ax.imshow(Image.open(paths[i]))
            ax.set_title(f"true {classes[y[i]]}\npred {classes[probs[i].argmax()]} {conf[i]:.2f}", fontsize=6)
        fig.suptitle("most confident mistakes (test)", fontsize=9)
        fig.savefig(out / "worst_mistakes.png", dpi=100, bbox_inches="tight")
        plt.close(fig)


# ------------------------------------------------------------------------- the stage


def predict(model, paths: Sequence[str], size: int, batch_size: int) -> np.ndarray:
    if not paths:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.asarray(model.predict(image_dataset(paths, size, batch_size), verbose=0), dtype=np.float64)


def load_model(path: Path):
    import keras

    from maskflow import backbones  # noqa: F401 - registers the Preprocess layer

    return keras.models.load_model(path, compile=False)


# Bump when what the stage computes changes, so cached evaluations are not reused.
EVALUATE_VERSION = 8  # 3: per-part test metrics, any finder on close-ups (xtest_<set>_detect_*); 4: detection's classifier
# through TFLite; 5: scene detection precision and accuracy count each face once (detect.one_per_face); 6: one record per
# face with its class probabilities, the operating point chosen on val (operating_point, scenes_*op_*); 7: scenes in any
# label format, AP at IoU 0.3 too, every rate with its interval, the box calibration fitted on a scene set (box_calibration_*);
# 8: the val scenes' AP per class with intervals (scenes_val_ap50_*)


def run(cfg: DictConfig, ctx: StageContext) -> Evaluation:
    """Evaluate the fine-tuned model (and the detector it is registered with); cached by
    content: the model files, the data digest and the evaluate/detect settings."""
    import mlflow

    prepared: PreparedData = ctx.need("prepare")
    trained: TrainedModel = ctx.need("ensemble")
    facedet = ctx.results.get("facedet")
    out = ctx.run_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    key = digest({"version": EVALUATE_VERSION, "model": sha256_file(trained.model_path), "data": prepared.digest,
                  "tflite": sha256_file(trained.tflite_path) if trained.tflite_path else None,
                  "face_model": sha256_file(facedet.model_path) if facedet is not None and facedet.model_path else None,
                  "evaluate": OmegaConf.to_container(cfg.evaluate, resolve=True),
                  "detect": OmegaConf.to_container(cfg.detect, resolve=True), "data_name": str(cfg.data.name),
                  "scene_sets": _scene_sets(cfg, ctx)})
    metrics, cached = stage_cache(ctx.cache_dir, "evaluate", key, out, lambda: _evaluate(cfg, ctx, out))
    if cached:
        log.info("evaluate: cached result %s (same model, data and settings)", key)
    log.info("evaluate: test_accuracy %.4f, test_f1_macro %.4f, latency %.1f ms; %s", metrics["test_accuracy"],
             metrics["test_f1_macro"], metrics["latency_ms_b1"],
             {k: round(v, 4) for k, v in metrics.items() if k.endswith("accuracy") or k == "scenes_map50"})
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
        if "operating_point" in metrics:  # the value stored with the registered model
            mlflow.log_param("operating_point", metrics["operating_point"])
        mlflow.log_artifacts(str(out), "evaluate")
    calibration = {k: metrics[f"box_calibration_{k}"] for k in CALIBRATION_KEYS} if "box_calibration_dx" in metrics else None
    return Evaluation(metrics=metrics, report_dir=out, box_calibration=calibration)


def _scene_sets(cfg: DictConfig, ctx: StageContext) -> dict[str, str]:
    """Content digests of the scene sets this stage reads (evaluate.scenes.data,
    evaluate.box_calibration.data): their split and their labels, boxes included, so a
    relabelled set is evaluated again."""
    names = set()
    if cfg.evaluate.get("scenes") and cfg.evaluate.scenes.get("enabled"):
        names.add(str(cfg.evaluate.scenes.data))
    if cfg.evaluate.get("box_calibration") and cfg.evaluate.box_calibration.get("data"):
        names.add(str(cfg.evaluate.box_calibration.data))
    out = {}
    for name in sorted(names):
        data_cfg, prepared = prepare.prepared_for(cfg, ctx, name, f"xtest_{name.replace('-', '_')}")
        out[name] = digest([prepared.digest, [(im.rel, im.faces) for im in scene_set(data_cfg).images]])
    return out


def _evaluate(cfg: DictConfig, ctx: StageContext, out: Path) -> dict[str, float]:

    prepared: PreparedData = ctx.need("prepare")
    trained: TrainedModel = ctx.need("ensemble")
    ev = cfg.evaluate
    model = load_model(trained.model_path)
    size, classes = trained.input_size, list(trained.classes)

    paths, y = split_arrays(prepared.manifest, "test", classes)
    if len(paths) == 0:
        raise RuntimeError("the test split is empty: nothing to evaluate")
    probs = predict(model, paths, size, int(ev.batch_size))
    metrics = {f"test_{k}": v for k, v in classification_metrics(y, probs, classes, int(ev.calibration_bins)).items()}
    # A union of sets: each part's own test split too (test_<part>_*), side by side.
    test_rows = [r for r in read_manifest(prepared.manifest, "test") if r["label"] in classes]
    for part in sorted({r.get("part") or "" for r in test_rows} - {""}):
        mask = np.array([r.get("part") == part for r in test_rows])
        part_metrics = classification_metrics(y[mask], probs[mask], classes, int(ev.calibration_bins))
        metrics.update({f"test_{part}_{k}": v for k, v in part_metrics.items() if k in ("accuracy", "f1_macro", "nll")})
        metrics[f"test_{part}_n"] = float(mask.sum())
    cm = confusion(y, probs.argmax(axis=1), len(classes))
    history = read_json(trained.history).get("history", [])
    _plots(out, y, probs, classes, cm, history, paths, int(ev.calibration_bins), int(ev.worst_mistakes))
    np.savetxt(out / "confusion_matrix.csv", cm, fmt="%d", delimiter=",", header=",".join(classes))

    metrics["params_total"] = float(model.count_params())
    metrics["model_size_mb"] = trained.model_path.stat().st_size / 2**20
    n_flops = flops(model, size)
    if n_flops:
        metrics["flops_b1"] = n_flops
    metrics.update(latency(model, size, int(ev.latency_runs)))

    for name in ev.get("extra") or []:
        metrics.update(_cross_dataset(cfg, ctx, model, size, classes, str(name)))
    if ev.get("scenes") and ev.scenes.get("enabled"):
        metrics.update(_scenes(cfg, ctx, model, size, classes, out))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _scenes(cfg: DictConfig, ctx: StageContext, model, size: int, classes: list[str], out: Path) -> dict[str, float]:
    """Detect-then-classify on the held-out split of a VOC scene set (scenes_* metrics from
    the full ranked list), the operating point chosen on its val split, and what a reader
    gets at that point on both splits (scenes_val_op_*, scenes_op_*)."""

    sc = cfg.evaluate.scenes
    data_cfg, prepared = prepare.prepared_for(cfg, ctx, str(sc.data), f"xtest_{str(sc.data).replace('-', '_')}")
    limit = int(sc.limit) if sc.get("limit") else None
    scenes = scene_set(data_cfg)

    def items(split: str):
        return scenes.items({r["path"] for r in read_manifest(prepared.manifest, split)}, limit)

    # conf/detect, as registered with the model: what is evaluated is what gets served.
    facedet = ctx.results.get("facedet")
    face_model = facedet.model_path if facedet is not None else None
    trained: TrainedModel = ctx.need("ensemble")
    settings = DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True))
    mask_model = MaskModel(Classifier(model, classes, size, trained.tflite_path), settings,
                           face_model, list(facedet.classes) if face_model else [], [str(cfg.paths.face_weights_dir)])
    calibration: dict[str, float] = {}
    if cfg.evaluate.get("box_calibration") and cfg.evaluate.box_calibration.get("data"):
        calibration = _fit_box_calibration(cfg, ctx, build_detector(dataclasses.replace(settings, operating_point=None),
                                                                    mask_model))
        settings = settings.with_calibration({k: calibration[f"box_calibration_{k}"] for k in CALIBRATION_KEYS})
    # mAP ranks every candidate: the detector evaluated reports them all.
    detector = build_detector(dataclasses.replace(settings, operating_point=None), mask_model)
    test_items = items(str(sc.split))
    test_results: list = []
    scored = run_scenes(detector, test_items, out / "scenes_predictions.jsonl", resamples=int(sc.get("bootstrap", 0)),
                        results=test_results)
    atomic_write_json(out / "scenes_metrics.json", scored)
    log.info("evaluate: scenes (%d %s images of %s): %s", len(test_items), sc.split, sc.data,
             {k: round(v, 4) for k, v in scored["metrics"].items()})
    metrics = {**scored["metrics"], **calibration}
    metrics.update(_operating_point(cfg, detector, settings, items, test_results, out))
    if str(cfg.data.get("format", "folders")) not in SCENE_FORMATS and str(sc.data) != cfg.data.name:
        metrics.update(_detector_on_test_images(cfg, ctx, detector, limit))
    return metrics


def _fit_box_calibration(cfg: DictConfig, ctx: StageContext, detector) -> dict[str, float]:
    """The finder's box calibration fitted on the train split of ``evaluate.box_calibration.data``
    (a scene set in its own box convention, a user's say), so the registered model reports
    boxes as that set's annotators draw them; ``box_calibration_*`` metrics."""

    name = str(cfg.evaluate.box_calibration.data)
    data_cfg, prepared = prepare.prepared_for(cfg, ctx, name, f"xtest_{name.replace('-', '_')}")
    limit = cfg.evaluate.box_calibration.get("limit")
    train = scene_set(data_cfg).items({r["path"] for r in read_manifest(prepared.manifest, "train")}, int(limit) if limit else None)
    images = []
    for path, truths in tqdm(train, desc="box calibration", unit="image", disable=None, leave=False):
        try:
            rgb = read_image(path).rgb
        except DecodeError:
            continue
        faces = detector.find(Frame(str(path), 0, rgb, False)) or []
        images.append(([f.box for f in faces], [box for _, box in truths], (rgb.shape[1], rgb.shape[0])))
    calibration, fit = fit_calibration(images, detector.settings.calibration())
    log.info("evaluate: box calibration fitted on %d train scenes of %s: %s (%d faces, median IoU %.3f)", len(images), name,
             calibration, fit["pairs"], fit["median_iou"])
    return {**{f"box_calibration_{k}": v for k, v in calibration.items()}, "box_calibration_pairs": fit["pairs"],
            "box_calibration_median_iou": fit["median_iou"], "box_calibration_images": float(len(images))}


def _operating_point(cfg: DictConfig, detector, settings: DetectorSettings, items, test_results: list, out: Path
                     ) -> dict[str, float]:
    """The threshold on the ranking score at which faces are reported: ``detect.operating_point``
    when set, else chosen on the scenes' ``evaluate.operating_point.split`` (val) by its
    rule; never on the test split. Logged with precision, recall and F1 of box and label
    at it on that split and on the test split, with bootstrap intervals."""

    op = cfg.evaluate.operating_point
    if str(op.split) == str(cfg.evaluate.scenes.split):
        raise ValueError(f"evaluate.operating_point.split is the scored split ({op.split}): choose the operating point on val")
    resamples = int(cfg.evaluate.scenes.get("bootstrap", 0))
    chosen_results, skipped, _ = detect_scenes(detector, items(str(op.split)), out / f"scenes_{op.split}_predictions.jsonl")
    chosen_on = face_outcomes(chosen_results, detector.classes)
    if settings.operating_point is not None:
        threshold = float(settings.operating_point)
    elif not any(len(o.scores) for o in chosen_on):
        log.warning("evaluate: no face found on the %d %s scenes: no operating point, the model reports every candidate",
                    len(chosen_results), op.split)
        return {}
    else:
        threshold = choose_operating_point(chosen_on, str(op.rule), op.get("precision"))
    metrics = {"operating_point": round(threshold, 6), f"scenes_{op.split}_images_skipped": float(skipped)}
    # The choosing split's own scores, per class with intervals: what settings are chosen on.
    chosen = scene_metrics(chosen_results, detector.classes, runner_up=detector.runner_up, resamples=resamples)["metrics"]
    metrics.update({f"scenes_{op.split}_{k[len('scenes_'):]}": v for k, v in chosen.items() if k.startswith(("scenes_map", "scenes_ap"))})
    for prefix, outcomes in ((f"scenes_{op.split}_op", chosen_on), ("scenes_op", face_outcomes(test_results, detector.classes))):
        metrics.update({f"{prefix}_{k}": v for k, v in at_operating_point(outcomes, threshold, resamples).items()})
    log.info("evaluate: operating point %.4f (%s on %s): %s", threshold,
             "fixed by detect.operating_point" if settings.operating_point is not None else f"rule {op.rule}", op.split,
             {k: round(v, 4) for k, v in metrics.items() if k.endswith(("_precision", "_recall", "_f1", "per_100"))})
    return metrics


def _detector_on_test_images(cfg: DictConfig, ctx: StageContext, detector, limit: int | None) -> dict[str, float]:
    """The detector on the run's own whole test photos of close-ups (a folder set, or the
    folder parts of a union), one labelled face each: how detect-then-label does on
    photos unlike the scenes. ``found``: images with a face; ``accuracy``: the top face's
    label is the image's. Tagged ``xtest_<set>_detect_*``."""

    prepared: PreparedData = ctx.need("prepare")
    # Close-ups only: whole-image rows of folder sets (a union's scene part has VOC boxes).
    rows = [r for r in read_manifest(prepared.manifest, "test") if r["face"] in ("mtcnn", "whole_image")]
    rows = rows[:limit]
    found = correct = skipped = 0
    for r in tqdm(rows, desc="close-ups", unit="image", disable=None, leave=False):
        try:
            rgb = read_image(Path(str(cfg.data.root)) / r["path"]).rgb
        except DecodeError:
            skipped += 1
            continue
        faces = detector(Frame(r["path"], 0, rgb, False))
        if faces:
            found += 1
            correct += int(max(faces, key=lambda f: f["detector_score"])["label"] == r["label"])
    n = max(1, len(rows) - skipped)
    names = sorted({r["path"].split("/")[0] if r.get("part") else str(cfg.data.name) for r in rows})
    tag = f"xtest_{'_'.join(names).replace('-', '_')}_detect"
    result = {f"{tag}_images": float(n), f"{tag}_found": found / n, f"{tag}_accuracy": correct / n,
              f"{tag}_accuracy_found": correct / max(1, found)}
    log.info("evaluate: detect-then-label on %d whole close-up test photos of %s: %s", n, cfg.data.name,
             {k: round(v, 4) for k, v in result.items()})
    return result


def _cross_dataset(cfg: DictConfig, ctx: StageContext, model, size: int, classes: list[str], name: str) -> dict[str, float]:
    """Every usable sample of another data config, scored with this model's classes."""

    if name == cfg.data.name:
        raise ValueError(f"evaluate.extra '{name}' is the training set itself")
    tag = f"xtest_{name.replace('-', '_')}"
    _, extra = prepare.prepared_for(cfg, ctx, name, tag)
    index = {c: i for i, c in enumerate(classes)}
    rows = [r for r in read_manifest(extra.manifest)]
    usable = [r for r in rows if r["label"] in index]
    dropped = len(rows) - len(usable)
    if not usable:
        log.warning("%s: no sample carries one of the model's classes %s", tag, classes)
        return {f"{tag}_n": 0.0}
    y = np.array([index[r["label"]] for r in usable])
    probs = predict(model, [r["crop"] for r in usable], size, int(cfg.evaluate.batch_size))
    metrics = {f"{tag}_{k}": v for k, v in classification_metrics(y, probs, classes, int(cfg.evaluate.calibration_bins)).items()}
    metrics[f"{tag}_dropped_other_classes"] = float(dropped)
    return metrics
