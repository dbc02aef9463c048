#!/usr/bin/env bash
# Promotion as a recipe: give a registered version the champion alias only if it beats the
# current champion on the metric (same test split); otherwise it becomes challenger.
# Idempotent: re-running with the same version changes nothing.
#   pipelines/promote.sh VERSION [--metric test_accuracy] [--name maskflow]
# The pipeline runs the same logic as its last stage (stages=[...,promote]).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: pipelines/promote.sh VERSION [--metric M] [--name NAME]}"
shift
python -m maskflow.promote --version "${version}" "$@"
