"""The detect-then-classify loop: pipelined == sequential, carry-over between detections."""

from __future__ import annotations

import numpy as np

from maskflow.detection.detector import Classifier, MaskModel, build_detector, pipelined
from maskflow.detection.settings import DetectorSettings
from maskflow.imageio import Frame, read_image

from .conftest import SCENES, needs_shared
from .test_serving import tiny_keras_model


def _frames() -> list[Frame]:
    scenes = [read_image(SCENES / "images" / f"maksssksksss{i}.jpg").rgb for i in (11, 104)]
    # Two "videos" of 5 frames each (the scene shifted a little each frame), then a still.
    frames = [Frame(f"video{v}", k, np.roll(rgb, 2 * k, axis=1), True) for v, rgb in enumerate(scenes) for k in range(5)]
    return frames + [Frame("still.jpg", 0, scenes[0], False)]


@needs_shared
def test_pipelined_gives_the_sequential_records_in_order(tmp_path):
    import keras

    model = keras.models.load_model(tiny_keras_model(tmp_path / "m.keras"))
    frames = _frames()

    def detector():
        return build_detector(DetectorSettings(), MaskModel(Classifier(model, ["with_mask", "without_mask"], 32)), detect_every=2)

    one_by_one = detector()
    sequential = [(f.source, f.index, one_by_one(f)) for f in frames]
    overlapped = [(f.source, f.index, records) for f, records in pipelined(detector(), iter(frames))]
    assert overlapped == sequential
    assert sum(len(r) for _, _, r in sequential) >= 8  # real MTCNN found the faces
    # Between detections (every 2nd frame) a video frame repeats the previous records.
    by_frame = {(s, i): r for s, i, r in sequential}
    assert by_frame[("video0", 1)] == by_frame[("video0", 0)] and by_frame[("video1", 3)] == by_frame[("video1", 2)]
    # A new source is always detected afresh.
    assert by_frame[("video1", 0)] != by_frame[("video0", 4)]


def test_annotate_draws_only_faces_above_the_display_threshold():
    import cv2

    from maskflow.detect import annotate

    rgb = np.full((60, 80, 3), 128, np.uint8)
    low = {"box": [10, 10, 20, 20], "label": "with_mask", "score": 0.9, "detector_score": 0.1}
    high = {**low, "box": [40, 20, 20, 20], "detector_score": 0.8}
    plain = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert np.array_equal(annotate(rgb, [low], min_score=0.3), plain)
    drawn = annotate(rgb, [low, high], min_score=0.3)
    assert not np.array_equal(drawn[20:40, 40:60], plain[20:40, 40:60]) and np.array_equal(drawn[12:28, 12:28], plain[12:28, 12:28])
    # A second, less likely label of the same face (per-class peaks) is not drawn over the first.
    runner_up = {**high, "label": "without_mask", "score": 0.3}
    assert np.array_equal(annotate(rgb, [high, runner_up], min_score=0.3), drawn)


def test_stills_settings_come_from_the_model_and_the_command_line_overrides_them(tmp_path):
    import argparse

    from maskflow.detection.options import add_detector_args, detector_settings

    parser = argparse.ArgumentParser()
    add_detector_args(parser)
    stored = DetectorSettings.from_stored({"backend": "facedet", "stills": {"zoom_side": 640, "zoom_face": 24, "flip": True}})
    chosen = detector_settings(parser.parse_args([]), stored).stills
    assert (chosen.zoom_side, chosen.zoom_face, chosen.flip) == (640, 24.0, True)
    off = detector_settings(parser.parse_args(["--zoom-side", "0", "--no-stills-flip"]), stored).stills
    assert (off.zoom_side, off.zoom_face, off.flip) == (None, 24.0, False)
    # A version registered before stills settings existed keeps its single pass.
    older = DetectorSettings.from_stored({"backend": "facedet"})
    assert (detector_settings(parser.parse_args([]), older).stills.zoom_side, older.stills.flip) == (None, False)
    # The finders' stills pass: the stored setting, or the option (0: always upscale).
    yunet = DetectorSettings.from_stored({"backend": "yunet", "finders": {"yunet": {"upscale_if_face_under": 32}}})
    assert detector_settings(parser.parse_args([]), yunet).finders["yunet"]["upscale_if_face_under"] == 32
    always = detector_settings(parser.parse_args(["--upscale-if-face-under", "0"]), yunet)
    assert always.finders["yunet"]["upscale_if_face_under"] is None


