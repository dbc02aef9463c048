"""Stage ``ensemble``: the averaged model and which seeds it trains."""

from __future__ import annotations

import keras
import numpy as np

from maskflow.detection.litert import LiteModel
from maskflow.ensemble import average_models, member_seeds
from maskflow.finetune import compiled

from .conftest import compose


def _member(path, seed: int):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1),
                              keras.layers.Conv2D(4, 3, strides=2, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.save(path)
    return model


def test_the_averaged_model_outputs_the_mean_of_its_members_in_keras_and_tflite(tmp_path):
    members = [_member(tmp_path / f"m{seed}.keras", seed) for seed in (1, 2, 3)]
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    expected = np.mean([m.predict(images, verbose=0) for m in members], axis=0)
    assert np.abs(members[0].predict(images, verbose=0) - expected).max() > 1e-3  # the members differ
    average_models([tmp_path / f"m{seed}.keras" for seed in (1, 2, 3)], tmp_path / "ensemble.keras")
    averaged = keras.models.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(averaged.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    lite = LiteModel(compiled(tmp_path / "ensemble.keras"))
    np.testing.assert_allclose(lite(images)[0], expected, rtol=1e-3, atol=1e-5)


def test_member_seeds_are_the_further_seeds_in_order_without_the_runs_own(tmp_path):
    assert member_seeds(compose(tmp_path / "a", [])) == []  # the default: one classifier, no stage work
    assert member_seeds(compose(tmp_path / "b", ["experiment=accurate"])) == [1, 2]  # seed 42 is the run's own
    assert member_seeds(compose(tmp_path / "c", ["seed=7", "train.ensemble_seeds=[3,7,3,5]"])) == [3, 5]
