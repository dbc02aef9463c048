"""Embeddings for the head search: extra augmented views of the classes ``tune.class_views`` names."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from maskflow.backbones import ResolvedWeights
from maskflow.contracts import PreparedData
from maskflow.errors import UserError
from maskflow.tune import compute_embeddings, embedding_key, plain_rows

from .conftest import FACES, compose, needs_shared

RANDOM = ResolvedWeights(argument=None, file=None, sha256=None, origin="random")


def _prepared(tmp_path, labels_by_split: dict[str, list[str]]) -> PreparedData:
    """A manifest of real face photos (mask-faces-4k) under the given labels."""
    photos = sorted((FACES / "with_mask").glob("*.jpg"))
    rows, i = [], 0
    for split, labels in labels_by_split.items():
        for label in labels:
            crop = tmp_path / "crops" / f"{i}.jpg"
            crop.parent.mkdir(exist_ok=True)
            shutil.copy(photos[i * 7], crop)
            rows.append({"crop": str(crop), "label": label, "split": split, "status": "ok"})
            i += 1
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return PreparedData(manifest=manifest, report=tmp_path / "r.json", classes=("a", "b"), digest="d", counts={})


@needs_shared
def test_class_views_add_augmented_views_of_the_named_class_only(tmp_path):
    prepared = _prepared(tmp_path, {"train": ["a"] * 4 + ["b"] * 2, "val": ["a", "b"], "test": ["a", "b"]})
    overrides = ["model=mobilenetv2_035", "model.input_size=32", "model.weights=null", "train=top_blocks", "tune.views=2"]
    cfg = compose(tmp_path / "c", overrides + ["tune.class_views={b:5}"])
    out = compute_embeddings(cfg, prepared, RANDOM, tmp_path / "emb")
    with np.load(out / "train.npz") as data:
        x, y, f = data["x"], data["y"], data["f"]
    assert np.bincount(y).tolist() == [4 * 2, 2 * 5] and len(f) == len(y)  # b: 2 plain-or-view + 3 extra views each
    assert plain_rows(out, "train", 2) == 6 and y[:6].tolist() == [0, 0, 0, 0, 1, 1]
    extra = x[12:]  # after two passes over all six images: b's extra views, each drawn anew
    assert len(extra) == 6 and len({row.tobytes() for row in extra}) == 6
    with np.load(out / "val.npz") as data:
        assert data["y"].tolist() == [0, 1]  # val and test: one plain view each, whatever class_views says
    plain = compute_embeddings(compose(tmp_path / "p", overrides), prepared, RANDOM, tmp_path / "plain")
    with np.load(plain / "train.npz") as data:
        np.testing.assert_allclose(data["x"][:6], x[:6], rtol=1e-4, atol=1e-5)  # the images themselves, as before
        assert len(data["y"]) == 12

    key = embedding_key(compose(tmp_path / "p", overrides), prepared, RANDOM)
    assert embedding_key(compose(tmp_path / "k", overrides + ["tune.class_views={b:2}"]), prepared, RANDOM) == key  # no more than views: none
    assert embedding_key(cfg, prepared, RANDOM) != key
    with pytest.raises(UserError, match=r"tune.class_views names \['c'\]"):
        embedding_key(compose(tmp_path / "u", overrides + ["tune.class_views={c:4}"]), prepared, RANDOM)
