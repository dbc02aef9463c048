"""How far more training and a larger backbone take the face-and-mask detector.

The pipeline's facedet stage trains on TensorFlow; a GPU machine that has Keras's JAX
backend but no TensorFlow can still train the same model (same ``facedet.build_model``,
``loss_fn`` and augmentation, same train split, same learning-rate schedule) with this
script, so budgets far beyond the 2-core CPU's can be measured. The trained
``facedet.keras`` files are then scored here with the real pipeline code:

    # here: the train split's scenes and the backbone weights, into an ignored folder
    python benchmarks/facedet_capacity.py pack --out .gpu
    # on the GPU machine (KERAS_BACKEND=jax), one run per setting, one after another
    python benchmarks/facedet_capacity.py train --pack .gpu --alpha 1.0 --epochs 84 --out $OUT/large.keras
    # here: val, then test, of each trained detector (any registered model supplies the stored settings)
    python benchmarks/facedet_settings.py --model models:/maskflow/1 --face-model large.keras --rows stored --split val

Samples are made by worker processes (each batch from its own seed), so the order of
augmentations differs from the pipeline's single generator; everything else is the
stage's own code. ``--deadline-s`` stops training early (and says so) rather than lose
the run to a machine's time limit; a run stopped that way ends mid-schedule (learning
rate still high), so its scores say little about what the budget would reach.

Measured (2026-11-27, one H200, jax 0.11.2, Keras 3.15.1 carried as a wheel with namex,
optree, omegaconf and antlr4-python3-runtime): MobileNetV2 1.0, one run at a time, 42
epochs in 212 s and 84 in 352 s; the sample workers, not the GPU (about 20 ms per step),
set the pace. Scored here: the 42-epoch run reproduces the CPU-trained detector of the
same config within noise, and 84 epochs score no better than 42
(``benchmarks/facedet_capacity_gpu.out.md``). Processes sharing one GPU take turns (an
earlier lease ran three side by side at about 6 s per epoch each), so run settings one
after another.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {0.35: "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
           1.0: "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"}


def pack(out: Path, data: Path, weights_dir: Path) -> None:
    """The train split's images and annotations (split as the pipeline splits it), the
    class order, and the backbone weights, in one folder to carry to another machine."""
    from maskflow.evaluate_scenes import split_names

    names = sorted(split_names(data, "train"))
    (out / "scenes" / "images").mkdir(parents=True, exist_ok=True)
    (out / "scenes" / "annotations").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(data / "images" / name, out / "scenes" / "images" / name)
        shutil.copy2(data / "annotations" / f"{Path(name).stem}.xml", out / "scenes" / "annotations" / f"{Path(name).stem}.xml")
    for file in WEIGHTS.values():
        shutil.copy2(weights_dir / file, out / file)
    classes = ["mask_weared_incorrect", "with_mask", "without_mask"]  # prepare's order (sorted)
    (out / "train.json").write_text(json.dumps({"names": names, "classes": classes}))
    print(f"packed {len(names)} train scenes and {len(WEIGHTS)} weight files into {out}")


_ITEMS: list = []  # the loaded scenes, shared with the sample workers by fork


def _batch(args: tuple) -> tuple:
    import numpy as np

    from maskflow.facedet import _augment, repeat_factors

    index, seed, size, crop, long_side, scale_range, num_classes = args
    rng = np.random.default_rng([seed, index])
    weights = repeat_factors([labels for _, _, labels in _ITEMS], num_classes)
    picks = rng.choice(len(_ITEMS), size=size, p=weights / weights.sum())
    pairs = []
    for i in picks:
        rgb, boxes, labels = _ITEMS[i]
        s = long_side / max(rgb.shape[:2]) * rng.uniform(*scale_range)
        pairs.append(_augment(rgb, boxes, labels, s, crop, num_classes, rng))
    return np.stack([p[0] for p in pairs]).astype("float32"), np.stack([p[1] for p in pairs]).astype("float32")


def train(args: argparse.Namespace) -> None:
    import multiprocessing as mp

    import keras

    from maskflow import facedet
    from maskflow.evaluate_scenes import voc_items

    spec = json.loads((args.pack / "train.json").read_text())
    classes, n = spec["classes"], len(spec["classes"])
    _ITEMS.extend(facedet._load(voc_items(args.pack / "scenes", set(spec["names"])), classes)[0])
    keras.utils.set_random_seed(args.seed)
    steps = max(1, len(_ITEMS) // args.batch_size)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=str(args.pack / WEIGHTS[args.alpha]),
                                              input_shape=(None, None, 3), alpha=args.alpha)
    model = facedet.build_model(n, backbone, facedet.FEATURES["MobileNetV2"], args.width)
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate * 0.1, args.epochs * steps,
                                                      warmup_target=args.learning_rate, warmup_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=facedet.loss_fn(n))
    deadline = time.monotonic() + args.deadline_s
    stopped = {"early": False}

    class Deadline(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() > deadline:
                stopped["early"] = True
                self.model.stop_training = True

    jobs = ((b, args.seed, args.batch_size, args.crop, args.long_side, tuple(args.scale_range), n) for b in range(args.epochs * steps))
    started = time.perf_counter()
    with mp.get_context("fork").Pool(args.workers) as pool:
        fitted = model.fit(pool.imap(_batch, jobs, chunksize=4), epochs=args.epochs, steps_per_epoch=steps, verbose=2,
                           callbacks=[Deadline()])
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Saved without the optimizer's state (a third of the size): the same model, uncompiled.
    bare = facedet.build_model(n, keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3),
                                                                 alpha=args.alpha), facedet.FEATURES["MobileNetV2"], args.width)
    bare.set_weights(model.get_weights())
    bare.save(args.out)
    losses = fitted.history["loss"]
    summary = {"backend": keras.backend.backend(), "alpha": args.alpha, "epochs_asked": args.epochs, "epochs_done": len(losses),
               "stopped_at_deadline": stopped["early"], "train_time_s": round(seconds, 1), "first_loss": losses[0],
               "final_loss": losses[-1], "params": int(model.count_params()), "train_scenes": len(_ITEMS),
               "steps_per_epoch": steps, "batch_size": args.batch_size, "long_side": args.long_side, "width": args.width}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="the train split and weights, into one folder to carry")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mask-scenes-853")
    p.add_argument("--weights-dir", type=Path, default=ROOT.parent / "shared" / "weights" / "keras" / "models")
    t = sub.add_parser("train", help="train one detector from a pack (any Keras backend)")
    t.add_argument("--pack", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True, help="the .keras file to write (a .json summary beside it)")
    t.add_argument("--alpha", type=float, default=0.35, choices=sorted(WEIGHTS))
    t.add_argument("--epochs", type=int, default=42)
    t.add_argument("--batch-size", type=int, default=8)  # conf/facedet's defaults from here on
    t.add_argument("--crop", type=int, default=384)
    t.add_argument("--long-side", type=int, default=512)
    t.add_argument("--scale-range", type=float, nargs=2, default=(0.6, 1.4))
    t.add_argument("--width", type=int, default=64)
    t.add_argument("--learning-rate", type=float, default=0.002)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    t.add_argument("--deadline-s", type=float, default=float("inf"), help="stop after the epoch that passes this")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.out, args.data, args.weights_dir)
    else:
        train(args)


if __name__ == "__main__":
    sys.exit(main())
