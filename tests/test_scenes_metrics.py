"""Scene-level scoring: IoU matching, AP, confusion with missed and spurious."""

from __future__ import annotations

import pytest

from maskflow.annotations import read_scenes
from maskflow.scoring import (
    average_precision,
    compare,
    headroom,
    iou,
    paired_bootstrap,
    scene_metrics,
    score_scenes,
)

from .conftest import SCENES, needs_shared


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_average_precision():
    assert average_precision([0.9, 0.8], [True, True], 2) == pytest.approx(1.0)
    assert average_precision([0.9, 0.8], [False, True], 2) == pytest.approx(0.25)
    assert average_precision([], [], 3) == 0.0


def _face(box, label, score=0.9, det=0.99):
    return {"box": list(box), "label": label, "score": score, "detector_score": det}


def test_score_scenes_counts_missed_and_spurious():
    truths = [("with_mask", (0, 0, 20, 20)), ("without_mask", (100, 100, 20, 20)), ("with_mask", (200, 0, 20, 20))]
    preds = [_face((1, 1, 20, 20), "with_mask"), _face((101, 99, 20, 20), "with_mask"), _face((400, 400, 20, 20), "without_mask")]
    scored = score_scenes([(preds, truths)], ["with_mask", "without_mask"])
    m = scored["metrics"]
    assert m["scenes_det_precision"] == pytest.approx(2 / 3)
    assert m["scenes_det_recall"] == pytest.approx(2 / 3)
    assert m["scenes_cls_accuracy"] == pytest.approx(0.5)
    cm = scored["confusion"]
    matrix = dict(zip(cm["rows"], cm["matrix"]))
    assert matrix["with_mask"] == [1, 0, 1]  # one right, one missed
    assert matrix["without_mask"] == [1, 0, 0]  # classified as with_mask
    assert matrix["spurious"] == [0, 1, 0]
    assert m["scenes_ap50_with_mask"] == pytest.approx(0.5)  # the hit ranks first: recall 1/2 at precision 1
    assert 0.0 <= m["scenes_map50"] <= 1.0


def test_a_face_with_a_record_per_class_counts_once_for_detection_and_in_each_class_ap():
    truths = [("with_mask", (0, 0, 20, 20)), ("mask_weared_incorrect", (100, 100, 20, 20))]
    preds = [_face((1, 1, 20, 20), "with_mask", 0.9), _face((1, 1, 20, 20), "mask_weared_incorrect", 0.1),
             _face((101, 99, 20, 20), "with_mask", 0.7), _face((101, 99, 20, 20), "mask_weared_incorrect", 0.3)]
    m = score_scenes([(preds, truths)], ["mask_weared_incorrect", "with_mask"])["metrics"]
    assert m["scenes_det_precision"] == pytest.approx(1.0) and m["scenes_det_recall"] == pytest.approx(1.0)
    assert m["scenes_cls_accuracy"] == pytest.approx(0.5)  # the second face's top label is wrong
    # Its lower-ranked record still finds the rare class: ranked first of its class, a hit.
    assert m["scenes_ap50_mask_weared_incorrect"] == pytest.approx(1.0)
    assert m["scenes_ap50_with_mask"] == pytest.approx(1.0)
    alone = score_scenes([([p for p in preds if p["score"] >= 0.5], truths)], ["mask_weared_incorrect", "with_mask"])
    assert alone["metrics"]["scenes_ap50_mask_weared_incorrect"] == 0.0


