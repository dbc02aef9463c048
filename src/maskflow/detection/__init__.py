"""Face finders: image in, face boxes with scores (and landmarks where the model has them).

Every finder implements :class:`Finder` (``find(rgb, still) -> list[Face]``), so the
detector (:mod:`maskflow.detection.detector`), the scene evaluation and serving treat MTCNN, the
pretrained ONNX detectors (YuNet, UltraFace, SCRFD), the trained CenterNet and the fusion
of several of them alike. :func:`maskflow.detection.finders.build_finder` is the one place
that turns settings (``conf/detect``) into a finder.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from maskflow.faces import Face


class Finder(Protocol):
    """Finds faces in one RGB frame; ``still`` asks for the stills effort (upscaling)."""

    name: str

    def find(self, rgb: np.ndarray, still: bool = False) -> list[Face]: ...


__all__ = ["Face", "Finder"]
