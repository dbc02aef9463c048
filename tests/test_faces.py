"""The MTCNN wrapper: pyramid, compiled networks, box calibration (real MTCNN weights)."""

from __future__ import annotations

import numpy as np
import pytest

from maskflow.annotations import read_scenes
from maskflow.detection.boxes import calibrate_box, iou
from maskflow.detection.calibration import fit_box_calibration
from maskflow.detection.mtcnn import PNET_WINDOW, FaceDetector, _scale_pyramid
from maskflow.imageio import read_image

from .conftest import FACES, SCENES, needs_shared


@pytest.mark.parametrize("width,height,min_face", [(640, 480, 12), (134, 128, 20), (80, 60, 6), (12, 12, 12)])
def test_pyramid_goes_down_until_the_image_no_longer_covers_the_window(width, height, min_face):
    scales = _scale_pyramid(width, height, min_face, 0.709)
    assert scales[0] == pytest.approx(PNET_WINDOW / min_face)
    assert min(width, height) * scales[-1] >= PNET_WINDOW - 1e-6  # the last level still holds a window
    assert min(width, height) * scales[-1] * 0.709 < PNET_WINDOW  # and one more would not


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(min_face_size=20, max_side=480)


@needs_shared
def test_a_face_filling_the_image_is_found(detector):
    # A tight RMFD crop: the face is the whole image (mtcnn 1.0's own pyramid missed these).
    rgb = read_image(next(FACES.glob("*/0_0_caizhuoyan_0001.jpg"))).rgb
    faces = [f for f in detector.detect(rgb) if f.score >= 0.9]
    assert len(faces) == 1 and faces[0].box[2] >= 0.6 * rgb.shape[1]


@needs_shared
def test_compiled_networks_give_the_eager_boxes():
    rgb = read_image(SCENES / "images" / "maksssksksss11.jpg").rgb
    compiled = FaceDetector(min_face_size=12, max_side=640).detect(rgb)
    eager = FaceDetector(min_face_size=12, max_side=640, compiled=False).detect(rgb)
    assert len(compiled) == len(eager) >= 2
    for a, b in zip(sorted(compiled, key=lambda f: f.box), sorted(eager, key=lambda f: f.box)):
        assert np.allclose(a.box, b.box, atol=1) and abs(a.score - b.score) < 1e-3


def test_calibrate_box_shifts_scales_and_clips():
    cal = {"dx": 0.0, "dy": 0.1, "sw": 1.2, "sh": 1.0}
    assert calibrate_box((100, 100, 50, 50), cal, 640, 480) == (95, 105, 60, 50)
    assert calibrate_box((100, 100, 50, 50), None, 640, 480) == (100, 100, 50, 50)
    x, y, w, h = calibrate_box((-10, 470, 40, 40), cal, 640, 480)  # leaves the image: clipped
    assert (x, y) == (0, 474) and x + w <= 640 and y + h <= 480 and w > 0 and h > 0


@needs_shared
def test_fitted_calibration_moves_boxes_toward_the_annotations(detector):
    items = read_scenes(SCENES).items(limit=12)
    fitted = fit_box_calibration(detector, items)
    assert fitted["pairs"] >= 10 and 0.7 < fitted["sw"] < 1.5 and abs(fitted["dy"]) < 0.4
    raw, calibrated = [], []
    for path, truths in items:
        rgb = read_image(path).rgb
        faces = detector.detect(rgb)
        for _, box in truths:
            if faces:
                raw.append(max(iou(f.box, box) for f in faces))
                calibrated.append(max(iou(calibrate_box(f.box, fitted, rgb.shape[1], rgb.shape[0]), box) for f in faces))
    assert np.mean(calibrated) > np.mean(raw)
