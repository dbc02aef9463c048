"""Where the configs, data and weights are found.

``conf/`` sits at the project root (next to ``src/``); the pipeline finds it from the
package location, so ``python -m maskflow.pipeline`` works from any working directory
of a checkout or editable install. ``MASKFLOW_CONF_DIR`` points elsewhere (e.g. for a
wheel install, where ``conf/`` is not packaged).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(os.environ.get("MASKFLOW_ROOT", Path(__file__).resolve().parents[2]))
CONF_DIR = Path(os.environ.get("MASKFLOW_CONF_DIR", PROJECT_ROOT / "conf")).resolve()


def register_resolvers() -> None:
    """``${project_root:}`` in configs; registered once per process."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
