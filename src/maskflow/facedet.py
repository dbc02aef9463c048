"""A trained face-and-mask detector: CenterNet heads on a ``keras.applications`` backbone.

MTCNN (trained on unmasked faces) misses about a third of the faces in crowded scenes
with masks, and the close-up classifier confuses many small scene faces. This detector
is fine-tuned from ImageNet weights on the train split of a VOC scene set: one heatmap
per class at stride 4 (a face is a peak, its class the heatmap it peaks in), plus box
size and sub-pixel offset at each peak (Zhou et al., "Objects as Points", 2019). Scenes
with rare classes are sampled more often (``mask_weared_incorrect`` has ~3% of the
faces). It runs fully convolutional on the whole frame, so its cost depends on pixels,
not on faces. (A single face map with a separate class head scored lower on the val
split: scenes_map50 0.35 against 0.42, same budget.)

Box records match :class:`maskflow.faces.Face` plus class probabilities, so
:mod:`maskflow.detect` can use it in place of MTCNN.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf
from keras import layers
from omegaconf import OmegaConf

from maskflow import (
    backbones,  # registers Preprocess, so saved detectors load anywhere
    prepare,
)
from maskflow.cache import atomic_write_json, digest, read_json
from maskflow.config import compose_option
from maskflow.contracts import TrainedDetector
from maskflow.data import read_manifest, scene_set
from maskflow.detection.boxes import calibrate_box
from maskflow.detection.centernet import STRIDE, CenterNetFinder, Upsample2x
from maskflow.detection.settings import DetectorSettings
from maskflow.imageio import DecodeError, read_image
from maskflow.scoring import score_scenes

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

FEATURES = {  # MobileNetV2 layers at strides 4, 8, 16, 32
    "MobileNetV2": ("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu"),
}


def build_model(num_classes: int, backbone, feature_layers: Sequence[str], width: int = 64):
    """Image (uint8-range RGB, any size divisible by 32) -> (H/4, W/4, classes + 4):
    class heatmap logits, log box size (in stride units), centre offset."""

    inputs = keras.Input((None, None, 3), name="image")
    x = backbones.Preprocess("tf")(inputs)
    taps = keras.Model(backbone.input, [backbone.get_layer(n).output for n in feature_layers], name="backbone")(x)
    # Top-down feature pyramid down to stride 4 (small faces need the fine level).
    y = layers.Conv2D(width, 1, use_bias=False, name="lat_3")(taps[-1])
    for i in range(len(taps) - 2, -1, -1):
        y = Upsample2x(name=f"up_{i}")(y)
        y = layers.Add(name=f"merge_{i}")([y, layers.Conv2D(width, 1, use_bias=False, name=f"lat_{i}")(taps[i])])
        y = layers.BatchNormalization(name=f"bn_{i}")(y)
        y = layers.ReLU(name=f"relu_{i}")(y)
        y = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"smooth_{i}")(y)
        y = layers.BatchNormalization(name=f"bn_smooth_{i}")(y)
        y = layers.ReLU(name=f"relu_smooth_{i}")(y)
    prior = -np.log((1 - 0.01) / 0.01)  # start every heatmap near 0.01 (focal-loss init)
    heat = layers.Conv2D(num_classes, 1, bias_initializer=keras.initializers.Constant(prior), name="heatmap")(
        layers.Conv2D(width, 3, padding="same", activation="relu", name="heat_conv")(y))
    box = layers.Conv2D(4, 1, name="box")(layers.Conv2D(width, 3, padding="same", activation="relu", name="box_conv")(y))
    outputs = layers.Concatenate(name="heads")([heat, box])
    return keras.Model(inputs, outputs, name="facedet")


def encode(boxes: np.ndarray, labels: np.ndarray, shape: tuple[int, int], num_classes: int,
           box_radius: int = 0) -> np.ndarray:
    """Training target (H/4, W/4, classes + 5): Gaussian class heatmaps (sigma from box
    size), then log w, log h, offset x, y of the face centre from the cell, and the weight
    of those four at that cell: 1 at each face centre and, with ``box_radius`` r, Gaussian
    weights at the cells within r of it that lie inside the face (box sizes learned from
    up to (2r+1)^2 cells per face instead of one, as TTFNet does; a cell two faces claim
    keeps the face it is nearer to, by weight, else the smaller face)."""
    out_h, out_w = shape[0] // STRIDE, shape[1] // STRIDE
    target = np.zeros((out_h, out_w, num_classes + 5), np.float32)
    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
    for k in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable") if len(boxes) else []:
        (x, y, w, h), c = boxes[k], labels[k]
        cx, cy = (x + w / 2) / STRIDE, (y + h / 2) / STRIDE
        ix, iy = int(cx), int(cy)
        if not (0 <= ix < out_w and 0 <= iy < out_h) or w < 2 or h < 2:
            continue
        sx, sy = max(0.54 * w / STRIDE / 6, 0.35), max(0.54 * h / STRIDE / 6, 0.35)
        x0, x1 = max(0, int(ix - 3 * sx) - 1), min(out_w, int(ix + 3 * sx) + 2)
        y0, y1 = max(0, int(iy - 3 * sy) - 1), min(out_h, int(iy + 3 * sy) + 2)
        g = np.exp(-((xs[y0:y1, x0:x1] - ix) ** 2 / (2 * sx * sx) + (ys[y0:y1, x0:x1] - iy) ** 2 / (2 * sy * sy)))
        np.maximum(target[y0:y1, x0:x1, c], g, out=target[y0:y1, x0:x1, c])
        target[iy, ix, c] = 1.0
        for dy in range(-box_radius, box_radius + 1):
            for dx in range(-box_radius, box_radius + 1):
                jx, jy = ix + dx, iy + dy
                inside = x / STRIDE <= jx + 0.5 <= (x + w) / STRIDE and y / STRIDE <= jy + 0.5 <= (y + h) / STRIDE
                if (dx or dy) and not (0 <= jx < out_w and 0 <= jy < out_h and inside):
                    continue
                weight = np.exp(-(dx * dx / (2 * max(sx, 1.0) ** 2) + dy * dy / (2 * max(sy, 1.0) ** 2)))
                if weight >= target[jy, jx, -1]:  # nearer its own centre than to another face's
                    target[jy, jx, num_classes:] = (np.log(w / STRIDE), np.log(h / STRIDE), cx - jx, cy - jy, weight)
    return target


def loss_fn(num_classes: int, size_weight: float = 1.0):
    """Penalty-reduced focal loss on the heatmaps (per face centre in the batch) + L1 on
    size and offset (weighted mean over the cells with box targets). ``keras.ops`` only,
    so it trains under any Keras backend."""
    ops = keras.ops

    def loss(y_true, y_pred):
        heat_true, heat_logit = y_true[..., :num_classes], y_pred[..., :num_classes]
        heat = ops.clip(ops.sigmoid(heat_logit), 1e-4, 1 - 1e-4)
        pos = ops.cast(ops.equal(heat_true, 1.0), "float32")
        pos_loss = -ops.log(heat) * (1 - heat) ** 2 * pos
        neg_loss = -ops.log(1 - heat) * heat ** 2 * (1 - heat_true) ** 4 * (1 - pos)
        weight = y_true[..., -1:]  # box targets' weight per cell (1 at face centres)
        focal = (ops.sum(pos_loss) + ops.sum(neg_loss)) / ops.maximum(ops.sum(pos), 1.0)
        reg = ops.abs(y_true[..., num_classes:num_classes + 4] - y_pred[..., num_classes:]) * weight
        total_weight = ops.maximum(ops.sum(weight), 1.0)
        size = ops.sum(reg[..., :2]) / total_weight
        offset = ops.sum(reg[..., 2:]) / total_weight
        return focal + size_weight * size + offset

    return loss


def repeat_factors(labels: Sequence[np.ndarray], num_classes: int, threshold: float = 0.3) -> np.ndarray:
    """Per scene, max over its classes of max(1, sqrt(threshold / fraction of scenes with
    that class)) (Gupta et al., LVIS, 2019): scenes with a rare class are drawn more often."""
    present = np.array([[c in set(lab.tolist()) for c in range(num_classes)] for lab in labels], bool).reshape(-1, num_classes)
    fraction = np.maximum(present.mean(0), 1e-9)
    per_class = np.maximum(1.0, np.sqrt(threshold / fraction))
    return np.array([per_class[row].max() if row.any() else 1.0 for row in present])


def training_samples(items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], crop: int, long_side: int,
                     num_classes: int, seed: int, scale_range: tuple[float, float] = (0.6, 1.4),
                     extra: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (), extra_fraction: float = 0.0,
                     extra_face_px: tuple[float, float] = (12.0, 300.0), box_radius: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless augmented (image, target) pairs: random scale around ``long_side``, random
    ``crop`` x ``crop`` window, horizontal flip, brightness/contrast jitter. Scenes are
    drawn with their repeat factor (:func:`repeat_factors`), so rare classes come up more.
    With ``extra`` (close-up photos with one labelled face), a share ``extra_fraction`` of
    the samples is one of those, rescaled so its face is ``extra_face_px`` (log-uniform)."""
    rng = np.random.default_rng(seed)
    weights = repeat_factors([labels for _, _, labels in items], num_classes)
    weights = weights / weights.sum()
    while True:
        for i in rng.choice(len(items), size=len(items), p=weights):
            if extra and rng.random() < extra_fraction:
                rgb, boxes, labels = extra[int(rng.integers(len(extra)))]
                face = float(max(boxes[0, 2], boxes[0, 3], 1.0))
                s = float(np.exp(rng.uniform(*np.log(extra_face_px)))) / face
            else:
                rgb, boxes, labels = items[i]
                s = long_side / max(rgb.shape[:2]) * rng.uniform(*scale_range)
            yield _augment(rgb, boxes, labels, s, crop, num_classes, rng, box_radius)


