"""Backbone comparison report, answered from MLflow runs (never from memory).

    python -m maskflow.report [--models mobilenetv2,mobilenetv2_035,mobilenet_025] [--data mask-union] [--out DIR]

For each backbone (default: every backbone with a finished run in the experiment), the
newest finished pipeline run (with test metrics) is read; one row per backbone: train/val
accuracy, training time and parameters (the seed's comparison), then test and
cross-dataset accuracy, the held-out scenes' mAP@0.5 with its interval (what ranks a
detector) and AP per class, size and CPU latency. Training time is what embedding,
searching and fine-tuning cost when they were computed, also for a run whose stages came
from the cache (marked "cached"). Writes ``comparison.md``, ``comparison.html`` and
``comparison.png`` (bar charts) and logs them to a ``comparison`` MLflow run.
"""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path
from typing import Any, Sequence

from maskflow.config import PROJECT_ROOT
from maskflow.errors import cli

# MLflow, matplotlib are imported inside the functions that use them: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without them.

log = logging.getLogger(__name__)

COLUMNS = [  # (metric, header, format)
    ("train_accuracy", "train acc", "{:.4f}"),
    ("val_accuracy", "val acc", "{:.4f}"),
    ("training_s", "training s (embed+search+finetune)", "{:.0f}"),
    ("params_total", "params (M)", "{:.2f}"),
    ("test_accuracy", "test acc", "{:.4f}"),
    ("test_f1_macro", "test F1", "{:.4f}"),
    ("xtest", "cross-dataset acc", "{:.4f}"),
    ("model_size_mb", "size MB", "{:.1f}"),
    ("flops_b1", "GFLOPs", "{:.2f}"),
    ("latency_ms_b1", "latency ms (b1)", "{:.1f}"),
    ("throughput_b32", "img/s (b32)", "{:.0f}"),
    # Held-out scenes, detect-then-classify, with their 95% intervals over the scenes.
    ("scenes_map50", "scenes mAP@0.5", "{:.3f}"),
    ("scenes_ap50_with_mask", "AP with_mask", "{:.3f}"),
    ("scenes_ap50_without_mask", "AP without_mask", "{:.3f}"),
    ("scenes_ap50_mask_weared_incorrect", "AP mask_weared_incorrect", "{:.3f}"),
]


def backbones_of(client, experiment_id: str, data: str | None = None) -> list[str]:
    """Every backbone with a finished pipeline run in the experiment (on ``data``)."""
    query = "attributes.status = 'FINISHED' and tags.model != ''" + (f" and tags.data = '{data}'" if data else "")
    runs = client.search_runs([experiment_id], query, max_results=5000)
    return sorted({r.data.tags["model"] for r in runs if "model" in r.data.tags and "test_accuracy" in r.data.metrics})