def test_classifier_through_tflite_gives_the_keras_probabilities_for_any_number_of_faces(tmp_path):
    # Detection runs the compiled classifier a registered model carries: the same labels.
    import keras

    from maskflow.backbones import to_tflite

    model = keras.models.load_model(tiny_keras_model(tmp_path / "m.keras"))
    (tmp_path / "m.tflite").write_bytes(to_tflite(model))
    keras_run = Classifier(model, ["with_mask", "without_mask"], 32)
    lite_run = Classifier(model, ["with_mask", "without_mask"], 32, tmp_path / "m.tflite")
    assert (keras_run.runtime, lite_run.runtime) == ("keras", "tflite")
    crops = list(np.random.default_rng(0).uniform(0, 255, (7, 32, 32, 3)).astype("float32"))
    for faces in (crops, crops[:1], crops[:3], []):
        np.testing.assert_allclose(lite_run(faces), keras_run(faces), atol=1e-5)


def _fixed_classifier(probs):
    """A real 3-class model whose output is a fixed distribution (zero kernel, log-prior bias)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(np.log(probs)))(keras.layers.Flatten()(inputs))
    return Classifier(keras.Model(inputs, outputs), ["mask_weared_incorrect", "with_mask", "without_mask"], 32)


def test_each_face_is_one_record_with_every_class_probability_and_scoring_ranks_the_others_lower():
    from maskflow.detection import Face
    from maskflow.detection.detector import Detector
    from maskflow.scoring import class_records

    classifier = _fixed_classifier(np.array([0.05, 0.8, 0.15], np.float32))
    frame = Frame("still.jpg", 0, np.full((64, 64, 3), 100, np.uint8), False)
    faces = [Face((8, 8, 30, 30), 0.9), Face((30, 30, 30, 30), 0.6)]
    records = Detector(classifier, None, DetectorSettings(runner_up=0.01)).label(frame, faces)
    assert len(records) == 2  # what a reader gets: one record per face, whatever runner_up says
    first = records[0]
    assert first["label"] == "with_mask" and set(first["probs"]) == set(classifier.classes)
    np.testing.assert_allclose([first["probs"][c] for c in classifier.classes], [0.05, 0.8, 0.15], atol=1e-5)
    # mAP still counts an unsure face for every class at >= runner_up, ranked below its label.
    every = class_records(records[:1], 0.01)
    assert [r["label"] for r in every] == ["with_mask", "without_mask", "mask_weared_incorrect"]
    np.testing.assert_allclose([r["score"] for r in every], [0.8, 0.15, 0.05], atol=1e-5)
    assert [r["label"] for r in class_records(records[:1], 0.1)] == ["with_mask", "without_mask"]
    assert [r["label"] for r in class_records(records[:1], None)] == ["with_mask"]


def test_the_operating_point_keeps_faces_ranked_at_or_above_it_and_faces_only_keeps_every_crop():
    from maskflow.detection import Face
    from maskflow.detection.detector import Detector, rank_score

    classifier = _fixed_classifier(np.array([0.05, 0.8, 0.15], np.float32))
    frame = Frame("still.jpg", 0, np.full((64, 64, 3), 100, np.uint8), False)
    faces = [Face((8, 8, 30, 30), 0.9), Face((30, 30, 30, 30), 0.6)]  # ranked 0.72 and 0.48
    every = Detector(classifier, None, DetectorSettings()).label(frame, faces)
    assert [round(rank_score(r), 2) for r in every] == [0.72, 0.48]
    at = Detector(classifier, None, DetectorSettings(operating_point=0.5))
    assert at.label(frame, faces) == every  # the ranked list keeps every candidate ...
    assert at.report(at.label(frame, faces)) == every[:1]  # ... what is reported is at the operating point
    lower = Detector(classifier, None, DetectorSettings(operating_point=0.48))
    assert lower.report(lower.label(frame, faces)) == every
    # Two boxes of one face (the trained detector's per-class peaks): the higher-ranked is reported.
    from maskflow.detection.detector import reported

    twice = [{**every[0], "box": [9, 9, 30, 30], "label": "without_mask", "score": 0.5}, every[0]]
    assert reported(twice, 0.3) == [every[0]] and reported(twice, None) == twice
    # A face crop is a face: --faces-only reports it at any operating point.
    crop = Detector(classifier, None, DetectorSettings(operating_point=0.99), faces_only=True)
    assert len(crop(frame)) == 1


def test_the_command_line_sets_or_lifts_the_stored_operating_point():
    import argparse

    from maskflow.detection.options import add_detector_args, detector_settings

    parser = argparse.ArgumentParser()
    add_detector_args(parser)
    stored = DetectorSettings(operating_point=0.6)
    assert detector_settings(parser.parse_args([]), stored).operating_point == 0.6
    assert detector_settings(parser.parse_args(["--min-score", "0.3"]), stored).operating_point == 0.3
    assert detector_settings(parser.parse_args(["--all"]), stored).operating_point is None


def test_counts_name_every_class_per_image_and_say_a_video_is_counted_per_frame():
    from maskflow.detect import Tally
    from maskflow.detection.detector import class_counts

    classes = ["with_mask", "without_mask"]
    assert class_counts([{"label": "with_mask"}] * 2, classes) == {"with_mask": 2, "without_mask": 0}
    tally = Tally(classes)
    assert tally.add(Frame("a.jpg", 0, None, False), {"with_mask": 2, "without_mask": 1}) == [
        "a.jpg: 3 faces: with_mask 2, without_mask 1"]
    assert tally.add(Frame("v.mp4", 0, None, True), {"with_mask": 1, "without_mask": 0}) == []
    assert tally.add(Frame("v.mp4", 1, None, True), {"with_mask": 3, "without_mask": 1}) == []
    lines = tally.add(Frame("b.jpg", 0, None, False), {"with_mask": 0, "without_mask": 0})
    assert lines[0] == ("v.mp4: video, 2 frames; faces per frame (each frame counted, not people): "
                        "with_mask mean 2.00 max 3, without_mask mean 0.50 max 1")
    assert lines[1] == "b.jpg: 0 faces: with_mask 0, without_mask 0"
    assert tally.close() == []


def test_classify_flip_averages_each_crop_with_its_mirror_image(tmp_path):
    import keras

    from maskflow.detection.detector import Detector
    from maskflow.faces import Face, crop_face

    model = keras.models.load_model(tiny_keras_model(tmp_path / "m.keras"))
    classifier = Classifier(model, ["with_mask", "without_mask"], 32)
    rgb = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    faces = [Face((10, 10, 40, 50), 0.9), Face((60, 20, 30, 40), 0.8)]
    settings = DetectorSettings(min_confidence=0.0, classify_flip=True)
    flipped = Detector(classifier, None, settings).label(Frame("a", 0, rgb, False), faces)
    crops = [crop_face(rgb, f.box, settings.margin, 32) for f in faces]
    expected = (classifier(crops) + classifier([c[:, ::-1] for c in crops])) / 2
    assert np.allclose([[r["probs"][c] for c in classifier.classes] for r in flipped], expected, atol=1e-5)
    plain = Detector(classifier, None, DetectorSettings(min_confidence=0.0)).label(Frame("a", 0, rgb, False), faces)
    assert [r["probs"] for r in plain] != [r["probs"] for r in flipped]  # the mirror changes the numbers
