"""Masks drawn on unmasked train faces: where they sit, what they are labelled, and that
no val or test face is drawn on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskflow.synthetic import KINDS, face_frame, landmarks, mask_polygon, paint, synthesize

from .conftest import FACES, needs_shared

# A frontal face in a 256 px crop: right eye, left eye, nose tip, mouth corners.
MARKS = np.array([[100, 100], [156, 100], [128, 135], [106, 160], [150, 160]], np.float64)


def test_a_mask_worn_right_covers_the_nose_and_one_worn_wrong_leaves_it_out():
    rng = np.random.default_rng(0)
    eyes, down, right, length, iod = face_frame(MARKS)
    assert np.allclose(down, [0, 1]) and np.allclose(right, [1, 0]) and length == 60 and iod == 56

    def covers(kind: str, point) -> bool:
        import cv2

        return cv2.pointPolygonTest(mask_polygon(MARKS, kind, rng).astype(np.float32), tuple(map(float, point)), False) >= 0

    mouth, chin = MARKS[3:].mean(0), MARKS[3:].mean(0) + [0, 30]
    for _ in range(20):
        assert covers("worn", MARKS[2]) and covers("worn", mouth) and covers("worn", chin)
        assert not covers("nose_out", MARKS[2]) and covers("nose_out", mouth) and covers("nose_out", chin)
        assert not covers("chin", MARKS[2]) and not covers("chin", mouth) and covers("chin", chin)
        assert not any(covers(k, MARKS[0]) or covers(k, MARKS[1]) for k in KINDS)  # never over the eyes
    assert KINDS == {"nose_out": "mask_weared_incorrect", "chin": "mask_weared_incorrect", "worn": "with_mask"}


def test_the_drawing_changes_the_lower_face_only_and_a_small_face_gets_a_blurred_mask():
    rgb = np.full((256, 256, 3), 128, np.uint8)
    sharp = paint(rgb, MARKS, "worn", np.random.default_rng(1), face_side=200)
    changed = np.abs(sharp.astype(int) - rgb).sum(2) > 10
    ys = np.nonzero(changed)[0]
    assert changed.mean() > 0.05 and ys.min() > 95  # nothing above the eyes' line, save ear loops at its level
    small = paint(rgb, MARKS, "worn", np.random.default_rng(1), face_side=12)
    edge = lambda img: np.abs(np.diff(img.astype(float), axis=0)).max()  # noqa: E731
    assert edge(small) < edge(sharp)  # a 12 px face's mask has no sharper edges than the face had


def test_points_that_are_no_frontal_face_get_no_mask():
    class Finder:
        def __init__(self, marks):
            from maskflow.faces import Face

            self.faces = [Face((60, 60, 140, 160), 0.9, landmarks=tuple(np.asarray(marks).ravel()))]

        def find(self, rgb, still=False):
            return self.faces

    rgb = np.zeros((256, 256, 3), np.uint8)
    assert landmarks(Finder(MARKS), rgb) is not None
    profile = MARKS.copy()
    profile[2] = [128, 95]  # the nose above the eyes
    assert landmarks(Finder(profile), rgb) is None


@needs_shared
def test_only_train_faces_without_a_mask_are_drawn_on_and_each_keeps_its_source_split(tmp_path):
    from omegaconf import OmegaConf

    from maskflow.config import compose_option
    from maskflow.detection.finders import build_finder

    photos = sorted((FACES / "without_mask").glob("*.jpg"))[:6]
    rows = []
    for i, path in enumerate(photos):
        crop = tmp_path / f"{i}.jpg"
        Image.open(path).convert("RGB").resize((256, 256)).save(crop)
        rows.append({"sample_id": f"s{i}", "path": path.name, "label": "without_mask", "status": "ok", "crop": str(crop),
                     "split": "train" if i < 4 else "test", "group": f"g{i}", "box": "0 0 256 256", "part": "faces"})
    rows.append({**rows[0], "sample_id": "masked", "label": "with_mask"})
    finders = OmegaConf.to_container(compose_option("detect", "yunet").finders, resolve=True)
    finders["yunet"]["landmark_bounds"] = None
    finder = build_finder("yunet", {"yunet": finders["yunet"]}, [str(compose_option("paths", "default").face_weights_dir)])
    settings = {"kinds": ["nose_out", "worn"], "rate": 1.0, "seed": 0}
    drawn = synthesize(rows, settings, finder, tmp_path / "cache")
    assert drawn and {r["split"] for r in drawn} == {"train"} and {r["sample_id"].split(":")[-1] for r in drawn} <= {"s0", "s1", "s2", "s3"}
    assert {r["label"] for r in drawn} == {"mask_weared_incorrect", "with_mask"} and all(r["part"] == "synthetic" for r in drawn)
    assert all(r["group"] == next(s["group"] for s in rows if s["sample_id"] == r["sample_id"].split(":")[-1]) for r in drawn)
    again = synthesize(rows, settings, None, tmp_path / "cache")  # cached: no finder needed
    assert again == drawn
    with pytest.raises(ValueError, match="unknown"):
        synthesize(rows, {"kinds": ["scarf"]}, finder, tmp_path / "cache")
