"""The fine-tune stage's cache key."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import keras

from maskflow.backbones import ResolvedWeights
from maskflow.contracts import PreparedData, TunedHead
from maskflow.finetune import cache_key

from .conftest import compose


def _tuned(head: Path) -> TunedHead:
    return TunedHead(embeddings_dir=head.parent, head_model=head, best_hyperparameters={"units": 8}, best_score=0.9,
                     objective="val_loss", weights_file=None)


def test_key_follows_the_head_content_not_its_path(tmp_path):
    """A copied or moved cache must still find its fine-tuned model (the head's path lies
    inside the cache), and so must the next run, which saves the same head again (tune
    does, and a .keras file records its save time), while a different head must not."""
    cfg = compose(tmp_path / "conf", [])
    prepared = PreparedData(manifest=tmp_path / "m.csv", report=tmp_path / "r.json", classes=("a", "b"), digest="d", counts={})
    weights = ResolvedWeights(argument=None, file=None, sha256=None, origin="random")
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="out")])
    (tmp_path / "cache" / "tune").mkdir(parents=True)
    original = tmp_path / "cache" / "tune" / "head.keras"
    head.save(original)
    copied = tmp_path / "moved" / "tune" / "head.keras"
    copied.parent.mkdir(parents=True)
    shutil.copy2(original, copied)
    key = cache_key(cfg, prepared, _tuned(original), weights)
    assert cache_key(cfg, prepared, _tuned(copied), weights) == key
    # An ensemble's further seeds are other classifiers: this one is the same and stays cached.
    assert cache_key(compose(tmp_path / "conf2", ["train.ensemble_seeds=[1,2]"]), prepared, _tuned(original), weights) == key
    time.sleep(1.1)  # the save time in the file has whole seconds
    head.save(original)  # the same head, saved again, as the next run's tune stage does
    assert original.read_bytes() != copied.read_bytes()  # (so the file's bytes cannot be the key)
    assert cache_key(cfg, prepared, _tuned(original), weights) == key
    head.get_layer("out").set_weights([w + 1.0 for w in head.get_layer("out").get_weights()])
    head.save(copied)
    assert cache_key(cfg, prepared, _tuned(copied), weights) != key
