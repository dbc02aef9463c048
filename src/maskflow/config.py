"""Where the configs, data and weights are found.

``conf/`` sits at the project root (next to ``src/``); the pipeline finds it from the
package location, so ``python -m maskflow.pipeline`` works from any working directory
of a checkout or editable install. ``MASKFLOW_CONF_DIR`` points elsewhere (e.g. for a
wheel install, where ``conf/`` is not packaged).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(os.environ.get("MASKFLOW_ROOT", Path(__file__).resolve().parents[2]))
CONF_DIR = Path(os.environ.get("MASKFLOW_CONF_DIR", PROJECT_ROOT / "conf")).resolve()


def register_configs() -> None:
    """What Hydra composes besides ``conf/``: the ``${project_root:}`` resolver and the
    structured schemas (``detect/base``); idempotent."""
    import maskflow.detection.settings  # noqa: F401 - stores detect/base in Hydra's ConfigStore on import

    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def compose_option(group: str, option: str) -> DictConfig:
    """One option of a config group (``conf/<group>/<option>.yaml``) as Hydra composes it
    (its defaults list, schema and all), interpolations left unresolved so they resolve
    where the node is placed. Inside a Hydra app it uses the app's search path."""
    if not (CONF_DIR / group / f"{option}.yaml").exists():
        raise FileNotFoundError(f"no config {group}/{option}: {CONF_DIR / group} has "
                                f"{sorted(p.stem for p in (CONF_DIR / group).glob('*.yaml'))}")
    register_configs()
    overrides = [f"{group}={option}"]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)[group]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)[group]
