#!/usr/bin/env bash
# Train and evaluate several backbones (Hydra multirun), then write the comparison report
# (Markdown, HTML, bar charts) from their MLflow runs.
#   pipelines/compare_backbones.sh [model,model,...] [extra Hydra overrides...]
# Example: pipelines/compare_backbones.sh mobilenetv2,mobilenetv2_035,mobilenet_025
# Parallel on 2 cores: add launcher=joblib (see conf/launcher/joblib.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
models="${1:-mobilenetv2,mobilenetv2_035,mobilenet_025}"
shift || true
python -m maskflow.pipeline -m "model=${models}" "$@"
python -m maskflow.report --models "${models}"