def collect(client, experiment_id: str, models: Sequence[str], data: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        query = f"tags.model = '{model}' and attributes.status = 'FINISHED'" + (f" and tags.data = '{data}'" if data else "")
        runs = [r for r in client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50)
                if "test_accuracy" in r.data.metrics]
        if not runs:
            log.warning("no finished run with test metrics for model %s", model)
            continue
        run = runs[0]
        m = dict(run.data.metrics)
        xtest = [v for k, v in m.items() if k.startswith("xtest_") and k.endswith("_accuracy")]
        m["xtest"] = xtest[0] if len(xtest) == 1 else (sum(xtest) / len(xtest) if xtest else float("nan"))
        parts = [m.get("tune_embed_compute_s"), m.get("tune_search_compute_s"), m.get("train_time_s")]
        # Runs logged before costs were kept (2026-12-05) have no honest figure: n/a.
        # An ensemble's further classifiers (experiment=accurate) trained in nested runs: their cost counts too.
        m["training_s"] = (sum(parts) + m.get("ensemble_members_compute_s", 0.0)) if all(v is not None for v in parts) else float("nan")
        m["cached"] = bool(m.get("tune_cached")) and bool(m.get("finetune_cached"))
        m["params_total"] = m.get("params_total", float("nan")) / 1e6
        m["flops_b1"] = m.get("flops_b1", float("nan")) / 1e9
        rows.append({"model": model, "run_id": run.info.run_id, "data": run.data.tags.get("data", ""),
                     "weights": run.data.params.get("weights_file", ""), **m})
    return rows


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """A value, with its interval where the run logged one."""
    if key not in row or row[key] != row[key]:
        return "n/a"
    low, high = row.get(f"{key}_ci95_low"), row.get(f"{key}_ci95_high")
    cell = fmt.format(row[key]) + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")
    return cell + (" (cached)" if key == "training_s" and row.get("cached") else "")


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| backbone | " + " | ".join(h for _, h, _ in COLUMNS) + " | run |"
    lines = [head, "|---" * (len(COLUMNS) + 2) + "|"]
    for r in rows:
        cells = [_cell(r, key, fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | `{r['run_id'][:8]}` |")
    return "\n".join(lines) + "\n"


def charts(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per criterion, a horizontal bar per backbone (names stay readable from 1
    to a dozen backbones); scenes mAP with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("val_accuracy", "val accuracy"), ("scenes_map50", "held-out scenes mAP@0.5"),
              ("training_s", "training seconds"), ("params_total", "parameters (M)"), ("latency_ms_b1", "latency ms (b1, CPU)")]
    names = [r["model"] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 1.2 + 0.4 * len(rows)), sharey=True)
    for ax, (key, title) in zip(axes, panels):
        values = [r.get(key, float("nan")) for r in rows]
        low = [r.get(f"{key}_ci95_low") for r in rows]
        high = [r.get(f"{key}_ci95_high") for r in rows]
        errors = None
        if all(v is not None for v in low + high) and rows:
            errors = [[max(0.0, v - lo) for v, lo in zip(values, low)], [max(0.0, hi - v) for v, hi in zip(values, high)]]
        ax.barh(names, values, xerr=errors, color="tab:blue", capsize=3)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.invert_yaxis()
        if "accuracy" in key or "map" in key:
            finite = [v for v in values + [x for x in high if x is not None] if v == v]
            ax.set_xlim(max(0.0, min(finite) - 0.05) if finite else 0, min(1.0, max(finite) + 0.02) if finite else 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows)
    title = "# Backbone comparison\n\nOne row per backbone: its newest finished pipeline run in MLflow.\n\n"
    (out / "comparison.md").write_text(title + md, encoding="utf-8")
    charts(rows, out / "comparison.png")
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
        for line in md.splitlines() if not line.startswith("|---")
    )
    (out / "comparison.html").write_text(
        f"<html><body><h1>Backbone comparison</h1><table border=1 cellpadding=4>{table}</table>"
        f"<p><img src='comparison.png'></p></body></html>", encoding="utf-8")
    return {"md": out / "comparison.md", "html": out / "comparison.html", "png": out / "comparison.png"}


@cli("maskflow.report")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Backbone comparison report from MLflow runs")
    parser.add_argument("--models", default=None,
                        help="comma-separated model config names (default: every backbone with a finished run)")
    parser.add_argument("--data", default=None, help="only runs on this data config (e.g. mask-faces-4k)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/comparison)")
    parser.add_argument("--tracking-uri", default=None, help="default: the project's sqlite store")
    parser.add_argument("--experiment", default="maskflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri or f"sqlite:///{PROJECT_ROOT}/mlflow.db")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment '{args.experiment}' at {mlflow.get_tracking_uri()}: run the pipeline first")
    models = ([m.strip() for m in args.models.split(",") if m.strip()] if args.models
              else backbones_of(client, experiment.experiment_id, args.data))
    rows = collect(client, experiment.experiment_id, models, args.data)
    if not rows:
        raise SystemExit("no finished runs with test metrics for those models")
    out = args.out or PROJECT_ROOT / "outputs" / "comparison"
    files = write(rows, out)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    with mlflow.start_run(run_name="comparison", tags={"kind": "comparison"}):
        for path in files.values():
            mlflow.log_artifact(str(path), "comparison")
        mlflow.log_dict({r["model"]: r["run_id"] for r in rows}, "comparison/runs.json")
    print(markdown(rows))
    print(f"written: {', '.join(str(p) for p in files.values())}")


if __name__ == "__main__":
    main()
