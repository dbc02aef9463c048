"""Backbones from ``keras.applications``, ImageNet weights resolved offline first.

A backbone is a config file (``conf/model/<name>.yaml``) naming a constructor of
``keras.applications``, its preprocessing, input size and weights file. Weights are
looked for, in order, in the configured weight folders, in the Keras cache, and only then
downloaded; when none works the run stops before any training with a message naming
the file, the places searched and the two ways out.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from maskflow.cache import sha256_file
from maskflow.detection.litert import LiteModel
from maskflow.errors import UserError

log = logging.getLogger(__name__)

# Preprocessing modes of keras.applications, as in-graph layers (exports carry them).
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class WeightsUnavailable(UserError, RuntimeError):
    """ImageNet weights for a backbone can be found neither locally nor by download."""


@keras.saving.register_keras_serializable(package="maskflow")
class Preprocess(keras.layers.Layer):
    """RGB in [0, 255] -> the input a backbone was trained on (mode: tf|torch|caffe|none)."""

    def __init__(self, mode: str = "tf", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe", "none"):
            raise ValueError(f"unknown preprocess mode {mode!r}")
        self.mode = mode

    def call(self, x):
        ops = keras.ops
        x = ops.cast(x, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(np.array(_TORCH_MEAN, "float32") * 255.0)
            std = ops.convert_to_tensor(np.array(_TORCH_STD, "float32") * 255.0)
            return (x - mean) / std
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR, "float32"))
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@dataclass(frozen=True)
class ResolvedWeights:
    """What to pass as ``weights=`` and what to log about it."""

    argument: str | None  # a file path, or None for random init
    file: str | None
    sha256: str | None
    origin: str  # "local", "keras-cache", "download", "path", "random"


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def resolve_weights(model_cfg: DictConfig, weights_dirs: Sequence[str], allow_download: bool = True) -> ResolvedWeights:
    """Find the weights a model config asks for; raise :class:`WeightsUnavailable` if none."""
    weights = model_cfg.get("weights")
    if weights is None or str(weights).lower() in ("null", "none", "random"):
        return ResolvedWeights(None, None, None, "random")
    if str(weights) != "imagenet":
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"model.weights={weights} is not a file")
        return ResolvedWeights(str(path), path.name, sha256_file(path), "path")
    filename = str(model_cfg.weights_file)
    searched = [Path(d).expanduser() for d in weights_dirs if d] + [keras_cache_dir()]
    for folder in searched:
        candidate = folder / filename
        if candidate.is_file():
            origin = "keras-cache" if folder == keras_cache_dir() else "local"
            return ResolvedWeights(str(candidate), filename, sha256_file(candidate), origin)
    error = "downloads disabled"
    if allow_download and model_cfg.get("weights_url"):
        try:
            fetched = keras.utils.get_file(filename, origin=str(model_cfg.weights_url), cache_subdir="models")
            return ResolvedWeights(fetched, filename, sha256_file(fetched), "download")
        except Exception as exc:  # noqa: BLE001 - any network failure means "not available"
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
    places = "\n".join(f"  - {p}" for p in searched)
    raise WeightsUnavailable(
        f"ImageNet weights for model '{model_cfg.name}' ({model_cfg.constructor}) are not available.\n"
        f"Looked for the file {filename} in:\n{places}\n"
        f"and the download from {model_cfg.get('weights_url')} failed ({error}).\n"
        "Ways out:\n"
        f"  1. put {filename} into one of those folders (or set MASKFLOW_WEIGHTS_DIR / paths.weights_dirs),\n"
        "     or pass a file: model.weights=/path/to/weights.h5\n"
        "  2. train from random initialisation: model.weights=null"
    )


def constructor(model_cfg: DictConfig):
    name = str(model_cfg.constructor)
    fn = getattr(keras.applications, name, None)
    if fn is None:
        raise ValueError(f"model.constructor={name!r} is not in keras.applications")
    return fn


def build_backbone(model_cfg: DictConfig, weights: ResolvedWeights, input_size: int | None = None) -> keras.Model:
    """The convolutional base with global average pooling: image -> embedding vector."""
    size = int(input_size or model_cfg.input_size)
    extra = model_cfg.get("kwargs")
    kwargs = OmegaConf.to_container(extra, resolve=True) if extra is not None else {}
    # Weight files are size independent; passing the path lets any input size load them.
    return constructor(model_cfg)(
        include_top=False, weights=weights.argument, input_shape=(size, size, 3), pooling="avg", **kwargs
    )


def feature_extractor(model_cfg: DictConfig, weights: ResolvedWeights, layer: str | None = None) -> keras.Model:
    """uint8-range RGB -> preprocessing -> backbone (inference mode) -> embedding, and
    also the output of ``layer`` when given (one pass for both)."""
    size = int(model_cfg.input_size)
    inputs = keras.Input((size, size, 3), name="image")
    backbone = build_backbone(model_cfg, weights)
    if layer:
        backbone = keras.Model(backbone.input, [backbone.output, backbone.get_layer(layer).output], name=backbone.name)
    outputs = backbone(Preprocess(str(model_cfg.preprocess))(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{model_cfg.name}_features")


def to_tflite(model: keras.Model) -> bytes:
    """A Keras model compiled to TFLite, float32 (the same numbers within ~1e-5)."""
    # The converter saves the model to a temporary folder first and says so at length
    # (its endpoints on stdout, "Assets written" in TF's log): nothing a user acts on.
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    finally:
        tf_log.setLevel(level)


class TFLitePredictor(LiteModel):
    """A model run through LiteRT (XNNPACK kernels): on a 2-core CPU without AVX-512,
    MobileNetV2 at 128 px runs about 2.4 ms an image against Keras's 10 (BENCHMARKS.md).
    ``model``: a Keras model (compiled here; outputs come back in its order) or a
    ``.tflite`` file. Batches of any size; one call at a time. Compiling raises whatever
    the converter raises."""

    def __init__(self, model: keras.Model | str | Path, threads: int | None = None) -> None:
        if not isinstance(model, keras.Model):
            super().__init__(model, threads)
            return
        super().__init__(to_tflite(model), threads)
        # The compiled file may order the outputs differently: match them to Keras's by shape.
        shapes = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
        self._outputs = []
        for shape in shapes:
            match = next(d for d in self.output_details if tuple(d["shape"][1:]) == tuple(shape[1:]) and d["index"] not in self._outputs)
            self._outputs.append(match["index"])


def layers_above(backbone: keras.Model, layer: str, head: keras.Model) -> keras.Model:
    """The backbone's layers above ``layer``, sharing their weights, then ``head``: the
    output of ``layer`` -> class probabilities. Training it trains the same layers of the
    full model, so the top blocks can be fine-tuned on cached features of ``layer``."""
    names = [x.name for x in backbone.layers]
    if layer not in names:
        raise ValueError(f"model.feature_layer={layer!r} is not a layer of {backbone.name}")
    start = names.index(layer)
    inputs = keras.Input(backbone.get_layer(layer).output.shape[1:], name=layer)
    tensors = {layer: inputs}
    for current in backbone.layers[start + 1 :]:
        # The layer's first call is the one that built the backbone: its inputs by name.
        sources = [t._keras_history.operation.name for t in current._inbound_nodes[0].arguments.keras_tensors]
        args = [tensors[name] for name in sources]
        tensors[current.name] = current(args if len(args) > 1 else args[0])
    return keras.Model(inputs, head(tensors[backbone.layers[-1].name]), name=f"above_{layer}")


def augmentation(aug_cfg: DictConfig, seed: int | None = None) -> keras.Sequential:
    """Photometric and geometric augmentation on uint8-range RGB; active only in training."""
    layers: list[keras.layers.Layer] = []
    if aug_cfg.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug_cfg.get("rotation"):
        layers.append(keras.layers.RandomRotation(float(aug_cfg.rotation), fill_mode="reflect", seed=seed))
    if aug_cfg.get("zoom"):
        layers.append(keras.layers.RandomZoom(float(aug_cfg.zoom), fill_mode="reflect", seed=seed))
    if aug_cfg.get("brightness"):
        layers.append(keras.layers.RandomBrightness(float(aug_cfg.brightness), value_range=(0, 255), seed=seed))
    if aug_cfg.get("contrast"):
        layers.append(keras.layers.RandomContrast(float(aug_cfg.contrast), value_range=(0, 255), seed=seed))
    if aug_cfg.get("blur"):
        layers.append(keras.layers.RandomGaussianBlur(factor=float(aug_cfg.blur), kernel_size=3, sigma=(0.1, 1.5), value_range=(0, 255), seed=seed))
    if aug_cfg.get("downscale"):  # scene faces are often 10-30 px: a close-up made to look like one
        layers.append(RandomDownscale(float(aug_cfg.downscale), min_side=int(aug_cfg.get("downscale_min_side", 12)), seed=seed))
    if aug_cfg.get("occlusion"):  # hands, hair, other heads in front of a face
        layers.append(keras.layers.RandomErasing(factor=float(aug_cfg.occlusion), scale=(0.02, 0.2), fill_value=127.0,
                                                 value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name="augment")


@keras.saving.register_keras_serializable(package="maskflow")
class RandomDownscale(keras.layers.Layer):
    """With probability ``rate`` per image, shrink it to a random side between
    ``min_side`` px and its own, then enlarge it back: the blur and blockiness of a small
    face cut from a scene, on a sharp close-up. Identity at inference."""

    def __init__(self, rate: float = 0.5, min_side: int = 12, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate, self.min_side, self.seed = float(rate), int(min_side), seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images

        size = tf.shape(images)[1:3]
        side = keras.random.uniform((), float(self.min_side), tf.cast(size[0], "float32"), seed=self._generator)
        small = tf.image.resize(images, tf.cast(tf.stack([side, side]), "int32"), method="area")
        degraded = tf.image.resize(small, size, method="bilinear")
        apply = keras.random.uniform((tf.shape(images)[0], 1, 1, 1), seed=self._generator) < self.rate
        return tf.where(apply, degraded, images)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "min_side": self.min_side, "seed": self.seed}
