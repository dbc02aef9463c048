"""Stage ``tune``: KerasTuner searches the classification head on cached embeddings.

The backbone is frozen during the search, so its pooled embeddings are computed once per
(backbone, input size, weights, crops) and cached, with several augmented views of each
training image so the head still sees augmentation. A trial then costs seconds instead
of an epoch through the backbone. Tuner state lives in a content-addressed folder of
the cache, so re-running the same configuration resumes the search.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from maskflow import backbones
from maskflow.cache import atomic_write_json, compute_seconds, digest, file_lock
from maskflow.contracts import PreparedData, StageContext, TunedHead
from maskflow.data import read_manifest, require_training_samples
from maskflow.datasets import balanced_class_weights, image_dataset, split_arrays
from maskflow.errors import UserError

# MLflow, pandas are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.

log = logging.getLogger(__name__)

EMBEDDING_VERSION = 2  # 2: computed through TFLite (float differences ~1e-5 from Keras)


# ------------------------------------------------------------------ embeddings cache


def embedding_key(cfg: DictConfig, prepared: PreparedData, weights: backbones.ResolvedWeights) -> str:

    crops = [(r["crop"], r["label"], r["split"]) for r in read_manifest(prepared.manifest)]
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("finetune_layers", None)
    model.pop("feature_layer", None)
    key = {
        "version": EMBEDDING_VERSION, "model": model, "weights": weights.sha256, "crops": crops,
        "features": feature_layer(cfg),
        "classes": prepared.classes, "views": int(cfg.tune.views),
        "augment": OmegaConf.to_container(cfg.train.augment, resolve=True), "seed": int(cfg.seed),
    }
    extra = class_views(cfg, prepared.classes)
    if extra:  # only when set: embeddings cached before it keep their key
        key["class_views"] = extra
    return digest(key)


def class_views(cfg: DictConfig, classes: list[str]) -> dict[int, int]:
    """Class index -> views of each training image of that class, where ``tune.class_views``
    asks for more than ``tune.views``: extra augmented views of a rare class, so the head and
    the top blocks see it more often and each time a little different."""
    wanted = dict(cfg.tune.get("class_views") or {})
    unknown = sorted(set(wanted) - set(classes))
    if unknown:
        raise UserError(f"tune.class_views names {unknown}, not classes of this data ({classes}): "
                        f"use one of those names, or tune.class_views=null")
    return {classes.index(name): int(n) for name, n in sorted(wanted.items()) if int(n) > int(cfg.tune.views)}


class _BatchProgress(keras.callbacks.Callback):
    """Advances a tqdm bar per predicted batch (quiet when stderr is not a terminal)."""

    def __init__(self, bar) -> None:
        super().__init__()
        self.bar = bar

    def on_predict_batch_end(self, batch, logs=None) -> None:
        self.bar.update(1)


def feature_layer(cfg: DictConfig) -> str | None:
    """The backbone layer whose output is cached beside the embeddings for
    ``train.on_features`` (the layers above it are fine-tuned on it); None when off or
    when the model names none (finetune then keeps the tuned head, with a warning)."""
    if not cfg.train.get("on_features"):
        return None
    layer = cfg.model.get("feature_layer")
    return str(layer) if layer else None


def compute_embeddings(cfg: DictConfig, prepared: PreparedData, weights: backbones.ResolvedWeights, out_dir: Path) -> Path:
    """``train.npz``/``val.npz``/``test.npz`` with x (n, d) and y (n,), and f, the output of
    ``model.feature_layer`` (float16), when ``train.on_features``; each split written
    atomically, so an interrupted computation resumes at the missing split."""
    size = int(cfg.model.input_size)
    layer = feature_layer(cfg)
    extractor = None
    augment = backbones.augmentation(cfg.train.augment, seed=int(cfg.seed))
    # On whole batches outside tf.data: about half the cost of the same layers in a map here.
    augment_batch = tf.function(lambda x: augment(x, training=True))
    for split in ("train", "val", "test"):
        target = out_dir / f"{split}.npz"
        if target.exists():
            continue
        if extractor is None:
            extractor = _predictor(backbones.feature_extractor(cfg.model, weights, layer))
        paths, labels = split_arrays(prepared.manifest, split, prepared.classes)
        views = int(cfg.tune.views) if split == "train" else 1
        # Each pass: (paths, labels, augmented). Every image `views` times, then the extra
        # augmented views of the classes tune.class_views asks more of.
        passes = [(paths, labels, view > 0) for view in range(views)]
        for index, total in (class_views(cfg, prepared.classes).items() if split == "train" else ()):
            chosen = np.flatnonzero(labels == index)
            passes += [([paths[i] for i in chosen], labels[chosen], True)] * (total - views)
        xs, fs, ys = [], [], []
        started = time.perf_counter()
        with tqdm(total=sum(-(-len(p) // 64) for p, _, _ in passes), desc=f"embed {split}", unit="batch", disable=None) as bar:
            for pass_paths, pass_labels, augmented in passes:
                if not len(pass_paths):
                    continue
                outputs = extractor(image_dataset(pass_paths, size, batch_size=64), bar, augment_batch if augmented else None)
                xs.append(outputs[0])
                if layer:
                    fs.append(outputs[1].astype(np.float16))  # half the memory; the top blocks train in float32
                ys.append(pass_labels)
        x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{split}.{os.getpid()}.tmp.npz"
        # plain: the first rows, one per image without augmentation (the rest are views)
        np.savez(tmp, x=x, y=y, plain=np.int64(len(paths)), **({"f": np.concatenate(fs)} if layer else {}))
        tmp.replace(target)
        log.info("embeddings %s: %s in %.1f s (%d views)", split, x.shape, time.perf_counter() - started, views)
    return out_dir


def _predictor(model: keras.Model):
    """(batched dataset, progress bar, optional batch transform) -> the model's outputs as a list of arrays: through
    TFLite where the model converts (about 4x faster here), else through Keras."""
    shapes = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    try:
        fast = backbones.TFLitePredictor(model)
    except Exception as exc:  # noqa: BLE001 - any converter failure: Keras computes the same numbers, slower
        log.warning("embeddings: TFLite conversion failed (%s); computing them with Keras", str(exc).splitlines()[0][:200])
        fast = None

    def run(ds, bar, transform=None) -> list[np.ndarray]:
        parts: list[list[np.ndarray]] = [[] for _ in shapes]
        if fast is not None:
            for images in ds.as_numpy_iterator():
                if transform is not None:
                    images = transform(images).numpy()
                for part, out in zip(parts, fast(images)):
                    part.append(out)
                bar.update(1)
        else:
            if transform is not None:
                ds = ds.map(transform)
            outs = model.predict(ds, verbose=0, callbacks=[_BatchProgress(bar)])
            for part, out in zip(parts, outs if isinstance(outs, (list, tuple)) else [outs]):
                part.append(out)
        return [np.concatenate(part) if part else np.zeros((0, *shape[1:]), np.float32) for part, shape in zip(parts, shapes)]

    return run


def load_embeddings(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / f"{split}.npz") as data:
        return data["x"], data["y"]


def plain_rows(folder: Path, split: str, views: int) -> int:
    """How many leading rows of a split's embeddings are the images themselves, unaugmented."""
    with np.load(folder / f"{split}.npz") as data:
        return int(data["plain"]) if "plain" in data.files else len(data["y"]) // max(1, views)  # cached before 2026-12-05