def test_headroom_separates_finding_faces_from_labelling_them():
    truths = [("with_mask", (0, 0, 20, 20)), ("without_mask", (100, 100, 20, 20)), ("with_mask", (200, 0, 20, 20))]
    # Every face found, two of three labelled wrong, one box loose (IoU 0.36).
    preds = [_face((0, 0, 20, 20), "without_mask"), _face((100, 100, 20, 20), "with_mask"), _face((205, 5, 20, 20), "with_mask")]
    classes = ["with_mask", "without_mask"]
    assert score_scenes([(preds, truths)], classes)["metrics"]["scenes_map50"] == 0.0
    gaps = headroom([(preds, truths)], classes)
    assert gaps["face_ap50"] == pytest.approx(2 / 3)  # the loose box is not a match at 0.5 ...
    assert gaps["face_ap30"] == pytest.approx(1.0)  # ... but is at 0.3
    assert gaps["map50_true_labels"] == pytest.approx((0.5 + 1.0) / 2)  # with_mask: 1 of 2 faces, without: 1 of 1
    assert preds[0]["label"] == "without_mask"  # the caller's predictions are left as they were


def test_bootstrap_interval_brackets_the_score_and_shows_how_uneven_the_scenes_are():
    classes = ["with_mask", "without_mask"]
    found = ([_face((0, 0, 20, 20), "with_mask"), _face((100, 0, 20, 20), "without_mask")],
             [("with_mask", (0, 0, 20, 20)), ("without_mask", (100, 0, 20, 20))])
    missed = ([_face((300, 300, 20, 20), "with_mask")], [("with_mask", (0, 0, 20, 20)), ("without_mask", (100, 0, 20, 20))])

    def interval(results, key="scenes_map50"):
        m = scene_metrics(results, classes, resamples=200)["metrics"]
        return m[f"{key}_ci95_low"], m[f"{key}_ci95_high"]

    assert interval([found] * 8) == (1.0, 1.0)  # every resample is the same scenes: no spread
    mixed = [found] * 6 + [missed] * 2
    point = score_scenes(mixed, classes)["metrics"]["scenes_map50"]
    low, high = interval(mixed)
    assert low < point < high and low < 0.8  # two bad scenes in eight move the score a lot
    assert interval(mixed) == (low, high)  # seeded: the same interval every time
    # Every rate has one, per class and at IoU 0.3 too; counts have none.
    m = scene_metrics(mixed, classes, resamples=50)["metrics"]
    for key in ("scenes_ap50_with_mask", "scenes_ap30_without_mask", "scenes_map30", "scenes_det_recall"):
        assert m[f"{key}_ci95_low"] <= m[key] <= m[f"{key}_ci95_high"], key
    assert "scenes_faces_ci95_low" not in m and m["scenes_faces_with_mask"] == 8


def test_bootstrap_by_weights_equals_scoring_the_drawn_images():
    """A resample counts each drawn image as often as it was drawn: the same AP as scoring
    the repeated images themselves."""
    import numpy as np

    from maskflow.scoring import _match, _summary

    classes = ["with_mask", "without_mask"]
    rng = np.random.default_rng(3)
    results = []
    for _ in range(12):
        truths = [(str(rng.choice(classes)), (int(x), 0, 20, 20)) for x in rng.choice(400, 3, replace=False) * 30]
        preds = [_face((x + int(rng.integers(-4, 5)), 0, 20, 20), str(rng.choice(classes)), float(rng.uniform(0.3, 1)),
                       float(rng.uniform(0.3, 1))) for _, (x, *_r) in truths if rng.uniform() < 0.8]
        results.append((preds, truths))
    draw = rng.integers(len(results), size=len(results))
    weights = np.bincount(draw, minlength=len(results)).astype(float)
    weighted = _summary(_match(results, classes, 0.5, None), classes, weights)
    direct = score_scenes([results[i] for i in draw], classes)["metrics"]
    for key in ("scenes_map50", "scenes_ap50_with_mask", "scenes_det_precision", "scenes_det_recall", "scenes_faces"):
        assert weighted[key] == pytest.approx(direct[key]), key


