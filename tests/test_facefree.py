"""The face-free set and the finder's landmark check: false faces on patterns are marked,
real faces are not."""

from __future__ import annotations

import numpy as np
import pytest

from maskflow import facefree
from maskflow.detection.boxes import iou

from .conftest import SCENES, compose, needs_shared


def test_drawn_textures_are_the_same_every_time_and_differ_by_kind_and_seed():
    a, b = facefree.texture("lace", 3), facefree.texture("lace", 3)
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, facefree.texture("lace", 4))
    kinds = [rgb for _, rgb in facefree.textures(1)]
    assert len(kinds) == len(facefree.TEXTURES) and all(rgb.std() > 5 for rgb in kinds)  # a pattern, not a flat colour
    with pytest.raises(ValueError, match="unknown texture"):
        facefree.texture("wallpaper", 0)


@needs_shared
def test_scene_regions_overlap_no_annotated_face():
    from maskflow.annotations import read_scenes

    items = read_scenes(SCENES).items(limit=20)
    regions = list(facefree.scene_regions(items, per_image=2, margin=0.0))
    assert len(regions) >= 10 and all(min(rgb.shape[:2]) >= 96 for _, rgb in regions)
    assert [n for n, _ in facefree.scene_regions(items, per_image=2, margin=0.0)] == [n for n, _ in regions]
    # Where each region came from: find it in its scene and check it against the boxes.
    from maskflow.imageio import read_image

    by_stem = {p.stem: (p, t) for p, t in items}
    for name, rgb in regions[:6]:
        path, truths = by_stem[name.rsplit("_region", 1)[0]]
        scene = read_image(path).rgb
        h, w = rgb.shape[:2]
        spots = [(x, y) for y in range(0, scene.shape[0] - h + 1) for x in range(0, scene.shape[1] - w + 1)
                 if np.array_equal(scene[y, x:x + 8], rgb[0, :8]) and np.array_equal(scene[y:y + h, x:x + w], rgb)]
        assert spots, name
        x, y = spots[0]
        assert all(iou((x, y, w, h), box) == 0.0 for _, box in truths)


@needs_shared
def test_the_landmark_check_marks_false_faces_on_lace_and_keeps_the_real_faces(tmp_path):
    from omegaconf import OmegaConf

    from maskflow.annotations import read_scenes
    from maskflow.detection.finders import build_finder
    from maskflow.imageio import read_image

    cfg = compose(tmp_path, ["detect=yunet"])
    finder = build_finder("yunet", OmegaConf.to_container(cfg.detect.finders, resolve=True), [cfg.paths.face_weights_dir])
    assert finder.landmark_bounds  # the shipped default checks
    lace = [f for seed in range(6) for f in finder.find(facefree.texture("lace", seed), still=True)]
    assert len(lace) >= 10  # the pattern does fool YuNet (score >= 0.3) ...
    assert np.mean([not f.plausible for f in lace]) >= 0.3  # ... and the check marks a good share of those faces
    real = []
    for path, truths in read_scenes(SCENES).items(limit=12):
        for face in finder.find(read_image(path).rgb, still=True):
            if face.score >= 0.6 and max([iou(face.box, box) for _, box in truths] or [0]) >= 0.5:
                real.append(face.plausible)
    assert len(real) >= 20 and np.mean(real) >= 0.95  # real faces pass it