def load_features(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The cached ``model.feature_layer`` outputs (float16) and labels of a split."""
    with np.load(folder / f"{split}.npz") as data:
        return data["f"], data["y"]


# ------------------------------------------------------------------ the search space


@keras.saving.register_keras_serializable(package="maskflow")
class BalancedNLL(keras.metrics.Metric):
    """Cross-entropy averaged within each class, then over the classes present: every
    class weighs the same however rare (``tune.objective=val_balanced_nll`` picks the head
    on it; the plain ``nll`` is nearly blind to 45 rare crops among 1,795)."""

    def __init__(self, n_classes: int, name: str = "balanced_nll", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.sums = self.add_variable(shape=(self.n_classes,), initializer="zeros", name="sums")
        self.counts = self.add_variable(shape=(self.n_classes,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        ops = keras.ops
        y_true = ops.cast(y_true, "float32")
        nll = -ops.sum(y_true * ops.log(ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0)), axis=-1)
        self.sums.assign_add(ops.sum(y_true * nll[:, None], axis=0))
        self.counts.assign_add(ops.sum(y_true, axis=0))

    def result(self):
        ops = keras.ops
        present = ops.cast(self.counts > 0, "float32")
        per_class = self.sums / ops.maximum(self.counts, 1.0)
        return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self) -> None:
        self.sums.assign(keras.ops.zeros((self.n_classes,)))
        self.counts.assign(keras.ops.zeros((self.n_classes,)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_classes": self.n_classes}


class HeadHyperModel(kt.HyperModel):
    """Dense head on a pooled embedding: layers, units, dropout, L2, label smoothing,
    class weighting and learning rate are searched (ranges from ``tune.space``)."""

    def __init__(self, n_features: int, n_classes: int, space: DictConfig, class_weights: dict[int, float]) -> None:
        super().__init__(name="mask_head")
        self.n_features = n_features
        self.n_classes = n_classes
        self.space = space
        self.class_weights = class_weights
        self.fit_seconds: list[float] = []  # wall time of each trial fitted in this process
        self.fitted: list[dict[str, Any]] = []  # hyperparameters of each trial fitted here

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        s = self.space
        inputs = keras.Input((self.n_features,), name="embedding")
        x = inputs
        dropout = hp.Float("dropout", float(s.dropout[0]), float(s.dropout[1]), step=0.1)
        l2 = hp.Float("l2", float(s.l2[0]), float(s.l2[1]), sampling="log")
        for i in range(hp.Choice("dense_layers", [int(v) for v in s.dense_layers])):
            x = keras.layers.Dropout(dropout)(x)
            x = keras.layers.Dense(hp.Choice("units", [int(v) for v in s.units]), activation="relu",
                                   kernel_regularizer=keras.regularizers.L2(l2), name=f"dense_{i}")(x)
        x = keras.layers.Dropout(dropout)(x)
        outputs = keras.layers.Dense(self.n_classes, activation="softmax", kernel_regularizer=keras.regularizers.L2(l2), name="probs")(x)
        model = keras.Model(inputs, outputs, name="head")
        self._compile(model, hp)
        return model

    def _compile(self, model: keras.Model, hp: kt.HyperParameters) -> None:
        """Overridable: the optimiser, loss and metrics of a trial."""
        s = self.space
        smoothing = hp.Choice("label_smoothing", [float(v) for v in s.label_smoothing])
        model.compile(
            optimizer=keras.optimizers.Adam(hp.Float("learning_rate", float(s.learning_rate[0]), float(s.learning_rate[1]), sampling="log")),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
            # Unsmoothed cross-entropy: comparable across label-smoothing choices.
            metrics=["accuracy", keras.metrics.CategoricalCrossentropy(name="nll"), BalancedNLL(self.n_classes)],
        )

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs):
        options = sorted({bool(v) for v in self.space.class_weighting})
        weighted = hp.Boolean("class_weighting") if len(options) > 1 else hp.Fixed("class_weighting", options[0])
        started = time.perf_counter()
        kwargs.setdefault("shuffle", False)  # the tf.data input shuffles itself; Keras would ignore it, with a warning
        history = model.fit(*args, class_weight=self.class_weights if weighted else None, **kwargs)
        self.fit_seconds.append(time.perf_counter() - started)
        self.fitted.append(dict(hp.values))
        return history


def make_tuner(cfg: DictConfig, hypermodel: HeadHyperModel, directory: Path, project: str) -> kt.Tuner:
    t = cfg.tune
    direction = "max" if "acc" in str(t.objective) else "min"
    common = dict(objective=kt.Objective(str(t.objective), direction), directory=str(directory), project_name=project,
                  overwrite=False, seed=int(cfg.seed), executions_per_trial=int(t.executions_per_trial))
    if t.algorithm == "random":
        return kt.RandomSearch(hypermodel, max_trials=int(t.max_trials), **common)
    if t.algorithm == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=int(t.max_trials), **common)
    if t.algorithm == "hyperband":
        return kt.Hyperband(hypermodel, max_epochs=int(t.epochs), factor=3, **common)
    raise ValueError(f"tune.algorithm must be random, bayesian or hyperband, got {t.algorithm!r}")


# ------------------------------------------------------------------------- the stage


@contextmanager
def kerastuner_role(distributed: DictConfig | None) -> Iterator[str | None]:
    """Set KerasTuner's ``KERASTUNER_*`` variables from ``tune.distributed`` for the
    search; yields this process's role: None (alone), "chief" or "worker"."""
    role = distributed.get("role") if distributed else None
    saved = {k: os.environ.get(k) for k in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")}
    if role is not None:
        if role not in ("chief", "worker"):
            raise ValueError(f"tune.distributed.role must be null, chief or worker; got {role!r}")
        os.environ.update(KERASTUNER_TUNER_ID="chief" if role == "chief" else str(distributed.worker_id),
                          KERASTUNER_ORACLE_IP=str(distributed.host), KERASTUNER_ORACLE_PORT=str(distributed.port))
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    active = "KERASTUNER_ORACLE_IP" in os.environ and tuner_id
    try:
        yield None if not active else ("chief" if "chief" in tuner_id else "worker")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _search_finished(tuner: kt.Tuner, cfg: DictConfig) -> bool:
    """A chief resuming a finished search must not wait for workers that never come."""
    if cfg.tune.algorithm == "hyperband":
        return False
    done = [t for t in tuner.oracle.trials.values() if str(t.status) == "COMPLETED"]
    return len(done) >= int(cfg.tune.max_trials)


def run(cfg: DictConfig, ctx: StageContext) -> TunedHead:
    import mlflow

    prepared: PreparedData = ctx.need("prepare")
    require_training_samples(prepared.manifest, prepared.classes, prepared.counts)
    weights = backbones.resolve_weights(cfg.model, list(cfg.paths.weights_dirs))
    key = embedding_key(cfg, prepared, weights)
    emb_dir = ctx.cache_dir / "embeddings" / f"{cfg.model.name}-{key}"
    started = time.perf_counter()
    with file_lock(ctx.cache_dir / "embeddings" / f".{cfg.model.name}-{key}.lock"):
        embedded_now = not all((emb_dir / f"{split}.npz").exists() for split in ("train", "val", "test"))
        compute_embeddings(cfg, prepared, weights, emb_dir)
    embed_time = time.perf_counter() - started
    embed_cost = compute_seconds(emb_dir, embed_time, embedded_now)
    x_train, y_train = load_embeddings(emb_dir, "train")
    x_val, y_val = load_embeddings(emb_dir, "val")
    n_classes = len(prepared.classes)
    if len(x_train) == 0 or len(x_val) == 0:
        raise RuntimeError(f"tune needs train and val samples; got {len(x_train)} and {len(x_val)}")

    hypermodel = HeadHyperModel(x_train.shape[1], n_classes, cfg.tune.space, balanced_class_weights(y_train, n_classes))
    search = OmegaConf.to_container(cfg.tune, resolve=True)
    # The chief and its workers share one project; None is the value before the option
    # existed, so tuner state from older runs stays valid.
    search["distributed"] = None
    if not search.get("class_views"):  # unset, as before the option existed
        search.pop("class_views", None)
    tune_key = digest({"embeddings": key, "tune": search, "seed": int(cfg.seed)})
    tuner_dir = ctx.cache_dir / "tune"
    project = f"{cfg.model.name}-{tune_key}"
    keras.utils.set_random_seed(int(cfg.seed))
    objective = str(cfg.tune.objective)
    stop = keras.callbacks.EarlyStopping(monitor=objective, mode="max" if "acc" in objective else "min",
                                         patience=int(cfg.tune.patience), restore_best_weights=True)
    train_ds, val_ds = _datasets(x_train, y_train, x_val, y_val, n_classes, int(cfg.tune.batch_size), int(cfg.seed))
    started = time.perf_counter()
    with kerastuner_role(cfg.tune.get("distributed")) as role:
        tuner = make_tuner(cfg, hypermodel, tuner_dir, project)
        if role == "chief" and _search_finished(tuner, cfg):
            log.info("tune: search %s already finished; not waiting for workers", project)
        else:
            if role:
                log.info("tune: distributed search as %s (%s), project %s", os.environ["KERASTUNER_TUNER_ID"], role, project)
            # A chief serves the oracle here until the workers have run every trial.
            try:
                tuner.search(train_ds, validation_data=val_ds, epochs=int(cfg.tune.epochs), callbacks=[stop], verbose=0)
            except RuntimeError as exc:  # KerasTuner gives up after several failed trials in a row
                log.error("tune: search stopped: %s", str(exc).splitlines()[0])
    search_time = time.perf_counter() - started
    search_cost = compute_seconds(tuner_dir / project, search_time, bool(hypermodel.fitted)) if role != "worker" else None
    out_dir = ctx.run_dir / "tune"
    out_dir.mkdir(parents=True, exist_ok=True)
    if role == "worker":
        return _worker_done(cfg, hypermodel, out_dir, emb_dir, objective, weights, search_time)

    trials = _trials(tuner)
    done = [t for t in trials if t["status"] == "COMPLETED"]
    failed = [t for t in trials if t["status"] in ("FAILED", "INVALID")]
    atomic_write_json(out_dir / "trials.json", trials)
    if not done:
        first = next((t["message"] for t in failed if t["message"]), "no message")
        raise RuntimeError(f"tune: no trial completed ({len(failed)} of {len(trials)} failed; the first error, "
                           f"last lines:\n{first.strip()[-1500:]}")
    if failed:
        log.warning("tune: %d of %d trials failed; the best of the %d that completed is used (errors in %s)",
                    len(failed), len(trials), len(done), out_dir / "trials.json")
    best_hp = tuner.get_best_hyperparameters(1)[0]
    with warnings.catch_warnings():
        # KerasTuner reloads the best trial's checkpoint into a freshly compiled model whose
        # optimizer has no slots yet: Keras notes it skips them. Only the weights are wanted.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)
        head = tuner.get_best_models(1)[0]
    head_path = tuner_dir / project / "best_head.keras"
    head.save(head_path)
    best_score = float(tuner.oracle.get_best_trials(1)[0].score)
    log.info("tune: %d trials (%s), best %s=%.4f, hp=%s", len(done), cfg.tune.algorithm, objective, best_score, best_hp.values)

    if mlflow.active_run() is not None:
        if role:
            mlflow.set_tag("tune_role", role)
        mlflow.log_params({"weights_file": weights.file or "random", "weights_sha256": weights.sha256 or "", "weights_origin": weights.origin})
        mlflow.log_params({f"hp_{k}": v for k, v in best_hp.values.items()})
        seconds = hypermodel.fit_seconds
        mlflow.log_metrics({
            "tune_trials": len(done), "tune_failed_trials": len(failed), "tune_best_score": best_score, "tune_embed_time_s": round(embed_time, 3),
            "tune_search_time_s": round(search_time, 3),
            **({"tune_trial_mean_s": float(np.mean(seconds))} if seconds else {}),
            # What embedding and searching cost when they were computed (cached runs included).
            **({"tune_embed_compute_s": embed_cost} if embed_cost is not None else {}),
            **({"tune_search_compute_s": search_cost} if search_cost is not None else {}),
            "tune_cached": float(not embedded_now and not hypermodel.fitted),
        })
        import pandas as pd

        table = pd.DataFrame([{**{"trial": t["trial_id"], "status": t["status"], "score": t["score"]},
                               **{f"hp_{k}": v for k, v in t["hyperparameters"].items()}} for t in trials])
        mlflow.log_table(table, "tune/trials.json")
        mlflow.log_artifact(str(out_dir / "trials.json"), "tune")
    return TunedHead(
        embeddings_dir=emb_dir, head_model=head_path, best_hyperparameters=dict(best_hp.values),
        best_score=best_score, objective=objective, weights_file=weights.argument,
    )


def _worker_done(cfg, hypermodel: HeadHyperModel, out_dir: Path, emb_dir: Path, objective: str,
                 weights: backbones.ResolvedWeights, search_time: float) -> TunedHead:
    """A worker's share of a distributed search: the trials it fitted (the chief holds
    the results and picks the best head)."""
    import mlflow

    worker_id = str(cfg.tune.distributed.worker_id)
    record = {"worker": worker_id, "trials": hypermodel.fitted, "fit_seconds": hypermodel.fit_seconds}
    atomic_write_json(out_dir / f"worker-{worker_id}.json", record)
    log.info("tune: worker %s fitted %d trials in %.1f s", worker_id, len(hypermodel.fitted), search_time)
    if mlflow.active_run() is not None:
        mlflow.set_tag("tune_role", f"worker:{worker_id}")
        mlflow.log_metrics({"tune_worker_trials": len(hypermodel.fitted), "tune_search_time_s": round(search_time, 3)})
        mlflow.log_artifact(str(out_dir / f"worker-{worker_id}.json"), "tune")
    return TunedHead(embeddings_dir=emb_dir, head_model=None, best_hyperparameters={}, best_score=float("nan"),
                     objective=objective, weights_file=weights.argument)


def _datasets(x_train, y_train, x_val, y_val, n_classes: int, batch_size: int, seed: int):
    """In-memory tf.data pipelines: about a third cheaper per trial than numpy inputs,
    whose adapter Keras rebuilds on every fit."""

    eye = np.eye(n_classes, dtype=np.float32)
    train = (tf.data.Dataset.from_tensor_slices((x_train, eye[y_train]))
             .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True).batch(batch_size).prefetch(2))
    val = tf.data.Dataset.from_tensor_slices((x_val, eye[y_val])).batch(1024).cache()
    return train, val


def _trials(tuner: kt.Tuner) -> list[dict[str, Any]]:
    """Every trial of the search with its status, score and hyperparameters."""
    return [
        {"trial_id": trial_id, "status": str(trial.status), "score": None if trial.score is None else float(trial.score),
         "hyperparameters": dict(trial.hyperparameters.values), "message": getattr(trial, "message", None)}
        for trial_id, trial in sorted(tuner.oracle.trials.items())
    ]
