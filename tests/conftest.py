"""Shared fixtures: a composed config whose every path points into ``tmp_path``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Derived finder files (YuNet's size-free copy) go to a folder of this session, not ~/.cache;
# subprocesses (the CLIs under test) inherit it.
os.environ.setdefault("MASKFLOW_CACHE_DIR", tempfile.mkdtemp(prefix="maskflow-tests-cache-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASKFLOW_SHARED", ROOT.parent / "shared"))
FACES = SHARED / "data" / "mask-faces-4k"
SCENES = SHARED / "data" / "mask-scenes-853"
WEIGHTS = SHARED / "weights" / "keras" / "models"

needs_shared = pytest.mark.skipif(not FACES.is_dir(), reason="../shared/data is not present")


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


def compose(tmp_path: Path, overrides: list[str] = ()):
    """The real config, composed as the pipeline does, with outputs under ``tmp_path``.
    Tests name their data by folder (``data.root=``), so the data config is the folder
    set's unless they pick another (the default union reads both real sets whole)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from maskflow.config import CONF_DIR, register_configs

    register_configs()
    base = [
        f"paths.cache_dir={tmp_path}/cache",
        f"paths.output_dir={tmp_path}/outputs",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/mlruns",
    ]
    if not any(o.startswith("data=") for o in overrides):
        base.insert(0, "data=mask-faces-4k")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=base + list(overrides))


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda overrides=(): compose(tmp_path, list(overrides))


def copy_real_faces(dest: Path, per_class: int, offset: int = 0) -> Path:
    """A small class-folder set of real photos from mask-faces-4k (every k-th file)."""
    for label in ("with_mask", "without_mask"):
        files = sorted(p for p in (FACES / label).iterdir() if p.suffix.lower() in (".jpg", ".png", ".jpeg"))
        step = max(1, len(files) // per_class)
        (dest / label).mkdir(parents=True, exist_ok=True)
        for p in files[offset::step][:per_class]:
            shutil.copy(p, dest / label / p.name)
    return dest
