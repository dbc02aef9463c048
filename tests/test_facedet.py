"""The trained face-and-mask detector: targets, decoding, a real (small) Keras model."""

from __future__ import annotations

import numpy as np
import pytest

from maskflow import facedet
from maskflow.detection import centernet
from maskflow.detection.detector import Classifier, MaskModel, build_detector
from maskflow.detection.settings import DetectorSettings, StillsSettings
from maskflow.faces import Face
from maskflow.imageio import Frame


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def test_encode_then_decode_recovers_boxes_and_classes():
    boxes = np.array([[10, 20, 40, 50], [150, 100, 13, 17], [200, 30, 90, 80]], np.float32)
    labels = np.array([1, 0, 2])
    target = facedet.encode(boxes, labels, (256, 320), 3)
    assert target.shape == (64, 80, 3 + 5)
    assert target[..., -1].sum() == 3  # one centre per face
    # A perfect network output: the target's heatmaps (as logits) and box channels.
    output = np.concatenate([_logit(target[..., :3]), target[..., 3:7]], -1)
    found = centernet.decode(output, scale=1.0, num_classes=3, min_score=0.5)
    assert len(found) == 3
    for (x, y, w, h), c in zip(boxes, labels):
        best = min(found, key=lambda d: abs(d.box[0] - x) + abs(d.box[1] - y))
        assert np.allclose(best.box, (x, y, w, h), atol=1.0)
        assert int(np.argmax(best.probs)) == c and best.score > 0.99


def test_a_crowd_of_more_than_100_faces_decodes_whole():
    # 150 faces of 12 px on a 15 x 10 grid (a test scene has 115): no default cap drops any.
    boxes = np.array([[8 + 24 * i, 8 + 24 * j, 12, 12] for i in range(15) for j in range(10)], np.float32)
    labels = np.arange(len(boxes)) % 3
    target = facedet.encode(boxes, labels, (256, 384), 3)
    output = np.concatenate([_logit(target[..., :3]), target[..., 3:7]], -1)
    found = centernet.decode(output, scale=1.0, num_classes=3, min_score=0.5, per_class=True)
    assert len(found) == 150 and sorted(d.label for d in found) == sorted(labels.tolist())


def test_decode_maps_boxes_back_through_the_resize_and_clips_them():
    rgb = np.zeros((300, 400, 3), np.uint8)
    image, scale = centernet.letterbox(rgb, 512)
    assert image.shape == (384, 512, 3) and scale == pytest.approx(1.28)
    # A face at (380, 5, 30, 30) in the original: its box leaves the image on the right.
    target = facedet.encode(np.array([[380 * scale, 5 * scale, 30 * scale, 30 * scale]]), np.array([0]), image.shape[:2], 2)
    output = np.concatenate([_logit(target[..., :2]), target[..., 2:6]], -1)
    (face,) = centernet.decode(output, scale, 2, min_score=0.5, image_shape=rgb.shape[:2])
    assert face.box[0] == pytest.approx(380, abs=1) and face.box[0] + face.box[2] <= 400


def test_training_samples_keep_targets_inside_the_crop():
    rng = np.random.default_rng(0)
    items = [(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), np.array([[30, 40, 20, 24], [100, 10, 30, 30]], np.float32),
              np.array([0, 1]))]
    samples = facedet.training_samples(items, crop=96, long_side=128, num_classes=2, seed=0)
    for _ in range(10):
        image, target = next(samples)
        assert image.shape == (96, 96, 3) and 0 <= image.min() and image.max() <= 255
        assert target.shape == (24, 24, 2 + 5)
        centres = target[..., -1] > 0
        assert np.all(target[..., :2].max(-1)[centres] == 1.0)  # each centre is a peak of its class map
        assert np.all(np.exp(target[..., 2:4][centres]) * facedet.STRIDE <= 96 + 1e-3)  # sizes clipped to the crop


