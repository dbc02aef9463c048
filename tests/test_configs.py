"""Every option of every config group composes and resolves."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import yaml
from omegaconf import OmegaConf

from maskflow.config import CONF_DIR

from .conftest import compose


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())  # every config group
# A launcher option needs its Hydra plugin (the dev extra installs joblib's).
PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher"}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))
           if g != "launcher" or _has_module(PLUGINS.get(p.stem, "hydra"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes(tmp_path, group, option):
    cfg = compose(tmp_path, [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["root"] and resolved["model"]["constructor"]
    assert resolved["tracking"]["uri"]


def test_defaults_point_at_the_shared_folder_and_project_store(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from maskflow.config import PROJECT_ROOT, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config")
    assert cfg.model.name == "mobilenetv2_128" and cfg.model.constructor == "MobileNetV2" and cfg.data.name == "mask-union"
    # The union is composed by Hydra from the two set configs, 3 classes.
    assert cfg.data.parts.faces.name == "mask-faces-4k" and cfg.data.parts.scenes.name == "mask-scenes-853"
    assert len(cfg.data.classes) == 3 and cfg.data.parts.scenes.finder_boxes == cfg.detect.backend
    assert list(cfg.stages) == ["prepare", "tune", "finetune", "ensemble", "facedet", "evaluate", "export", "promote"]
    # A pretrained finder (never SCRFD: non-commercial terms) labelled by the classifier;
    # every finder's settings and the MTCNN ones stay composed for --backend.
    assert cfg.detect.backend == "yunet" and cfg.detect.labels == "classifier" and cfg.detect.thresholds
    assert set(cfg.detect.finders) == {"yunet", "yunet_n", "ultraface", "scrfd", "fusion"}
    assert cfg.detect.finders.yunet.runtime == "onnxruntime"
    assert all(len(f.sha256) == 64 for n, f in cfg.detect.finders.items() if n != "fusion")
    assert cfg.facedet.data == "mask-scenes-853" and cfg.facedet.epochs > 0
    assert cfg.tracking.uri == f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    # The top blocks on cached features, one epoch: fits the 15-minute budget (BENCHMARKS.md).
    assert cfg.tune.max_trials >= 8 and cfg.train.on_features and cfg.train.epochs == 1
    assert cfg.model.feature_layer == "block_12_add"


def test_the_run_time_stills_setting_does_not_move_the_training_crops(tmp_path):
    # Prepare cuts scene faces around the finder's boxes with the data set's own stills
    # pass: a faster run-time detect setting must not change the training data (and model).
    from omegaconf import open_dict

    from maskflow.prepare import _finder_spec

    def crop_spec(overrides):
        cfg = compose(tmp_path, ["data=mask-union", *overrides])
        with open_dict(cfg):
            cfg.data = cfg.data.parts.scenes
        return _finder_spec(cfg)

    pinned = crop_spec([])
    assert pinned["name"] == "yunet" and pinned["settings"]["still_long_side"] == 1280
    assert crop_spec(["detect.finders.yunet.still_long_side=640"]) == pinned
    assert crop_spec(["++detect.finders.yunet.upscale_if_face_under=64"]) == pinned
    assert crop_spec(["data.parts.scenes.finder_boxes_still_long_side=640"])["settings"]["still_long_side"] == 640


def test_joblib_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["launcher=joblib"], return_hydra_config=True)
    assert "joblib" in cfg.hydra.launcher._target_.lower() and cfg.hydra.launcher.n_jobs == 2


def test_detector_experiments_change_only_what_they_name(tmp_path):
    default = compose(tmp_path / "a", [])
    centernet = compose(tmp_path / "f", ["experiment=centernet"])
    small = compose(tmp_path / "b", ["experiment=small_detector"])
    quick = compose(tmp_path / "c", ["experiment=quick_detector"])
    long = compose(tmp_path / "d", ["experiment=long_detector"])
    # centernet: the trained detector instead of the finder, the rest as the default
    assert centernet.detect.backend == "facedet" and centernet.detect.labels == "detector"
    assert centernet.facedet == default.facedet and centernet.data == default.data and centernet.model == default.model
    assert default.facedet.backbone == "mobilenetv2" and small.facedet.backbone == "mobilenetv2_035"
    # the small backbone: the backbone, and a larger long side (it is faster per pixel), nothing else
    assert small.facedet == {**centernet.facedet, "backbone": small.facedet.backbone}
    assert small.detect == {**centernet.detect, "long_side": small.detect.long_side} and small.detect.long_side > centernet.detect.long_side
    # quick and long: the small detector trained shorter or longer, nothing else
    assert quick.facedet.epochs < small.facedet.epochs < long.facedet.epochs
    for variant in (quick, long):
        assert variant.facedet == {**small.facedet, "epochs": variant.facedet.epochs} and variant.detect == small.detect


def test_detect_configs_follow_the_schema_and_restate_no_default(tmp_path):
    """conf/detect is checked against DetectorSettings, whose defaults live only there:
    no detect file repeats a default value."""
    from hydra.errors import ConfigCompositionException

    from maskflow.detection.settings import DetectorSettings

    with pytest.raises(ConfigCompositionException, match="min_confidence"):
        compose(tmp_path, ["detect.min_confidence=high"])
    defaults = dataclasses.asdict(DetectorSettings())
    for path in sorted((CONF_DIR / "detect").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        restated = {k: v for k, v in raw.items() if k in defaults and k != "finders" and v == defaults[k]}
        assert not restated, f"{path.name} restates defaults of DetectorSettings: {restated}"
    cfg = compose(tmp_path, [])
    assert DetectorSettings.from_stored(OmegaConf.to_container(cfg.detect, resolve=True)).backend == "yunet"


def test_an_experiment_names_its_runs_and_the_command_line_still_wins(tmp_path):
    default = compose(tmp_path / "a", [])
    accurate = compose(tmp_path / "b", ["experiment=accurate"])
    named = compose(tmp_path / "c", ["experiment=accurate", "run_name=mine"])
    # config.yaml composes before the bundles, so an experiment may name its runs
    assert accurate.run_name == f"{default.run_name}-accurate" and named.run_name == "mine"
    assert list(accurate.stages) == list(default.stages) and accurate.seed == default.seed
