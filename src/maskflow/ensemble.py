"""Stage ``ensemble``: one classifier per seed, their class probabilities averaged in one model.

A single run's rare-class AP moves between seeds by more than any setting moves it
(BENCHMARKS.md). With ``train.ensemble_seeds``, this stage trains a classifier for each
further seed (``tune`` and ``finetune`` as the run's own, each cached by content and logged
as a nested MLflow run) and averages all of them in one Keras model, compiled to TFLite
like finetune's, which ``evaluate`` and ``export`` then use. Without it, finetune's model
passes through unchanged (the default).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, open_dict

from maskflow import finetune, tune
from maskflow.cache import atomic_write_json, digest, read_json, sha256_file
from maskflow.contracts import PreparedData, StageContext, TrainedModel
from maskflow.datasets import image_dataset, split_arrays

log = logging.getLogger(__name__)


def member_seeds(cfg: DictConfig) -> list[int]:
    """The seeds of the further classifiers: ``train.ensemble_seeds`` without the run's own, in order."""
    return [s for s in dict.fromkeys(int(s) for s in cfg.train.get("ensemble_seeds") or []) if s != int(cfg.seed)]


def average_models(paths: list[Path], target: Path) -> int:
    """One model whose output is the mean of the members' softmax outputs (same input size
    and classes), saved to ``target``; returns its parameter count."""
    members = [keras.models.load_model(p, compile=False) for p in paths]
    inputs = keras.Input(members[0].input_shape[1:], name="image")
    # Each member under its own name: loaded models share their own default names.
    outputs = [keras.Model(m.inputs[0], m.outputs[0], name=f"member_{i}")(inputs) for i, m in enumerate(members)]
    averaged = keras.Model(inputs, keras.layers.Average(name="mean_probabilities")(outputs), name="ensemble")
    averaged.save(target)
    return int(averaged.count_params())


def _member(cfg: DictConfig, ctx: StageContext, seed: int) -> tuple[TrainedModel, float]:
    """tune + finetune with another seed, in a nested MLflow run; (model, its compute seconds)."""
    import mlflow

    member_cfg = cfg.copy()
    with open_dict(member_cfg):
        member_cfg.seed = seed
    member_ctx = StageContext(run_dir=ctx.run_dir / f"member-seed{seed}", cache_dir=ctx.cache_dir, run_id=ctx.run_id)
    member_ctx.results["prepare"] = ctx.need("prepare")
    with mlflow.start_run(run_name=f"{cfg.run_name}-seed{seed}", nested=True) as run:
        mlflow.log_param("seed", seed)
        member_ctx.results["tune"] = tune.run(member_cfg, member_ctx)
        trained = finetune.run(member_cfg, member_ctx)
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    # What training cost when it ran (cached stages keep their original seconds): the report's figure.
    cost = sum(float(metrics.get(k, 0.0)) for k in ("tune_embed_compute_s", "tune_search_compute_s", "train_time_s"))
    return trained, cost


def _val_scores(cfg: DictConfig, prepared: PreparedData, tflite: Path) -> tuple[float, float]:
    """(val cross-entropy, val accuracy) of the averaged model on the val crops, through LiteRT."""
    from maskflow.detection.litert import LiteModel

    paths, labels = split_arrays(prepared.manifest, "val", prepared.classes)
    model = LiteModel(tflite)
    probs = [model(batch)[0] for batch in image_dataset(paths, int(cfg.model.input_size), 64).as_numpy_iterator()]
    return finetune.nll_accuracy(np.concatenate(probs), labels)


def run(cfg: DictConfig, ctx: StageContext) -> TrainedModel:
    import mlflow

    first: TrainedModel = ctx.need("finetune")
    seeds = member_seeds(cfg)
    if not seeds:
        return first
    prepared: PreparedData = ctx.need("prepare")
    members, costs = [first], []
    for seed in seeds:
        trained, cost = _member(cfg, ctx, seed)
        members.append(trained)
        costs.append(cost)
    work = ctx.cache_dir / "ensemble" / f"{cfg.model.name}-{digest([sha256_file(m.model_path) for m in members])}"
    model_path, summary_path = work / "model.keras", work / "summary.json"
    if not summary_path.exists():
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / "model.tmp.keras"
        params = average_models([m.model_path for m in members], tmp)
        tmp.replace(model_path)
        val_loss, val_accuracy = _val_scores(cfg, prepared, finetune.compiled(model_path))
        atomic_write_json(summary_path, {"val_loss": val_loss, "val_accuracy": val_accuracy, "params_total": params})
    summary = read_json(summary_path)
    tflite_path = finetune.compiled(model_path)  # already there: compiled once, with the average
    log.info("ensemble of %d classifiers (seeds %s): val accuracy %.4f, val loss %.4f", len(members),
             [int(cfg.seed), *seeds], summary["val_accuracy"], summary["val_loss"])
    metrics = {"ensemble_members": float(len(members)), "ensemble_val_accuracy": float(summary["val_accuracy"]),
               "ensemble_val_loss": float(summary["val_loss"]), "ensemble_members_compute_s": round(sum(costs), 3),
               "params_total": float(summary["params_total"])}
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
        mlflow.log_param("ensemble_seeds", [int(cfg.seed), *seeds])
    return TrainedModel(model_path=model_path, input_size=first.input_size, classes=first.classes, history=first.history,
                        metrics={**first.metrics, **metrics}, tflite_path=tflite_path)
