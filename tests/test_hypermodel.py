"""The head search space: defaults, overrides, and a real short search."""

from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np
import pytest
from omegaconf import OmegaConf

from maskflow.config import CONF_DIR
from maskflow.tune import HeadHyperModel

from .conftest import compose, copy_real_faces, needs_shared


def _space():
    return OmegaConf.load(CONF_DIR / "tune" / "random.yaml").space


def test_default_hyperparameters():
    hp = kt.HyperParameters()
    model = HeadHyperModel(32, 3, _space(), {0: 1.0, 1: 1.0, 2: 1.0}).build(hp)
    assert hp.values == {"dropout": 0.0, "l2": 1e-6, "dense_layers": 0, "label_smoothing": 0.0, "learning_rate": 1e-4}
    assert model.output_shape == (None, 3)


def test_fixed_hyperparameters_shape_the_head():
    hp = kt.HyperParameters()
    hp.Fixed("dense_layers", 2)
    hp.Fixed("units", 64)
    model = HeadHyperModel(16, 2, _space(), {0: 1.0, 1: 1.0}).build(hp)
    dense = [layer for layer in model.layers if layer.name.startswith("dense_")]
    assert [d.units for d in dense] == [64, 64]


def test_short_search_learns_separable_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    onehot = np.eye(2, dtype="float32")[y]
    hypermodel = HeadHyperModel(8, 2, _space(), {0: 1.0, 1: 1.0})
    tuner = kt.RandomSearch(hypermodel, objective=kt.Objective("val_accuracy", "max"), max_trials=3,
                            directory=str(tmp_path), project_name="t", seed=0)
    tuner.search(x[:150], onehot[:150], validation_data=(x[150:], onehot[150:]), epochs=15, verbose=0)
    assert len(hypermodel.fit_seconds) == 3
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.score > 0.8
    # A second tuner on the same folder resumes: no trial is run again.
    again = HeadHyperModel(8, 2, _space(), {0: 1.0, 1: 1.0})
    tuner2 = kt.RandomSearch(again, objective=kt.Objective("val_accuracy", "max"), max_trials=3,
                             directory=str(tmp_path), project_name="t", seed=0, overwrite=False)
    tuner2.search(x[:150], onehot[:150], validation_data=(x[150:], onehot[150:]), epochs=15, verbose=0)
    assert again.fit_seconds == []



@needs_shared
def test_failing_trials_fail_the_search_only_when_none_completes(tmp_path, caplog):
    """A mistyped objective fails every trial: the stage stops with the count and the error
    instead of a 'perfect' empty result. Units of -1 make a real Keras layer refuse to
    build: with other trials left the best completed one is used and failures are counted."""
    import json

    import pytest

    from maskflow import prepare, tune
    from maskflow.contracts import StageContext

    data = copy_real_faces(tmp_path / "data", per_class=8)
    ctx = StageContext(run_dir=tmp_path / "run", cache_dir=tmp_path / "cache")

    def search(*overrides: str):
        return compose(tmp_path, [f"data.root={data}", "data.workers=1", "tune.max_trials=6", "tune.epochs=2",
                                  "tune.views=1", "tune.space.dense_layers=[1]", *overrides])

    ctx.results["prepare"] = prepare.run(search(), ctx)
    with pytest.raises(RuntimeError, match=r"no trial completed \(\d+ of \d+ failed"):
        tune.run(search("tune.objective=val_nl"), ctx)

    result = tune.run(search("tune.space.units=[16,-1]"), ctx)
    trials = json.loads((ctx.run_dir / "tune" / "trials.json").read_text())
    statuses = [t["status"] for t in trials]
    assert "COMPLETED" in statuses and {"FAILED", "INVALID"} & set(statuses), statuses
    assert result.best_hyperparameters["units"] == 16 and np.isfinite(result.best_score)
    assert any("trials failed" in r.getMessage() for r in caplog.records)


def test_balanced_nll_weighs_every_class_the_same_however_rare():
    from maskflow.tune import BalancedNLL

    y = np.eye(3, dtype="float32")[[0] * 98 + [1, 2]]
    good = np.where(y == 1, 0.9, 0.05).astype("float32")
    rare_wrong = good.copy()
    rare_wrong[-1] = [0.9, 0.05, 0.05]  # the one face of class 2 called class 0
    plain, balanced = keras.metrics.CategoricalCrossentropy(), BalancedNLL(3)
    plain.update_state(y, rare_wrong)
    balanced.update_state(y[:50], rare_wrong[:50])  # accumulated over batches
    balanced.update_state(y[50:], rare_wrong[50:])
    per_sample = -np.log(rare_wrong[np.arange(100), y.argmax(1)])
    expected = np.mean([per_sample[:98].mean(), per_sample[98], per_sample[99]])
    assert float(balanced.result()) == pytest.approx(expected, rel=1e-5)
    assert float(balanced.result()) > 5 * float(plain.result())  # one rare mistake weighs a third, not a hundredth
    balanced.reset_state()
    balanced.update_state(y[:98], good[:98])  # a batch without the rare classes: the mean is over the classes present
    assert float(balanced.result()) == pytest.approx(-np.log(0.9), rel=1e-5)
