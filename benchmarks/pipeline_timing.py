"""Wall time of README's main command (the whole default pipeline), cold and warm cache.

    python benchmarks/pipeline_timing.py [--out DIR] [--retrain] [extra Hydra overrides ...]

Runs ``python -m maskflow.pipeline`` in subprocesses against a fresh cache and MLflow
store under --out (default: a temporary folder), so the project's own cache is not used:
  cold     empty cache: crops, embeddings, search, evaluation, export all computed
  warm     the same command again: every stage comes from the content-addressed cache
  retrain  (--retrain) warm crops and embeddings, a new search (tune.patience changed)
and prints a Markdown table of per-stage seconds (from MLflow), wall seconds, and the
CPU (model, cores, whether it has AVX-512: training runs 3-4x slower without it).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("prepare", "tune", "finetune", "facedet", "evaluate", "export", "promote")


def cpu() -> str:
    """CPU model, core count and the vector extensions that decide training speed."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {'+'.join(vector) or 'no AVX'}{'' if 'avx512f' in flags else ' (no AVX-512)'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--retrain", action="store_true", help="also time a new search on warm crops and embeddings")
    args, overrides = parser.parse_known_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="maskflow-bench-"))
    base = [sys.executable, "-m", "maskflow.pipeline",
            f"paths.cache_dir={out}/cache", f"paths.output_dir={out}/outputs",
            f"tracking.uri=sqlite:///{out}/mlflow.db", f"tracking.artifact_root={out}/mlruns", *overrides]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [("cold", []), ("warm", [])] + ([("retrain", ["tune.patience=5"])] if args.retrain else [])
    rows = []
    for name, extra in runs:
        started = time.perf_counter()
        proc = subprocess.run(base + extra + [f"run_name=bench-{name}"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
        rows.append((name, wall, _metrics(out, f"bench-{name}")))
        print(f"{name}: {wall:.1f} s", file=sys.stderr)

    print(f"machine: {cpu()}; overrides: {overrides or 'none'}\n")
    print("| run | " + " | ".join(f"{s} s" for s in STAGES) + " | wall s |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for name, wall, m in rows:
        print(f"| {name} | " + " | ".join(f"{m.get(f'{s}_time_s', float('nan')):.1f}" for s in STAGES) + f" | {wall:.1f} |")
    cold = rows[0][2]
    print(f"\nembeddings (cold): {cold.get('tune_embed_time_s', float('nan')):.1f} s; tuning trials: "
          f"{cold.get('tune_trials', 0):.0f}, {cold.get('tune_trial_mean_s', float('nan')):.2f} s each; "
          f"test_accuracy {cold.get('test_accuracy', float('nan')):.4f}; scenes_map50 (test) {cold.get('scenes_map50', float('nan')):.4f}; "
          f"operating point {cold.get('operating_point', float('nan')):.4f}: F1 val {cold.get('scenes_val_op_f1', float('nan')):.4f}, "
          f"test {cold.get('scenes_op_f1', float('nan')):.4f}")


def _metrics(out: Path, run_name: str) -> dict[str, float]:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    client = MlflowClient()
    exp = client.get_experiment_by_name("maskflow")
    (run,) = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{run_name}'")
    return run.data.metrics


if __name__ == "__main__":
    main()