def test_scenes_with_rare_classes_are_sampled_more():
    labels = [np.array([0, 0])] * 8 + [np.array([0, 1])] + [np.array([], np.int64)]
    factors = facedet.repeat_factors(labels, 2)
    assert factors[8] == pytest.approx(np.sqrt(0.3 / 0.1)) and factors[0] == 1.0 and factors[9] == 1.0


def _square_scene(rng, size=128):
    """A grey scene with one or two textured squares ("faces"); class 1 if red-tinted."""
    image = np.full((size, size, 3), 120, np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 3))):
        s = int(rng.integers(20, 40))
        x, y = (int(v) for v in rng.integers(0, size - s, 2))
        c = int(rng.integers(0, 2))
        patch = rng.integers(0, 80, (s, s, 3))
        patch[..., 0] += 175 if c else 0
        image[y:y + s, x:x + s] = np.clip(patch, 0, 255)
        boxes.append((x, y, s, s))
        labels.append(c)
    return image, np.array(boxes, np.float32), np.array(labels)


def test_small_real_model_learns_and_runs_inside_the_detector():
    """A real MobileNetV2 (alpha 0.35, random init) with the heads trains on generated
    scenes (the loss falls) and runs as ``detect.backend=facedet``."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    items = [_square_scene(rng) for _ in range(16)]
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3), alpha=0.35)
    model = facedet.build_model(2, backbone, facedet.FEATURES["MobileNetV2"], width=16)
    assert model.output_shape == (None, None, None, 2 + 4)
    samples = facedet.training_samples(items, crop=128, long_side=128, num_classes=2, seed=0, scale_range=(0.9, 1.1))
    batch = [next(samples) for _ in range(8)]
    x, y = np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=facedet.loss_fn(2))
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat(), epochs=6, steps_per_epoch=4, verbose=0,
                        shuffle=False)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]

    classifier = MaskModel(Classifier(keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                                                        keras.layers.Dense(2)]), ["a", "b"], 32),
                           face_model=model, face_classes=["red", "grey"])
    detector = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="detector", min_confidence=0.0), classifier)
    assert detector.classes == ["red", "grey"]
    records = detector(Frame("scene.png", 0, items[0][0], False))
    assert records and all(set(r) == {"box", "label", "score", "detector_score", "probs"} for r in records)
    assert all(r["label"] in ("red", "grey") and 0 <= r["score"] <= 1 and len(r["box"]) == 4 for r in records)
    # labels="classifier": the same boxes, labelled by the crop classifier instead.
    by_crop = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="classifier", min_confidence=0.0), classifier)
    relabelled = by_crop(Frame("scene.png", 0, items[0][0], False))
    assert [r["box"] for r in relabelled] == [r["box"] for r in records]
    assert all(r["label"] in ("a", "b") for r in relabelled)
    # labels="fuse": the mean of both distributions, over the union of their classes.
    fused = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="fuse", min_confidence=0.0), classifier)
    assert fused.classes == ["red", "grey", "a", "b"]
    assert [r["box"] for r in fused(Frame("scene.png", 0, items[0][0], False))] == [r["box"] for r in records]
    # peaks="class": a record per class-map peak, each labelled with its own map's class;
    # with the classifier's labels the boxes stay one per face.
    per_class = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="detector", min_confidence=0.2, peaks="class"), classifier)
    per_face = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="detector", min_confidence=0.2), classifier)
    hypotheses = per_class(Frame("scene.png", 0, items[0][0], False))
    assert all(r["label"] in ("red", "grey") and 0 <= r["score"] <= 1 for r in hypotheses)
    assert {tuple(r["box"]) for r in per_face(Frame("scene.png", 0, items[0][0], False))} <= {tuple(r["box"]) for r in hypotheses}
    crops = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="classifier", min_confidence=0.0, peaks="class"), classifier)
    assert [r["box"] for r in crops(Frame("scene.png", 0, items[0][0], False))] == [r["box"] for r in relabelled]
    # Stills settings (a zoomed pass, mirrored averaging) change still images only: a
    # video frame gets the one pass it got before.
    stills = build_detector(DetectorSettings(backend="facedet", long_side=128, labels="detector", min_confidence=0.0,
                                            stills=StillsSettings(zoom_side=256, flip=True)), classifier)
    assert stills(Frame("clip.mp4", 0, items[0][0], True)) == records
    still = stills(Frame("scene.png", 0, items[0][0], False))
    assert still and still != records and all(r["label"] in ("red", "grey") and 0 <= r["score"] <= 1 for r in still)


def test_fused_probabilities_average_over_the_union_of_classes():
    from maskflow.detection.detector import _fuse

    p = _fuse([0.2, 0.8], ["mask_weared_incorrect", "with_mask"], [0.4, 0.6], ["with_mask", "without_mask"],
              ["mask_weared_incorrect", "with_mask", "without_mask"])
    assert np.allclose(p, [0.1, 0.6, 0.3]) and np.isclose(p.sum(), 1.0)


def test_facedet_backend_without_a_trained_detector_says_so():
    import keras

    classifier = MaskModel(Classifier(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]),
                                      ["a", "b"], 8))
    with pytest.raises(ValueError, match="no trained face detector"):
        build_detector(DetectorSettings(backend="facedet"), classifier)


def test_merging_a_mirrored_output_lines_up_cells():
    target = facedet.encode(np.array([[9, 20, 24, 24]], np.float32), np.array([1]), (64, 96), 2)  # centre inside a cell
    output = np.concatenate([_logit(target[..., :2]), target[..., 2:6]], -1)
    mirrored_target = facedet.encode(np.array([[96 - 9 - 24, 20, 24, 24]], np.float32), np.array([1]), (64, 96), 2)
    mirrored = np.concatenate([_logit(mirrored_target[..., :2]), mirrored_target[..., 2:6]], -1)
    merged = centernet.merge_flipped(output, mirrored, 2)
    (face,) = centernet.decode(merged, 1.0, 2, min_score=0.5)
    assert np.allclose(face.box, (9, 20, 24, 24), atol=1.0) and face.score > 0.9


def test_close_ups_are_mixed_in_at_small_and_large_face_sizes():
    rng = np.random.default_rng(1)
    scene = [(np.full((100, 100, 3), 50, np.uint8), np.array([[10, 10, 8, 8]], np.float32), np.array([0]))]
    closeup = [(rng.integers(0, 255, (400, 300, 3), dtype=np.uint8), np.array([[50, 60, 200, 260]], np.float32), np.array([1]))]
    samples = facedet.training_samples(scene, crop=128, long_side=128, num_classes=2, seed=0, extra=closeup, extra_fraction=1.0,
                                       extra_face_px=(12.0, 100.0))
    sizes = []
    for _ in range(20):
        _, target = next(samples)
        centres = target[..., -1] > 0
        assert np.all(target[..., 1][centres] == 1.0)  # every face is the close-up's (class 1)
        sizes += list(np.exp(target[..., 3][centres]) * facedet.STRIDE)  # box height in px
    assert sizes and min(sizes) < 40 and max(sizes) > 60


def test_box_nms_drops_a_second_class_peak_on_the_same_face():
    a = facedet.encode(np.array([[20, 20, 40, 40]], np.float32), np.array([0]), (128, 128), 2)
    b = facedet.encode(np.array([[28, 20, 40, 40]], np.float32), np.array([1]), (128, 128), 2)
    heat = np.maximum(a[..., :2], 0.9 * b[..., :2])  # two peaks two cells apart, one per class
    box = a[..., 2:6] + b[..., 2:6]
    output = np.concatenate([_logit(heat), box], -1)
    assert len(centernet.decode(output, 1.0, 2, min_score=0.5)) == 2
    (kept,) = centernet.decode(output, 1.0, 2, min_score=0.5, nms_iou=0.5)
    assert int(np.argmax(kept.probs)) == 0  # the higher peak stays


def test_per_class_peaks_give_an_unsure_face_a_record_per_class():
    target = facedet.encode(np.array([[20, 20, 40, 40], [80, 70, 30, 30]], np.float32), np.array([0, 1]), (128, 128), 3)
    heat = target[..., :3].copy()
    heat[..., 2] = np.maximum(heat[..., 2], 0.4 * target[..., 0])  # face 0: class 0, but class 2 also likely
    output = np.concatenate([_logit(heat), target[..., 3:7]], -1)
    per_face = centernet.decode(output, 1.0, 3, min_score=0.2)
    assert [d.label for d in per_face] == [None, None] and [int(np.argmax(d.probs)) for d in per_face] == [0, 1]
    per_class = centernet.decode(output, 1.0, 3, min_score=0.2, per_class=True)
    assert sorted(d.label for d in per_class) == [0, 1, 2]
    runner_up = next(d for d in per_class if d.label == 2)
    assert runner_up.box == next(d for d in per_class if d.label == 0).box  # same face, lower-ranked label
    assert per_class[-1] is runner_up  # highest peak first
    assert len(centernet.decode(output, 1.0, 3, min_score=0.5, per_class=True)) == 2  # 0.4 is under the threshold


def test_box_targets_spread_to_cells_around_the_centre_and_still_decode_the_same_box():
    boxes = np.array([[16, 16, 48, 48], [40, 40, 10, 10]], np.float32)  # the small face overlaps the large one
    target = facedet.encode(boxes, np.array([0, 1]), (96, 96), 2, box_radius=1)
    weights = target[..., -1]
    assert weights[10, 10] == 1.0 and np.count_nonzero(weights) > 2  # centre cells weigh 1, neighbours less
    assert 0 < weights[10, 9] < 1 and 0 < weights[9, 9] < weights[10, 9]  # side, then diagonal neighbour
    # Every weighted cell points at its face's centre and size: decoding any of them gives the box.
    for iy, ix in zip(*np.nonzero(weights)):
        lw, lh, ox, oy = target[iy, ix, 2:6]
        w, h, cx, cy = np.exp(lw) * 4, np.exp(lh) * 4, (ix + ox) * 4, (iy + oy) * 4
        assert any(np.allclose((cx - w / 2, cy - h / 2, w, h), b, atol=1e-3) for b in boxes)
    # Each centre cell keeps its own face (the small one claims (10, 10) too, as a neighbour).
    assert np.allclose(np.exp(target[11, 11, 2:4]) * 4, (10, 10)) and np.allclose(np.exp(target[10, 10, 2:4]) * 4, (48, 48))
    assert np.array_equal(facedet.encode(boxes, np.array([0, 1]), (96, 96), 2)[..., :2], target[..., :2])  # heatmaps unchanged


def _det(box, label, score, p=0.9):
    probs = [p, 1 - p] if label == 0 else [1 - p, p]
    return Face(box=box, score=score, probs=tuple(probs), label=label)


def test_zoomed_pass_gives_the_small_faces_and_the_base_pass_the_large_ones():
    base = [_det((0, 0, 80, 80), 0, 0.9), _det((100, 100, 28, 28), 0, 0.5), _det((200, 0, 8, 8), 1, 0.3)]
    zoomed = [_det((1, 1, 90, 90), 0, 0.95), _det((101, 101, 27, 27), 0, 0.8), _det((300, 0, 9, 9), 1, 0.6),
              _det((102, 100, 28, 28), 1, 0.4)]
    merged = centernet.merge_zoomed(base, zoomed, zoom_face=32)
    boxes = [d.box for d in merged]
    assert (0, 0, 80, 80) in boxes and (1, 1, 90, 90) not in boxes  # large: base pass only
    assert (300, 0, 9, 9) in boxes and (200, 0, 8, 8) not in boxes  # small: zoomed pass only
    # In the band both report (24-32 px), one box per face and class, the higher ranked:
    assert (101, 101, 27, 27) in boxes and (100, 100, 28, 28) not in boxes
    assert (102, 100, 28, 28) in boxes  # the same face's other class stays (per-class peaks)
    ranks = [d.score * d.probs[d.label] for d in merged]
    assert ranks == sorted(ranks, reverse=True)
