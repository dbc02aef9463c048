"""The small typed contract passed between pipeline stages.

Each stage's ``run(cfg, ctx)`` reads what earlier stages returned from ``ctx`` and
returns one of these frozen records: paths and ids, never live objects or globals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PreparedData:
    """Output of ``prepare``: crops on disk, described by a manifest."""

    manifest: Path  # CSV: one row per sample (face crop) or skipped file
    report: Path  # data_report.json
    classes: tuple[str, ...]
    digest: str  # content digest of (file, sha256, label, split) rows
    counts: dict[str, dict[str, int]]  # split -> class -> n


@dataclass(frozen=True)
class TunedHead:
    """Output of ``tune``: best head hyperparameters and the trained head."""

    embeddings_dir: Path
    head_model: Path | None  # .keras file of the best head (input: pooled embedding); None on a
    # distributed-tuning worker, whose trials the chief collects
    best_hyperparameters: dict[str, Any]
    best_score: float
    objective: str
    weights_file: str | None  # backbone weights used, or None for random init


@dataclass(frozen=True)
class TrainedModel:
    """Output of ``finetune``: the full image -> class-probabilities model."""

    model_path: Path  # .keras; input: uint8-range RGB at input_size, output: softmax
    input_size: int
    classes: tuple[str, ...]
    history: Path  # per-epoch metrics JSON
    metrics: dict[str, float] = field(default_factory=dict)
    tflite_path: Path | None = None  # the same model compiled to TFLite (float32): what detection runs


@dataclass(frozen=True)
class TrainedDetector:
    """Output of ``facedet``: the trained face-and-mask detector, or ``model_path`` None
    when ``detect.backend`` is MTCNN (nothing to train)."""

    model_path: Path | None  # .keras; input: uint8-range RGB (any size), output: CenterNet maps
    classes: tuple[str, ...]
    long_side: int  # frames are resized to this long side
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """Output of ``evaluate``: its metrics, and what it decided for the registered model."""

    metrics: dict[str, float]
    report_dir: Path
    box_calibration: dict[str, float] | None = None  # fitted on a scene set (evaluate.box_calibration); None: conf/detect's


@dataclass(frozen=True)
class Exported:
    artifacts: dict[str, Path]
    registered_model: str | None
    version: str | None
    alias: str | None


@dataclass
class StageContext:
    """What a stage may use besides the config: where to write, and earlier results."""

    run_dir: Path  # this invocation's output folder (Hydra's)
    cache_dir: Path  # content-addressed cache shared by all runs
    run_id: str | None = None  # the MLflow run of this pipeline invocation
    results: dict[str, Any] = field(default_factory=dict)

    def need(self, stage: str) -> Any:
        if stage not in self.results:
            raise RuntimeError(f"stage needs the output of '{stage}', which has not run in this pipeline")
        return self.results[stage]


def to_jsonable(record: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(record).items()}
