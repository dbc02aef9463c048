"""Stage ``finetune``: backbone + tuned head, top of the backbone unfrozen, lower LR.

The head starts from the tuned weights; BatchNorm stays in inference mode (the backbone
is called with ``training=False`` and its BatchNorm layers stay frozen). Two ways:
- on images (``train=default``): the top ``model.finetune_layers`` layers, on-the-fly
  augmentation, a pass through the whole backbone per step;
- on cached features (``train=top_blocks``, the default): the layers above
  ``model.feature_layer``, trained on that layer's output cached with the embeddings,
  so an epoch skips the frozen part of the backbone.
Both use class weights when the search chose them, early stopping on val_loss with the
best epoch restored, and checkpoints in the cache so an interrupted run resumes
(``BackupAndRestore``). ``train.epochs=0`` keeps the head on the frozen backbone.
If fine-tuning does not lower the validation cross-entropy (unsmoothed, ``val_loss``)
the head-only weights are kept (param ``finetune_kept``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from maskflow import backbones
from maskflow.cache import atomic_write_json, digest, read_json
from maskflow.contracts import PreparedData, StageContext, TrainedModel, TunedHead
from maskflow.datasets import balanced_class_weights, image_dataset, split_arrays
from maskflow.distribute import strategy_for
from maskflow.tracking import pip_requirements
from maskflow.tune import class_views, feature_layer, load_embeddings, load_features, plain_rows

# MLflow is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger(__name__)

TRAIN_ACCURACY_SAMPLE = 2048  # plain training crops scored for train_accuracy after fine-tuning on features


def build_classifier(cfg: DictConfig, tuned: TunedHead, weights: backbones.ResolvedWeights) -> tuple[keras.Model, keras.Model]:
    """(full model, backbone): RGB [0, 255] -> augment -> preprocess -> backbone -> head."""
    size = int(cfg.model.input_size)
    inputs = keras.Input((size, size, 3), name="image")
    backbone = backbones.build_backbone(cfg.model, weights)
    head = keras.models.load_model(tuned.head_model, compile=False)
    x = backbones.augmentation(cfg.train.augment, seed=int(cfg.seed))(inputs)
    x = backbones.Preprocess(str(cfg.model.preprocess), name="preprocess")(x)
    x = backbone(x, training=False)  # BatchNorm statistics stay frozen
    outputs = head(x)
    return keras.Model(inputs, outputs, name=f"maskflow_{cfg.model.name}"), backbone


def inference_model(model: keras.Model) -> keras.Model:
    """The trained model without its augmentation layer (identity at inference anyway),
    so exports and serving carry only preprocessing, backbone and head."""
    size = model.input_shape[1]
    inputs = keras.Input((size, size, 3), name="image")
    x = model.get_layer("preprocess")(inputs)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name not in ("augment", "head"))
    x = backbone(x, training=False)
    outputs = model.get_layer("head")(x)
    return keras.Model(inputs, outputs, name=model.name)


def unfreeze_top(backbone: keras.Model, n_layers: int) -> int:
    """Make the top ``n_layers`` non-BatchNorm layers trainable; return how many."""
    backbone.trainable = True
    cut = max(0, len(backbone.layers) - int(n_layers))
    unfrozen = 0
    for i, layer in enumerate(backbone.layers):
        trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable and bool(layer.weights))
    return unfrozen


def count_params(model: keras.Model) -> tuple[int, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return total, trainable


def cache_key(cfg: DictConfig, prepared: PreparedData, tuned: TunedHead, weights: backbones.ResolvedWeights) -> str:
    """Digest of everything the fine-tuned model depends on. The head counts by its
    architecture and weights: not by its path (which lies inside the cache, so a moved or
    copied cache would miss), nor by its file's bytes (tune saves the best head again on
    every run, and a .keras file records when it was saved)."""
    train = OmegaConf.to_container(cfg.train, resolve=True)
    train.pop("ensemble_seeds", None)  # which further classifiers the ensemble stage trains: none of this one's inputs
    key = {
        "head": _model_content(tuned.head_model), "hp": tuned.best_hyperparameters,
        "data": prepared.digest, "model": OmegaConf.to_container(cfg.model, resolve=True),
        "train": train, "seed": int(cfg.seed), "weights": weights.sha256,
    }
    extra = class_views(cfg, list(prepared.classes))
    if extra:  # the cached features the top blocks train on hold these views
        key["class_views"] = extra
    return digest(key)


def _model_content(path: Path) -> str:
    """sha256 of a saved model's config and weight values."""
    model = keras.models.load_model(path, compile=False)
    h = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def run(cfg: DictConfig, ctx: StageContext) -> TrainedModel:
    import mlflow

    prepared: PreparedData = ctx.need("prepare")
    tuned: TunedHead = ctx.need("tune")
    weights = backbones.resolve_weights(cfg.model, list(cfg.paths.weights_dirs))
    work = ctx.cache_dir / "finetune" / f"{cfg.model.name}-{cache_key(cfg, prepared, tuned, weights)}"
    model_path, history_path = work / "model.keras", work / "history.json"
    size = int(cfg.model.input_size)

    cached = model_path.exists() and history_path.exists()
    if cached:  # its train_time_s is what training cost when it ran
        log.info("finetune: cached model %s", model_path)
        summary = read_json(history_path)
    else:
        summary = _train(cfg, prepared, tuned, weights, work, model_path)
        atomic_write_json(history_path, summary)
    tflite_path = compiled(model_path)

    if mlflow.active_run() is not None:
        for epoch, row in enumerate(summary["history"], start=1):
            mlflow.log_metrics({f"ft_{k}": float(v) for k, v in row.items()}, step=epoch)
        mlflow.log_metrics({k: summary[k] for k in ("val_accuracy", "val_loss", "train_accuracy", "train_time_s", "params_total", "params_trainable", "epochs_run")})
        mlflow.log_metric("finetune_cached", float(cached))
        mlflow.log_params({"finetune_kept": summary["kept"], "finetune_unfrozen_layers": summary["unfrozen_layers"]})
        _log_model(model_path, ctx)
    out = ctx.run_dir / "finetune"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(history_path, out / "history.json")
    metrics = {k: float(summary[k]) for k in ("val_accuracy", "val_loss", "train_accuracy", "train_time_s", "params_total", "params_trainable")}
    return TrainedModel(model_path=model_path, input_size=size, classes=prepared.classes, history=history_path, metrics=metrics,
                        tflite_path=tflite_path)


