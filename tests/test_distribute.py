"""tf.distribute selection: the finetune stage's strategy on this CPU and by config."""

from __future__ import annotations

import numpy as np
import pytest

from maskflow.distribute import strategy_for


def _fit_one_step(strategy) -> float:
    import keras

    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.rand(16, 8).astype("float32")
    y = np.random.randint(0, 2, 16)
    history = model.fit(x, y, batch_size=8 * strategy.num_replicas_in_sync, epochs=1, verbose=0)
    return history.history["loss"][0]


def test_auto_falls_back_to_the_default_strategy_without_gpus():
    import tensorflow as tf

    strategy = strategy_for("auto")
    if len(tf.config.list_logical_devices("GPU")) > 1:
        pytest.skip("several GPUs: auto picks MirroredStrategy")
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
    assert np.isfinite(_fit_one_step(strategy))


def test_mirrored_by_config_trains_on_whatever_devices_exist():
    import tensorflow as tf

    strategy = strategy_for("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync >= 1
    assert np.isfinite(_fit_one_step(strategy))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="train.distribute"):
        strategy_for("parameter_server")
