"""Every option of every config group composes and resolves."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from maskflow.config import CONF_DIR

from .conftest import compose

GROUPS = ["data", "model", "tune", "train", "evaluate", "export", "tracking", "debug", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes(tmp_path, group, option):
    cfg = compose(tmp_path, [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["root"] and resolved["model"]["constructor"]
    assert resolved["tracking"]["uri"]


def test_defaults_point_at_the_shared_folder_and_project_store(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from maskflow.config import PROJECT_ROOT, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config")
    assert cfg.model.name == "mobilenetv2" and cfg.data.name == "mask-faces-4k"
    assert list(cfg.stages) == ["prepare", "tune", "finetune", "facedet", "evaluate", "export", "promote"]
    # The trained detector is the default; the MTCNN settings stay composed for --backend mtcnn.
    assert cfg.detect.backend == "facedet" and cfg.detect.labels == "detector" and cfg.detect.thresholds
    assert cfg.facedet.data == "mask-scenes-853" and cfg.facedet.epochs > 0
    assert cfg.tracking.uri == f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    assert cfg.tune.max_trials >= 20


def test_joblib_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["launcher=joblib"], return_hydra_config=True)
    assert "joblib" in cfg.hydra.launcher._target_.lower() and cfg.hydra.launcher.n_jobs == 2


def test_detector_experiments_change_only_what_they_name(tmp_path):
    default = compose(tmp_path / "a", [])
    small = compose(tmp_path / "b", ["experiment=small_detector"])
    quick = compose(tmp_path / "c", ["experiment=quick_detector"])
    long = compose(tmp_path / "d", ["experiment=long_detector"])
    large = compose(tmp_path / "e", ["experiment=large_detector"])  # the default since 2026-11-27, kept for old commands
    assert large.facedet == default.facedet and large.detect == default.detect
    assert default.facedet.backbone == "mobilenetv2" and small.facedet.backbone == "mobilenetv2_035"
    # the small backbone: the backbone, and a larger long side (it is faster per pixel), nothing else
    assert small.facedet == {**default.facedet, "backbone": small.facedet.backbone}
    assert small.detect == {**default.detect, "long_side": small.detect.long_side} and small.detect.long_side > default.detect.long_side
    # quick and long: the small detector trained shorter or longer, nothing else
    assert quick.facedet.epochs < small.facedet.epochs < long.facedet.epochs
    for variant in (quick, long):
        assert variant.facedet == {**small.facedet, "epochs": variant.facedet.epochs} and variant.detect == small.detect
