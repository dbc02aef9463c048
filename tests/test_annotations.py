"""Scene labels in VOC, YOLO and COCO: one reader, every bad label file named, class names
mapped or counted, never folded into another class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from maskflow.annotations import (
    ClassMapper,
    LabelFormatError,
    LabelledImage,
    detect_format,
    parse_class_map,
    read_scenes,
    require_mapped,
    write_scenes,
)

from .conftest import SCENES, needs_shared


def _image(path: Path, size=(200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


def _set(tmp_path: Path) -> list[LabelledImage]:
    """Three images: two faces, one face of the rare class, none."""
    images = [_image(tmp_path / "src" / f"{n}.jpg") for n in ("a", "b", "c")]
    faces = [(("with_mask", (10, 20, 30, 40)), ("without_mask", (100, 10, 24, 30))), (("mask_weared_incorrect", (5, 5, 50, 60)),), ()]
    return [LabelledImage(p, f"images/{p.name}", f) for p, f in zip(images, faces)]


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_each_format_reads_back_what_was_written_and_is_recognised(tmp_path, fmt):
    written = _set(tmp_path)
    folder = write_scenes(written, tmp_path / fmt, fmt)
    assert detect_format(folder) == fmt
    scenes = read_scenes(folder)
    assert scenes.format == fmt and not scenes.problems and not scenes.unmapped
    assert [(im.rel, im.faces) for im in scenes.images] == [(im.rel, im.faces) for im in written]


def test_yolo_layouts_and_where_class_names_come_from(tmp_path):
    # Ultralytics / Roboflow: images/<split>/ mirrored by labels/<split>/, names in data.yaml (a dict here).
    root = tmp_path / "ultra"
    _image(root / "images" / "train" / "x.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "x.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: mask\n  1: no-mask\n")
    scenes = read_scenes(root, class_map={"mask": "with_mask", "no-mask": "without_mask"})
    (image,) = scenes.images
    assert image.rel == "images/train/x.jpg"
    # cx 0.5 w 0.2 of 200 px -> x 80..120; the polygon line counts as its bounding box.
    assert image.faces == (("without_mask", (80, 30, 40, 40)), ("with_mask", (20, 10, 40, 20)))
    # Darknet: labels beside the images, names in obj.names, or given.
    side = tmp_path / "darknet"
    _image(side / "y.png")
    (side / "y.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (side / "obj.names").write_text("with_mask\n")
    assert read_scenes(side, "yolo").images[0].faces == (("with_mask", (50, 25, 100, 50)),)
    assert read_scenes(side, "yolo", names=["no_mask"]).images[0].faces[0][0] == "without_mask"  # a known alias
    (side / "obj.names").unlink()
    unnamed = read_scenes(side, "yolo")  # no names anywhere: the id is the name, which a class map can give
    assert unnamed.images[0].faces[0][0] == "0" and unnamed.unmapped == {"0": 1}
    assert read_scenes(side, "yolo", class_map={"0": "with_mask"}).images[0].faces[0][0] == "with_mask"


def test_every_bad_label_file_is_named_with_its_reason_and_its_image_left_out(tmp_path):
    root = tmp_path / "yolo"
    for name in ("good", "malformed", "out_of_range", "outside", "empty", "unlabelled"):
        _image(root / "images" / f"{name}.jpg")
    labels = root / "labels"
    labels.mkdir()
    (labels / "good.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (labels / "malformed.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 oops 0.2\n")
    (labels / "out_of_range.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (labels / "outside.txt").write_text("0 1.5 0.5 0.2 0.2\n")
    (labels / "empty.txt").write_text("0 0.5 0.5 0 0.2\n")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # no image of this name
    (root / "classes.txt").write_text("with_mask\nwithout_mask\n")
    scenes = read_scenes(root)
    assert [im.rel for im in scenes.images] == ["images/good.jpg"]
    reasons = {p.source: p.reason for p in scenes.problems}
    assert reasons == {"labels/malformed.txt": "malformed_line", "labels/out_of_range.txt": "class_out_of_range",
                       "labels/outside.txt": "box_outside_image", "labels/empty.txt": "empty_box",
                       "labels/orphan.txt": "image_missing"}
    assert "line 2" in str(next(p for p in scenes.problems if p.reason == "malformed_line"))
    assert scenes.unlabelled == ["images/unlabelled.jpg"]
    lines = scenes.report_lines("prog")
    assert sum("skipped labels/" in line for line in lines) == 5 and any("1 image(s) have no label file" in line for line in lines)


def test_bad_coco_and_voc_entries_are_named_and_the_rest_is_read(tmp_path):
    root = tmp_path / "coco"
    for name in ("a", "b", "c"):
        _image(root / "images" / f"{name}.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                       {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100},
                       {"id": 3, "file_name": "gone.jpg", "width": 200, "height": 100},
                       {"id": 4, "file_name": "c.jpg"}],
            "categories": [{"id": 1, "name": "with_mask"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
                            {"id": 2, "image_id": 2, "category_id": 9, "bbox": [10, 10, 20, 20]},
                            {"id": 3, "image_id": 99, "category_id": 1, "bbox": [10, 10, 20, 20]},
                            {"id": 4, "image_id": 4, "category_id": 1, "bbox": [500, 10, 20, 20]}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances.json").write_text(json.dumps(data))
    (root / "annotations" / "broken.json").write_text("{not json")
    scenes = read_scenes(root)
    assert scenes.format == "coco" and [im.rel for im in scenes.images] == ["images/a.jpg"]
    assert sorted(p.reason for p in scenes.problems) == ["bad_json", "box_outside_image", "image_missing", "unknown_category",
                                                        "unknown_image"]
    voc = tmp_path / "voc"
    _image(voc / "images" / "ok.jpg")
    (voc / "annotations").mkdir()
    (voc / "annotations" / "ok.xml").write_text("<annotation><filename>ok.jpg</filename><object><name>with_mask</name>"
                                                "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>22</ymax></bndbox>"
                                                "</object></annotation>")
    (voc / "annotations" / "bad.xml").write_text("<annotation><filename>")
    (voc / "annotations" / "nobox.xml").write_text("<annotation><filename>ok.jpg</filename><object><name>with_mask</name>"
                                                   "</object></annotation>")
    (voc / "annotations" / "missing.xml").write_text("<annotation><filename>gone.jpg</filename></annotation>")
    _image(voc / "images" / "converted.jpg")  # its .xml still names the PNG it was converted from
    (voc / "annotations" / "converted.xml").write_text("<annotation><filename>converted.png</filename></annotation>")
    scenes = read_scenes(voc)
    assert [(im.rel, im.faces) for im in scenes.images] == [("images/converted.jpg", ()), ("images/ok.jpg", (("with_mask", (1, 2, 10, 20)),))]
    assert {p.source: p.reason for p in scenes.problems} == {
        "annotations/bad.xml": "bad_xml", "annotations/nobox.xml": "malformed_object", "annotations/missing.xml": "image_missing"}


def test_class_names_map_by_class_map_or_alias_and_the_rest_is_counted_never_folded():
    mapper = ClassMapper(class_map=parse_class_map("mask=with_mask, face=without_mask"))
    assert [mapper(n) for n in ("mask", "face", "With Incorrect Mask", "mask_weared_incorrect", "hat", "hat")] == [
        "with_mask", "without_mask", "mask_weared_incorrect", "mask_weared_incorrect", "hat", "hat"]
    assert mapper.unmapped == {"hat": 2}
    with pytest.raises(LabelFormatError, match="'helmet' is not one of the classes"):
        ClassMapper(class_map={"x": "helmet"})
    with pytest.raises(LabelFormatError, match="NAME=CLASS"):
        parse_class_map("mask:with_mask")


def test_a_set_whose_names_map_to_nothing_stops_with_the_class_map_that_fixes_it(tmp_path):
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.2 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("face\nface_mask\n")
    scenes = read_scenes(root)
    with pytest.raises(LabelFormatError, match="--class-map face=CLASS,face_mask=CLASS"):
        require_mapped(scenes)
    require_mapped(read_scenes(root, class_map={"face": "without_mask", "face_mask": "with_mask"}))


def test_a_folder_without_labels_says_which_formats_it_looked_for(tmp_path):
    _image(tmp_path / "photos" / "a.jpg")
    with pytest.raises(LabelFormatError, match="cannot tell the label format.*--format"):
        read_scenes(tmp_path / "photos")
    with pytest.raises(LabelFormatError, match="does not exist"):
        read_scenes(tmp_path / "nowhere")


@needs_shared
def test_the_853_scenes_read_as_before(tmp_path):
    scenes = read_scenes(SCENES)
    assert (scenes.format, len(scenes.images), scenes.problems, scenes.unlabelled, scenes.unmapped) == ("voc", 853, [], [], {})
    assert scenes.faces_per_class() == {"with_mask": 3232, "without_mask": 717, "mask_weared_incorrect": 123}
    # The twelve boxes drawn one pixel past the right edge are kept as drawn.
    assert sum(x + w > 400 for im in scenes.images for _, (x, y, w, h) in im.faces) >= 12


@needs_shared
def test_prepare_trains_on_a_yolo_set_with_unmapped_names_skipped_and_counted(tmp_path, cfg_factory):
    """A scene set in YOLO format is prepared like the VOC one: a crop per mapped face,
    a face of a name that maps to no class skipped with its reason, every scene's faces
    on one side of the split."""
    import csv

    from maskflow import prepare
    from maskflow.contracts import StageContext

    source = read_scenes(SCENES).images[:24]
    folder = write_scenes(source, tmp_path / "yolo", "yolo")
    (folder / "data.yaml").write_text("names: [mask_weared_incorrect, mask, without_mask]\n")  # 'mask' needs the map
    cfg = cfg_factory(["data=mask-scenes-853", f"data.root={folder}", "data.format=yolo", "data.workers=1",
                       "+data.class_map.mask=with_mask"])
    result = prepare.run(cfg, StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache"))
    rows = list(csv.DictReader(open(result.manifest, newline="", encoding="utf-8")))
    kept = [r for r in rows if r["status"] == "ok"]
    faces = sum(len(im.faces) for im in source)
    assert len(rows) == faces and result.classes == ("mask_weared_incorrect", "with_mask", "without_mask")
    assert {r["label"] for r in kept} <= set(result.classes) and any(r["label"] == "with_mask" for r in kept)
    by_scene: dict[str, set[str]] = {}
    for r in kept:
        by_scene.setdefault(r["path"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_scene.values())
    unmapped = prepare.run(cfg_factory(["data=mask-scenes-853", f"data.root={folder}", "data.format=yolo", "data.workers=1"]),
                           StageContext(run_dir=tmp_path / "run2", cache_dir=tmp_path / "cache"))
    report = json.loads(unmapped.report.read_text())
    assert report["skip_reasons"]["unmapped_class"] == sum(label == "with_mask" for im in source for label, _ in im.faces)
    assert "mask" not in unmapped.classes  # counted, not a class of its own, not folded into another


@needs_shared
def test_one_config_file_adds_a_scene_set_of_any_format_to_the_union(tmp_path, cfg_factory):
    """A user's set, described by one file in a config folder of their own and added on the
    command line, is a third part of the union: prepared by its own split rules, its
    faces under maskflow's classes, no scene on two sides."""
    import csv

    from maskflow import prepare
    from maskflow.contracts import StageContext

    folder = write_scenes(read_scenes(SCENES).images[-12:], tmp_path / "mine", "coco")
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "my-scenes.yaml").write_text(f"defaults:\n  - mask-scenes-853\n  - _self_\nname: my-scenes\nroot: {folder}\n"
                                         "format: coco\nworkers: 1\n")
    cfg = cfg_factory(["data=mask-union", "data.limit_per_class=3", "data.parts.faces.workers=1", "data.parts.scenes.workers=1",
                       f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+data@data.parts.mine=my-scenes"])
    assert list(cfg.data.parts) == ["faces", "scenes", "mine"] and cfg.data.parts.mine.format == "coco"
    ctx = StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    result = prepare.run(cfg, ctx)
    rows = list(csv.DictReader(open(result.manifest, newline="", encoding="utf-8")))
    mine = [r for r in rows if r["part"] == "mine" and r["status"] == "ok"]
    assert len(mine) == sum(len(im.faces) for im in read_scenes(folder).images if im.faces) - sum(
        r["reason"] == "box_too_small" for r in rows if r["part"] == "mine")
    assert {r["label"] for r in mine} <= set(result.classes)
    splits: dict[str, set[str]] = {}
    for r in mine:
        splits.setdefault(r["path"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values()) and ctx.results["data:my-scenes"][1].digest
