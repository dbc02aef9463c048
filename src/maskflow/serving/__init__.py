"""Serving a registered model: the MLflow pyfunc model (:mod:`.pyfunc`), our bounded REST
server (:mod:`.rest`), its client (:mod:`.client`, ``python -m maskflow.serving``) and the
batch job on Ray Data (:mod:`.batch`, ``python -m maskflow.batch``).
"""
import importlib

# Versions registered before 2026-12-05 pickled ``maskflow.serving.MaskDetectionModel``
# (``MaskClassifier`` before that), and callers used ``maskflow.serving.encode_images``:
# those names resolve to the pyfunc module, imported on first use (PEP 562).
_PYFUNC_NAMES = {"MaskDetectionModel", "MaskClassifier", "encode_images", "log_pyfunc", "meta_for", "signature",
                 "PYFUNC_API"}


def __getattr__(name: str):
    if name in _PYFUNC_NAMES:
        return getattr(importlib.import_module(f"{__name__}.pyfunc"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