def _augment(rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, s: float, crop: int, num_classes: int,
             rng: np.random.Generator, box_radius: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rescale by ``s``, cut a random ``crop`` window (grey where it leaves the image),
    mirror half the time, jitter brightness/contrast; the target of what is left."""
    h, w = rgb.shape[:2]
    img = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    b = boxes.astype(np.float32) * s
    ih, iw = img.shape[:2]
    canvas = np.full((crop, crop, 3), 114, np.uint8)
    ox = int(rng.integers(min(0, iw - crop), max(0, iw - crop) + 1))
    oy = int(rng.integers(min(0, ih - crop), max(0, ih - crop) + 1))
    sx0, sy0 = max(0, ox), max(0, oy)
    sx1, sy1 = min(iw, ox + crop), min(ih, oy + crop)
    canvas[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox] = img[sy0:sy1, sx0:sx1]
    b[:, 0] -= ox
    b[:, 1] -= oy
    # Keep faces whose centre is inside the crop; clip their boxes to it.
    cx, cy = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    keep = (cx >= 0) & (cx < crop) & (cy >= 0) & (cy < crop)
    b, lab = b[keep], labels[keep]
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
        b[:, 0] = crop - b[:, 0] - b[:, 2]
    x0, y0 = np.clip(b[:, 0], 0, crop), np.clip(b[:, 1], 0, crop)
    x1, y1 = np.clip(b[:, 0] + b[:, 2], 0, crop), np.clip(b[:, 1] + b[:, 3], 0, crop)
    b = np.stack([x0, y0, x1 - x0, y1 - y0], 1) if len(b) else b
    alpha, beta = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
    canvas = np.clip(canvas.astype(np.float32) * alpha + beta, 0, 255)
    return canvas, encode(b, lab, (crop, crop), num_classes, box_radius)


# ---- stage ``facedet``: train the detector on a VOC scene set's train split ------------

VERSION = 2  # bumped when training or targets change, so cached detectors are rebuilt


def run(cfg, ctx):
    """Train (or load from the cache) the detector ``detect.backend=facedet`` uses."""

    import mlflow

    log = logging.getLogger(__name__)
    if str(cfg.detect.get("backend", "mtcnn")) != "facedet":
        log.info("facedet: detect.backend=%s, nothing to train", cfg.detect.get("backend", "mtcnn"))
        return TrainedDetector(model_path=None, classes=(), long_side=0)
    fd = cfg.facedet
    data_cfg, prepared = prepare.prepared_for(cfg, ctx, str(fd.data), f"facedet_{str(fd.data).replace('-', '_')}")
    model_cfg = compose_option("model", str(fd.backbone))
    weights = backbones.resolve_weights(model_cfg, list(cfg.paths.weights_dirs))
    settings = OmegaConf.to_container(fd, resolve=True)
    extra = [prepare.prepared_for(cfg, ctx, str(name), f"facedet_{str(name).replace('-', '_')}") for name in fd.get("extra_data") or []]
    # Options at their neutral value stay out of the key, so detectors trained before the
    # option existed are still found.
    neutral = {"box_radius": 0}
    keyed = {k: v for k, v in settings.items() if not k.startswith("extra_") and neutral.get(k, object()) != v}
    inputs = {"facedet": keyed, "data": prepared.digest,
              "model": OmegaConf.to_container(model_cfg, resolve=True), "weights": weights.sha256, "seed": int(cfg.seed),
              "version": VERSION}
    if extra:  # (scenes-only keys stay as they were before extra data existed)
        inputs["extra"] = {"sets": [p.digest for _, p in extra], "fraction": settings.get("extra_fraction"),
                           "box_calibration": OmegaConf.to_container(cfg.detect, resolve=True).get("box_calibration")}
    key = digest(inputs)
    work = ctx.cache_dir / "facedet" / f"{fd.backbone}-{key}"
    model_path, summary_path = work / "facedet.keras", work / "summary.json"
    classes = tuple(prepared.classes)
    if model_path.exists() and summary_path.exists():
        log.info("facedet: cached detector %s", model_path)
        summary = read_json(summary_path)
    else:
        summary = _train(cfg, data_cfg, prepared, model_cfg, weights, classes, work, model_path, extra)
        atomic_write_json(summary_path, summary)
    # Scored with the current conf/detect (cheap, so not cached with the weights).
    summary = {**summary, **_validate(cfg, model_path, classes, _scene_items(data_cfg, prepared, "val"))}
    metrics = {f"facedet_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    report = ctx.run_dir / "facedet" / "summary.json"
    atomic_write_json(report, {**summary, "model_path": str(model_path)})
    if mlflow.active_run() is not None:
        mlflow.log_params({f"facedet.{k}": v for k, v in settings.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(report), "facedet")
    return TrainedDetector(model_path=model_path, classes=classes, long_side=int(fd.long_side), metrics=metrics)


def _scene_items(data_cfg, prepared, split: str) -> list:
    """(image, faces) of one split of a scene set, whatever its label format."""
    return scene_set(data_cfg).items({r["path"] for r in read_manifest(prepared.manifest, split)})


def _load(items, classes: Sequence[str]) -> tuple[list, int]:
    """(rgb, boxes, labels) per scene; undecodable images are skipped and counted."""

    index = {c: i for i, c in enumerate(classes)}
    loaded, skipped = [], 0
    for path, truths in items:
        try:
            rgb = read_image(path).rgb
        except DecodeError:
            skipped += 1
            continue
        known = [(index[label], box) for label, box in truths if label in index]
        boxes = np.array([b for _, b in known], np.float32).reshape(-1, 4)
        loaded.append((rgb, boxes, np.array([c for c, _ in known], np.int64)))
    return loaded, skipped


def _closeups(extra, classes: Sequence[str], calibration: dict | None, max_side: int = 640) -> list:
    """(rgb, [box], [label]) of the train-split photos of folder-labelled sets whose face
    MTCNN found at prepare (the box moved to the scenes' annotation convention, as
    ``detect.box_calibration`` does for MTCNN), downscaled to ``max_side`` to bound memory."""

    index = {c: i for i, c in enumerate(classes)}
    out = []
    for data_cfg, prepared in extra:
        for r in read_manifest(prepared.manifest, "train"):
            if r["face"] != "mtcnn" or r["label"] not in index or not r["box"]:
                continue
            try:
                rgb = read_image(Path(str(data_cfg.root)) / r["path"]).rgb
            except DecodeError:
                continue
            h, w = rgb.shape[:2]
            box = calibrate_box([float(v) for v in r["box"].split()], calibration, w, h)
            s = min(1.0, max_side / max(h, w))
            if s < 1.0:
                rgb = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
            out.append((rgb, np.array([box], np.float32) * s, np.array([index[r["label"]]], np.int64)))
    return out


def _train(cfg, data_cfg, prepared, model_cfg, weights, classes, work, model_path, extra=()) -> dict:


    log = logging.getLogger(__name__)
    fd = cfg.facedet
    keras.utils.set_random_seed(int(cfg.seed))
    train_items, skipped = _load(_scene_items(data_cfg, prepared, "train"), classes)
    crop, n = int(fd.crop), len(classes)
    steps = int(fd.get("steps_per_epoch") or max(1, len(train_items) // int(fd.batch_size)))
    epochs = int(fd.epochs)
    log.info("facedet: %d train scenes (%d unreadable), %d epochs x %d steps", len(train_items), skipped, epochs, steps)
    closeups = _closeups(extra, classes, cfg.detect.get("box_calibration")) if extra else []
    if closeups:
        log.info("facedet: + %d close-up photos with one labelled face, %.0f%% of the samples", len(closeups),
                 100 * float(fd.extra_fraction))
    samples = lambda: training_samples(train_items, crop, int(fd.long_side), n, int(cfg.seed), tuple(fd.scale_range),  # noqa: E731
                                       closeups, float(fd.get("extra_fraction") or 0.0), box_radius=int(fd.get("box_radius", 0)))
    ds = tf.data.Dataset.from_generator(samples, output_signature=(
        tf.TensorSpec((crop, crop, 3), tf.float32), tf.TensorSpec((crop // STRIDE, crop // STRIDE, n + 5), tf.float32)))
    ds = ds.batch(int(fd.batch_size)).prefetch(2)
    kwargs = dict(model_cfg.get("kwargs") or {})
    backbone = backbones.constructor(model_cfg)(include_top=False, weights=weights.argument, input_shape=(None, None, 3), **kwargs)
    model = build_model(n, backbone, FEATURES[str(model_cfg.constructor)], int(fd.width))
    lr = float(fd.learning_rate)
    schedule = keras.optimizers.schedules.CosineDecay(lr * 0.1, epochs * steps, warmup_target=lr, warmup_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss_fn(n))
    started = time.perf_counter()
    fitted = model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=2, shuffle=False,  # the generator draws samples at random
                       callbacks=[keras.callbacks.BackupAndRestore(str(work / "backup"), delete_checkpoint=True)])
    train_time = time.perf_counter() - started
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "facedet.tmp.keras"
    model.save(tmp)
    tmp.replace(model_path)
    log.info("facedet: trained in %.0f s", train_time)
    return {"train_time_s": round(train_time, 1), "final_loss": float(fitted.history["loss"][-1]), "epochs": epochs,
            "extra_closeups": len(closeups),
            "train_scenes": len(train_items), "train_scenes_unreadable": skipped, "params": int(model.count_params())}


def _validate(cfg, model_path, classes: Sequence[str], items) -> dict:
    """The detector alone (its own labels, conf/detect's settings) on the val scenes."""

    settings = DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True))
    detector = CenterNetFinder.from_settings(model_path, classes, settings, per_class=settings.peaks == "class")
    results = []
    for rgb, boxes, labels in _load(items, classes)[0]:
        preds = [{"box": list(f.box), "label": classes[f.class_index()], "score": f.probs[f.class_index()], "detector_score": f.score}
                 for f in detector.find(rgb, still=True)]
        results.append((preds, [(classes[c], tuple(b)) for c, b in zip(labels, boxes)]))
    val = score_scenes(results, classes)["metrics"]
    logging.getLogger(__name__).info("facedet: val scenes_map50 %.4f, recall %.4f, precision %.4f (%d scenes)",
                                     val["scenes_map50"], val["scenes_det_recall"], val["scenes_det_precision"], len(results))
    return {"val_map50": val["scenes_map50"], "val_det_recall": val["scenes_det_recall"],
            "val_det_precision": val["scenes_det_precision"], "val_cls_accuracy": val["scenes_cls_accuracy"]}
