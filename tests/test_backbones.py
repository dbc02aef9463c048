"""Backbone configs, offline-first weights and the in-graph preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from maskflow import backbones
from maskflow.config import CONF_DIR

from .conftest import WEIGHTS

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def test_all_required_backbones_have_configs():
    required = {"mobilenetv2", "mobilenetv2_035", "mobilenet_025", "xception", "densenet121", "inceptionv3",
                "resnet152v2", "vgg16", "efficientnetb0", "mobilenetv3small"}
    assert required <= set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_is_complete(tmp_path, name):
    from .conftest import compose

    cfg = compose(tmp_path, [f"model={name}"]).model  # composed by Hydra, as the pipeline does
    assert cfg.name == name
    assert callable(backbones.constructor(cfg))
    assert cfg.preprocess in ("tf", "torch", "caffe", "none")
    assert cfg.weights == "imagenet" and cfg.weights_file.endswith(".h5")
    assert int(cfg.input_size) >= 75 and int(cfg.finetune_layers) > 0


@pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared/weights is not present")
def test_local_weights_found_and_hashed():
    cfg = OmegaConf.load(CONF_DIR / "model" / "mobilenet_025.yaml")
    resolved = backbones.resolve_weights(cfg, [str(WEIGHTS)], allow_download=False)
    assert resolved.origin == "local" and resolved.file == cfg.weights_file and len(resolved.sha256) == 64


def test_missing_weights_message_names_file_places_and_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cfg = OmegaConf.load(CONF_DIR / "model" / "xception.yaml")
    with pytest.raises(backbones.WeightsUnavailable) as err:
        backbones.resolve_weights(cfg, [str(tmp_path / "empty")], allow_download=False)
    message = str(err.value)
    assert cfg.weights_file in message
    assert str(tmp_path / "empty") in message and str(tmp_path / "keras" / "models") in message
    assert "model.weights=null" in message and "model.weights=/path" in message


def test_weights_null_and_path(tmp_path):
    cfg = OmegaConf.load(CONF_DIR / "model" / "mobilenet_025.yaml")
    cfg.weights = None
    assert backbones.resolve_weights(cfg, []).argument is None
    cfg.weights = str(tmp_path / "nope.h5")
    with pytest.raises(backbones.WeightsUnavailable):
        backbones.resolve_weights(cfg, [])


@pytest.mark.skipif(not WEIGHTS.is_dir(), reason="../shared/weights is not present")
def test_local_weights_load_at_another_input_size():
    cfg = OmegaConf.load(CONF_DIR / "model" / "mobilenet_025.yaml")
    resolved = backbones.resolve_weights(cfg, [str(WEIGHTS)], allow_download=False)
    pretrained = backbones.build_backbone(cfg, resolved, input_size=96)
    random = backbones.build_backbone(cfg, backbones.ResolvedWeights(None, None, None, "random"), input_size=96)
    first = lambda m: next(w for w in m.weights if len(w.shape) == 4).numpy()  # noqa: E731
    assert not np.allclose(first(pretrained), first(random))
    assert pretrained.output_shape == (None, 256)


@pytest.mark.parametrize(
    "mode, pixel, expected",
    [("tf", [0.0, 127.5, 255.0], [-1.0, 0.0, 1.0]),
     ("caffe", [10.0, 20.0, 30.0], [30 - 103.939, 20 - 116.779, 10 - 123.68]),
     ("torch", [0.485 * 255, 0.456 * 255, 0.406 * 255], [0.0, 0.0, 0.0]),
     ("none", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])],
)
def test_preprocess_modes(mode, pixel, expected):
    x = np.array(pixel, dtype=np.float32).reshape(1, 1, 1, 3)
    out = np.asarray(backbones.Preprocess(mode)(x)).reshape(3)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_augmentation_keeps_shape_and_range():
    aug = backbones.augmentation(OmegaConf.create({"flip": True, "rotation": 0.05, "zoom": 0.1, "brightness": 0.2,
                                                   "contrast": 0.2, "blur": 0.5}), seed=1)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.asarray(aug(x, training=True))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 255
    assert not np.allclose(x, y)
    np.testing.assert_allclose(np.asarray(aug(x, training=False)), x)


def test_layers_above_a_cut_give_the_full_models_output_and_share_its_weights():
    # train=top_blocks trains these layers on cached features of the cut: the full model
    # must then compute exactly what the trained top computed.
    import keras

    cfg = OmegaConf.create({"name": "m", "constructor": "MobileNetV2", "kwargs": {"alpha": 0.35},
                            "input_size": 64, "preprocess": "tf"})
    keras.utils.set_random_seed(0)
    backbone = backbones.build_backbone(cfg, backbones.ResolvedWeights(None, None, None, "random"))
    head = keras.Sequential([keras.Input((backbone.output_shape[-1],)), keras.layers.Dense(3, activation="softmax")])
    cut = keras.Model(backbone.input, [backbone.get_layer("block_12_add").output, backbone.output])
    top = backbones.layers_above(backbone, "block_12_add", head)
    images = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    features, pooled = cut(images, training=False)
    np.testing.assert_allclose(top(features, training=False), head(pooled), rtol=1e-4, atol=1e-5)
    shared = {id(w) for w in backbone.weights}
    assert {id(w) for w in top.weights} - {id(w) for w in head.weights} <= shared
    assert backbone.get_layer("block_16_project") in top.layers
    with pytest.raises(ValueError, match="not a layer"):
        backbones.layers_above(backbone, "no_such_layer", head)


def test_tflite_predictor_matches_keras_in_output_order_for_any_batch(tmp_path):
    # Embeddings and the detector's classifier run through TFLite: they must be Keras's
    # numbers, each output in Keras's order, whatever the batch size.
    import keras

    cfg = OmegaConf.create({"name": "m", "constructor": "MobileNetV2", "kwargs": {"alpha": 0.35},
                            "input_size": 64, "preprocess": "tf"})
    keras.utils.set_random_seed(0)
    extractor = backbones.feature_extractor(cfg, backbones.ResolvedWeights(None, None, None, "random"), "block_12_add")
    fast = backbones.TFLitePredictor(extractor)
    images = np.random.default_rng(0).uniform(0, 255, (5, 64, 64, 3)).astype("float32")
    expected = extractor.predict(images, verbose=0)
    for batch in (images, images[:2], images):
        got = fast(batch)
        assert [g.shape for g in got] == [(len(batch), 1280), (len(batch), 4, 4, 32)]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e[: len(batch)], rtol=1e-3, atol=1e-4)
    # From a file (what a registered model carries): the single output of a classifier.
    pooled = keras.Model(extractor.input, extractor.output[0])
    (tmp_path / "m.tflite").write_bytes(backbones.to_tflite(pooled))
    np.testing.assert_allclose(backbones.TFLitePredictor(tmp_path / "m.tflite")(images)[0], expected[0], rtol=1e-3, atol=1e-4)