def test_ap_at_iou_0_3_counts_a_box_drawn_in_another_convention():
    """A whole-head box around a found face: a miss at IoU 0.5, a hit at 0.3."""
    face = (100, 100, 40, 50)
    head = (94, 66, 52, 75)  # 1.3x wider, 1.5x taller, centred 0.28 of its height higher: IoU 0.39
    m = scene_metrics([([_face(face, "with_mask")], [("with_mask", head)])], ["with_mask"])["metrics"]
    assert m["scenes_ap50_with_mask"] == 0.0 and m["scenes_ap30_with_mask"] == 1.0 and m["scenes_map30"] == 1.0


def test_paired_bootstrap_tells_a_better_setting_from_an_equal_one():
    classes = ["with_mask", "without_mask"]
    truths = [("with_mask", (0, 0, 20, 20)), ("without_mask", (100, 0, 20, 20))]
    found = ([_face((0, 0, 20, 20), "with_mask"), _face((100, 0, 20, 20), "without_mask")], truths)
    half = ([_face((0, 0, 20, 20), "with_mask")], truths)
    better, worse = [found] * 8, [found] * 6 + [half] * 2
    paired = paired_bootstrap(better, worse, classes)
    assert paired["delta"] > 0 and paired["delta_ci95_low"] >= 0.0  # never worse on any resample
    assert 0.5 < paired["a_higher"] < 1.0  # resamples without the two weaker scenes tie
    same = paired_bootstrap(worse, worse, classes)
    assert (same["delta"], same["delta_ci95_low"], same["delta_ci95_high"], same["a_higher"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap(better, worse[:-1], classes)


@needs_shared
def test_compare_scores_two_prediction_files_on_the_annotations(tmp_path):
    import json

    items = read_scenes(SCENES).items(limit=4)
    perfect = tmp_path / "a.jsonl"
    perfect.write_text("".join(json.dumps({"source": str(path), "frame": 0, "faces": [_face(box, label) for label, box in truths]}) + "\n"
                               for path, truths in items))
    empty = tmp_path / "b.jsonl"
    empty.write_text("".join(json.dumps({"source": f"elsewhere/{path.name}", "frame": 0, "faces": []}) + "\n" for path, _ in items))
    result = compare(SCENES, perfect, empty, ["mask_weared_incorrect", "with_mask", "without_mask"], resamples=50)
    assert result["images"] == 4 and result["delta"] == pytest.approx(1.0) and result["a_higher"] == 1.0


def test_unknown_truth_classes_are_ignored_and_counted():
    truths = [("mask_weared_incorrect", (0, 0, 20, 20))]
    scored = score_scenes([([], truths)], ["with_mask", "without_mask"])
    assert scored["metrics"]["scenes_ignored_other_classes"] == 1.0
    assert scored["metrics"]["scenes_faces"] == 0.0


@needs_shared
def test_split_names_split_a_voc_folder_as_the_pipeline_does(tmp_path):
    import shutil

    from maskflow.scoring import split_names

    folder = tmp_path / "scenes"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for xml in sorted((SCENES / "annotations").glob("*.xml"))[:16]:
        shutil.copy(xml, folder / "annotations")
        image = SCENES / "images" / (xml.stem + ".jpg")
        shutil.copy(image, folder / "images")
    cache = [f"paths.cache_dir={tmp_path}/cache", "data.workers=1"]
    names = {s: split_names(folder, s, overrides=cache) for s in ("train", "val", "test")}
    assert names["test"] and names["train"]
    assert not (names["test"] & names["train"]) and not (names["test"] & names["val"])
    assert set().union(*names.values()) == {f"images/{p.name}" for p in (folder / "images").iterdir()}
    assert split_names(folder, "test", overrides=cache) == names["test"]  # deterministic


def test_the_operating_point_is_where_box_and_label_together_score_best():
    from maskflow.scoring import at_operating_point, choose_operating_point, face_outcomes, operating_curve

    classes = ["with_mask", "without_mask"]
    truths = [("with_mask", (0, 0, 20, 20)), ("without_mask", (100, 0, 20, 20)), ("with_mask", (200, 0, 20, 20))]
    preds = [_face((0, 0, 20, 20), "with_mask", 0.95),  # right, ranked 0.9405
             _face((100, 0, 20, 20), "with_mask", 0.8),  # the box of a face, the wrong label: not right
             _face((200, 0, 20, 20), "with_mask", 0.7),  # right
             _face((400, 400, 20, 20), "without_mask", 0.5),  # no face there
             _face((300, 300, 20, 20), "without_mask", 0.2)]  # no face there
    outcomes = face_outcomes([(preds, truths)], classes)
    assert outcomes[0].right.tolist() == [True, False, True, False, False] and outcomes[0].n_truth == 3
    curve = operating_curve(outcomes)
    assert curve["precision"].tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5, 0.4])
    assert curve["recall"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    best = choose_operating_point(outcomes)  # F1 2/3 at the third face: 2 right of 3 reported, 2 of 3 found
    assert best == pytest.approx(0.7 * 0.99)
    assert choose_operating_point(outcomes, "precision", 0.9) == pytest.approx(0.95 * 0.99)  # only the first is that precise
    assert choose_operating_point(outcomes, "precision", 0.6) == pytest.approx(best)  # the most found at >= 0.6
    at = at_operating_point(outcomes, best)
    assert (at["precision"], at["recall"], at["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert at["reported"] == 3 and at["false_per_image"] == 1 and at["false_without_mask_per_100"] == 0
    low = at_operating_point(outcomes, 0.0)  # every candidate: two false faces, both without_mask
    assert low["false_without_mask_per_100"] == 200 and low["precision"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no face"):
        choose_operating_point(face_outcomes([([], truths)], classes))


def test_operating_point_intervals_bracket_the_point_and_widen_with_uneven_images():
    from maskflow.scoring import at_operating_point, face_outcomes

    classes = ["with_mask", "without_mask"]
    truths = [("with_mask", (0, 0, 20, 20))]
    good = ([_face((0, 0, 20, 20), "with_mask")], truths)
    bad = ([_face((0, 0, 20, 20), "without_mask")], truths)
    same = at_operating_point(face_outcomes([good] * 6, classes), 0.5, resamples=200)
    assert same["f1"] == same["f1_ci95_low"] == same["f1_ci95_high"] == 1.0
    mixed = at_operating_point(face_outcomes([good] * 6 + [bad] * 2, classes), 0.5, resamples=200)
    assert mixed["f1"] == pytest.approx(0.75) and mixed["f1_ci95_low"] < 0.75 < mixed["f1_ci95_high"]


def test_map_from_one_record_per_face_equals_map_from_a_record_per_class():
    # Files of either shape score the same: probs are expanded for AP as runner_up says.
    truths = [("with_mask", (0, 0, 20, 20)), ("mask_weared_incorrect", (100, 100, 20, 20))]
    classes = ["mask_weared_incorrect", "with_mask"]
    per_face = [{**_face((1, 1, 20, 20), "with_mask", 0.9), "probs": {"with_mask": 0.9, "mask_weared_incorrect": 0.1}},
                {**_face((101, 99, 20, 20), "with_mask", 0.7), "probs": {"with_mask": 0.7, "mask_weared_incorrect": 0.3}}]
    per_class = [_face((1, 1, 20, 20), "with_mask", 0.9), _face((1, 1, 20, 20), "mask_weared_incorrect", 0.1),
                 _face((101, 99, 20, 20), "with_mask", 0.7), _face((101, 99, 20, 20), "mask_weared_incorrect", 0.3)]
    a = score_scenes([(per_face, truths)], classes, runner_up=0.01)["metrics"]
    b = score_scenes([(per_class, truths)], classes)["metrics"]
    assert a == b and a["scenes_ap50_mask_weared_incorrect"] == pytest.approx(1.0)
    assert score_scenes([(per_face, truths)], classes)["metrics"]["scenes_ap50_mask_weared_incorrect"] == 0.0