def compiled(model_path: Path) -> Path:
    """``model.tflite`` beside the model: the classifier detection runs (about 3x faster
    per face on this CPU than Keras), compiled once and cached with the model."""
    target = model_path.with_suffix(".tflite")
    if not target.exists():
        tmp = target.with_suffix(".tmp.tflite")
        tmp.write_bytes(backbones.to_tflite(keras.models.load_model(model_path, compile=False)))
        tmp.replace(target)
    return target


def nll_accuracy(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Unsmoothed cross-entropy and accuracy: comparable across label smoothing settings."""
    p = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return float(-np.log(p).mean()), float((probs.argmax(axis=1) == y).mean())


def _train(cfg, prepared, tuned, weights, work: Path, model_path: Path) -> dict[str, Any]:

    train = cfg.train
    _, y_tr = split_arrays(prepared.manifest, "train", prepared.classes)
    keras.utils.set_random_seed(int(cfg.seed))
    strategy = strategy_for(str(train.get("distribute", "auto")))
    with strategy.scope():
        model, backbone = build_classifier(cfg, tuned, weights)
    # Head-only numbers come from the cached embeddings (the same inputs the frozen model
    # sees, without a pass through the backbone); they are what fine-tuning must beat.
    head = model.get_layer("head")
    x_va, y_va_emb = load_embeddings(tuned.embeddings_dir, "val")
    x_tr, _ = load_embeddings(tuned.embeddings_dir, "train")
    base_loss, base_acc = nll_accuracy(head.predict(x_va, batch_size=1024, verbose=0), y_va_emb)
    base_train_acc = nll_accuracy(head.predict(x_tr[: len(y_tr)], batch_size=1024, verbose=0), y_tr)[1]  # view 0 = plain
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    kept, unfrozen = "head_only", 0
    val_loss, val_acc, train_acc = base_loss, base_acc, base_train_acc
    epochs = int(train.epochs)
    if epochs > 0 and train.get("on_features") and feature_layer(cfg) is None:
        log.warning("finetune: model %s names no model.feature_layer, so train.on_features has nothing to train; keeping "
                    "the tuned head (set model.feature_layer=<layer>, or train=default to fine-tune on images)", cfg.model.name)
        epochs = 0
    if epochs > 0:
        head_weights = model.get_weights()
        fit = _fit_on_features if train.get("on_features") else _fit_on_images
        history, unfrozen, ft_loss, ft_acc, measure_train = fit(cfg, model, backbone, tuned, prepared, strategy, work)
        if ft_loss < base_loss:
            kept, val_loss, val_acc = "finetuned", ft_loss, ft_acc
            train_acc = measure_train()
        else:
            log.warning("finetune: val_nll %.4f did not beat the head-only %.4f; keeping the head-only weights", ft_loss, base_loss)
            model.set_weights(head_weights)
    train_time = time.perf_counter() - started
    total, trainable = count_params(model)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "model.tmp.keras"
    inference_model(model).save(tmp)
    tmp.replace(model_path)
    log.info("finetune: kept %s; val_accuracy %.4f (head only %.4f); %.1f s", kept, val_acc, base_acc, train_time)
    return {
        "history": history, "kept": kept, "unfrozen_layers": unfrozen, "epochs_run": len(history),
        "head_only_val_accuracy": base_acc, "head_only_val_loss": base_loss,
        "val_accuracy": val_acc, "val_loss": val_loss, "train_accuracy": train_acc, "train_time_s": round(train_time, 3),
        "params_total": total, "params_trainable": trainable,
    }


def _compile(cfg, model: keras.Model, hp: dict[str, Any]) -> None:
    model.compile(optimizer=keras.optimizers.Adam(float(cfg.train.learning_rate)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(hp.get("label_smoothing", 0.0))),
                  metrics=["accuracy"])


def _callbacks(train, work: Path) -> list[keras.callbacks.Callback]:
    """Early stopping on val_loss (best epoch restored) and resumable checkpoints in the cache."""
    return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(train.patience), restore_best_weights=True),
            keras.callbacks.BackupAndRestore(str(work / "backup"), delete_checkpoint=True)]


def _class_weights(hp: dict[str, Any], y: np.ndarray, n_classes: int) -> dict[int, float] | None:
    return balanced_class_weights(y, n_classes) if hp.get("class_weighting") else None


def _fit_on_images(cfg, model, backbone, tuned: TunedHead, prepared: PreparedData, strategy, work: Path):
    """The top ``model.finetune_layers`` layers and the head, on augmented images."""
    train, hp = cfg.train, tuned.best_hyperparameters
    size, n_classes = int(cfg.model.input_size), len(prepared.classes)
    paths_tr, y_tr = split_arrays(prepared.manifest, "train", prepared.classes)
    paths_va, y_va = split_arrays(prepared.manifest, "val", prepared.classes)
    with strategy.scope():
        unfrozen = unfreeze_top(backbone, int(cfg.model.finetune_layers))
        _compile(cfg, model, hp)
    callbacks = [*_callbacks(train, work),
                 keras.callbacks.ModelCheckpoint(str(work / "best.weights.h5"), monitor="val_loss", save_best_only=True,
                                                 save_weights_only=True)]
    batch = int(train.batch_size) * strategy.num_replicas_in_sync
    ds_tr = image_dataset(paths_tr, size, batch, y_tr, n_classes, shuffle=True, seed=int(cfg.seed))
    ds_va = image_dataset(paths_va, size, int(cfg.evaluate.batch_size), y_va, n_classes)
    fitted = model.fit(ds_tr, validation_data=ds_va, epochs=int(train.epochs), callbacks=callbacks,
                       steps_per_epoch=train.get("steps_per_epoch") or None,
                       class_weight=_class_weights(hp, y_tr, n_classes), shuffle=False, verbose=2)  # the dataset shuffles itself
    ft_loss, ft_acc = nll_accuracy(model.predict(image_dataset(paths_va, size, int(cfg.evaluate.batch_size)), verbose=0), y_va)

    def train_accuracy() -> float:
        return nll_accuracy(model.predict(image_dataset(paths_tr, size, int(cfg.evaluate.batch_size)), verbose=0), y_tr)[1]

    return _rows(fitted), unfrozen, ft_loss, ft_acc, train_accuracy


def _fit_on_features(cfg, model, backbone, tuned: TunedHead, prepared: PreparedData, strategy, work: Path):
    """The layers above ``model.feature_layer`` and the head, on that layer's output
    cached with the embeddings (their views are the augmentation)."""
    import tensorflow as tf

    train, hp = cfg.train, tuned.best_hyperparameters
    n_classes, layer = len(prepared.classes), feature_layer(cfg)
    f_tr, y_tr = load_features(tuned.embeddings_dir, "train")
    n_plain = plain_rows(tuned.embeddings_dir, "train", int(cfg.tune.views))
    f_va, y_va = load_features(tuned.embeddings_dir, "val")
    eye = np.eye(n_classes, dtype=np.float32)
    with strategy.scope():
        top = backbones.layers_above(backbone, layer, model.get_layer("head"))
        unfrozen = unfreeze_top(backbone, len(backbone.layers) - 1 - [x.name for x in backbone.layers].index(layer))
        _compile(cfg, top, hp)
    batch = int(train.batch_size) * strategy.num_replicas_in_sync

    def batches(f, y=None, shuffle=False):
        ds = tf.data.Dataset.from_tensor_slices(f if y is None else (f, eye[y]))
        if shuffle:
            ds = ds.shuffle(len(f), seed=int(cfg.seed), reshuffle_each_iteration=True)
        cast = (lambda x: tf.cast(x, tf.float32)) if y is None else (lambda x, t: (tf.cast(x, tf.float32), t))
        return ds.batch(batch if shuffle else 256).map(cast).prefetch(2)

    callbacks = _callbacks(train, work)
    fitted = top.fit(batches(f_tr, y_tr, shuffle=True), validation_data=batches(f_va, y_va), epochs=int(train.epochs),
                     callbacks=callbacks, steps_per_epoch=train.get("steps_per_epoch") or None,
                     class_weight=_class_weights(hp, y_tr, n_classes), shuffle=False, verbose=2)  # the dataset shuffles itself
    ft_loss, ft_acc = nll_accuracy(top.predict(batches(f_va), verbose=0), y_va)

    def train_accuracy() -> float:  # view 0 (the plain crops); a sample of them bounds the cost
        plain = np.random.default_rng(int(cfg.seed)).permutation(n_plain)[:TRAIN_ACCURACY_SAMPLE]
        return nll_accuracy(top.predict(batches(f_tr[plain]), verbose=0), y_tr[plain])[1]

    return _rows(fitted), unfrozen, ft_loss, ft_acc, train_accuracy


def _rows(fitted) -> list[dict[str, float]]:
    return [{k: float(v[i]) for k, v in fitted.history.items()} for i in range(len(fitted.history["loss"]))]


def _log_model(model_path: Path, ctx: StageContext) -> None:
    """The trained Keras model as an MLflow model artifact (``finetune/model``)."""
    import mlflow
    from mlflow.models import infer_signature

    model = keras.models.load_model(model_path, compile=False)
    example = np.zeros((1, *model.input_shape[1:]), np.float32)  # RGB 0-255, the model preprocesses
    try:
        mlflow.tensorflow.log_model(model, name="finetune_model", pip_requirements=pip_requirements(),
                                    signature=infer_signature(example, np.asarray(model(example, training=False))))
    except Exception as exc:  # noqa: BLE001 - a flavour hiccup must not lose the run
        log.warning("mlflow.tensorflow.log_model failed (%s); logging the .keras file instead", exc)
        mlflow.log_artifact(str(model_path), "finetune")
