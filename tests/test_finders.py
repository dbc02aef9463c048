"""The pretrained finders (real ONNX files from ../shared), box fusion, file checks."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from maskflow.detection.boxes import iou_matrix, nms, weighted_box_fusion
from maskflow.detection.finders import build_finder, finder_files
from maskflow.detection.weights import FinderFileError, resolve
from maskflow.faces import Face
from maskflow.imageio import read_image

from .conftest import SCENES, SHARED, needs_shared

FACE_WEIGHTS = SHARED / "weights" / "faces"


def _finders(tmp_path):
    from omegaconf import OmegaConf

    from .conftest import compose

    cfg = compose(tmp_path, ["detect=yunet"])
    return OmegaConf.to_container(cfg.detect.finders, resolve=True)


def _truths(name: str) -> list[tuple[int, int, int, int]]:
    from maskflow.annotations import parse_voc

    return [box for _, box in parse_voc(SCENES / "annotations" / f"{name}.xml")[1]]


def test_nms_keeps_the_best_of_overlapping_boxes():
    corners = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    assert list(nms(corners, np.array([0.5, 0.9, 0.3]), iou=0.5)) == [1, 2]
    assert iou_matrix(corners[:1], corners[:1])[0, 0] == pytest.approx(1.0)


def test_wbf_averages_agreeing_boxes_and_ranks_agreement_first():
    a = [Face((0, 0, 10, 10), 0.9), Face((50, 50, 10, 10), 0.8)]
    b = [Face((2, 0, 10, 10), 0.7)]
    fused = weighted_box_fusion([a, b], iou=0.5)
    assert len(fused) == 2
    top = fused[0]
    assert top.box[0] == 1 and top.score == pytest.approx((0.9 + 0.7) / 2)  # both finders agree
    assert fused[1].score == pytest.approx(0.8 / 2)  # one finder of two: half the score
    # Plain NMS keeps each cluster's best box with its own score.
    assert [f.score for f in weighted_box_fusion([a, b], iou=0.5, method="nms")] == [0.9, 0.8]


def test_missing_or_corrupt_finder_file_fails_naming_file_and_checksum(tmp_path):
    with pytest.raises(FinderFileError, match="nowhere.onnx.*sha256 abc"):
        resolve("nowhere.onnx", "abc", [tmp_path])
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(FinderFileError, match="corrupt.*expected 0123"):
        resolve("bad.onnx", "0123", [tmp_path])


@needs_shared
@pytest.mark.parametrize("name", ["yunet", "yunet_n", "ultraface", "scrfd", "fusion"])
def test_each_finder_finds_the_annotated_faces_of_a_real_scene(tmp_path, name):
    finders = _finders(tmp_path)
    finder = build_finder(name, finders, [FACE_WEIGHTS])
    rgb = read_image(SCENES / "images" / "maksssksksss0.jpg").rgb
    faces = finder.find(rgb, still=False)
    truths = np.array([[x, y, x + w, y + h] for x, y, w, h in _truths("maksssksksss0")], float)
    found = np.array([[f.box[0], f.box[1], f.box[0] + f.box[2], f.box[1] + f.box[3]] for f in faces], float)
    matched = (iou_matrix(truths, found).max(axis=1) >= 0.4).sum()
    assert matched >= 2, (name, faces)  # 3 annotated faces, one of them small
    assert all(0.0 <= f.score <= 1.0 for f in faces)
    if name in ("yunet", "yunet_n", "scrfd"):
        assert all(f.landmarks is not None and len(f.landmarks) == 10 for f in faces)


@needs_shared
@pytest.mark.parametrize("name", ["yunet", "yunet_n"])
def test_yunet_through_onnxruntime_finds_the_faces_opencv_finds(tmp_path, monkeypatch, name):
    monkeypatch.setenv("MASKFLOW_CACHE_DIR", str(tmp_path / "cache"))
    settings = _finders(tmp_path)[name]
    engines = {runtime: build_finder(name, {name: {**settings, "runtime": runtime}}, [FACE_WEIGHTS])
               for runtime in ("onnxruntime", "opencv")}
    for image in ("maksssksksss12.jpg", "maksssksksss240.jpg", "maksssksksss0.jpg"):  # 20 faces, a crowd, 3
        rgb = read_image(SCENES / "images" / image).rgb
        found = {runtime: finder.find(rgb, still=True) for runtime, finder in engines.items()}
        assert len(found["opencv"]) >= 3
        assert len(found["onnxruntime"]) == len(found["opencv"]), image
        for ours, theirs in zip(found["onnxruntime"], found["opencv"]):
            np.testing.assert_allclose(ours.box, theirs.box, atol=0.01)
            np.testing.assert_allclose(ours.landmarks, theirs.landmarks, atol=0.01)
            assert abs(ours.score - theirs.score) < 1e-4
    # YuNet-s's file takes 640x640 only; its size-free rewrite is kept once, by content
    assert len(list((tmp_path / "cache" / "finders").glob("*.free-size-*.onnx"))) == 1


@needs_shared
def test_yunet_runs_where_its_cache_folder_cannot_be_written(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MASKFLOW_CACHE_DIR", str(blocker))  # nothing can be made under a file
    finder = build_finder("yunet", {"yunet": _finders(tmp_path)["yunet"]}, [FACE_WEIGHTS])
    assert len(finder.find(read_image(SCENES / "images" / "maksssksksss0.jpg").rgb)) >= 2  # the copy stays in memory


@needs_shared
def test_an_unknown_yunet_runtime_names_the_choices(tmp_path):
    settings = _finders(tmp_path)["yunet"]
    with pytest.raises(ValueError, match="runtime='tflite'.*onnxruntime.*opencv"):
        build_finder("yunet", {"yunet": {**settings, "runtime": "tflite"}}, [FACE_WEIGHTS])


@needs_shared
def test_stills_upscaling_finds_more_small_faces_than_one_pass(tmp_path):
    finders = _finders(tmp_path)
    finders["yunet"]["upscale_if_face_under"] = None  # always upscale
    finder = build_finder("yunet", finders, [FACE_WEIGHTS])
    rgb = read_image(SCENES / "images" / "maksssksksss4.jpg").rgb  # a crowd of small faces
    assert len(finder.find(rgb, still=True)) > len(finder.find(rgb, still=False))


@needs_shared
def test_the_upscaled_pass_runs_only_where_the_first_finds_small_faces_or_none(tmp_path):
    finders = _finders(tmp_path)
    finders["yunet"]["upscale_if_face_under"] = 32
    finder = build_finder("yunet", finders, [FACE_WEIGHTS])
    passes = []
    first_pass = finder._pass
    finder._pass = lambda rgb: passes.append(rgb.shape) or first_pass(rgb)  # counts the real passes

    crowd = read_image(SCENES / "images" / "maksssksksss240.jpg").rgb  # 61 faces under 18 px: upscaled as always
    always = build_finder("yunet", {**finders, "yunet": {**finders["yunet"], "upscale_if_face_under": None}}, [FACE_WEIGHTS])
    assert [f.box for f in finder.find(crowd, still=True)] == [f.box for f in always.find(crowd, still=True)]
    assert len(passes) == 2
    passes.clear()
    close_up = np.zeros((480, 640, 3), np.uint8)  # one face that fills the frame: the first pass is enough
    face = read_image(SCENES / "images" / "maksssksksss0.jpg").rgb
    x, y, w, h = max(_truths("maksssksksss0"), key=lambda b: b[2] * b[3])
    close_up[:] = cv2.resize(np.ascontiguousarray(face[y - h // 2 : y + h + h // 2, x - w // 2 : x + w + w // 2]), (640, 480))
    found = finder.find(close_up, still=True)
    assert found and len(passes) == 1
    passes.clear()
    assert finder.find(np.full((480, 640, 3), 128, np.uint8), still=True) == [] and len(passes) == 2  # none found


@needs_shared
def test_finder_files_are_found_by_checksum_in_any_folder(tmp_path):
    finders = _finders(tmp_path)
    assert finder_files("fusion", finders) == sorted({finders["yunet"]["file"], finders["ultraface"]["file"]})
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(FACE_WEIGHTS / finders["yunet"]["file"], copy)
    build_finder("yunet", finders, [copy])  # a model's own copy serves as well as ../shared
    with pytest.raises(FinderFileError):
        build_finder("ultraface", finders, [copy])
