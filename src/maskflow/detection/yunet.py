"""YuNet (Apache-2.0), five landmarks, any input size: YuNet-s (``yunet``) and YuNet-n
(``yunet_n``), run by onnxruntime or by OpenCV's ``cv2.FaceDetectorYN`` (``runtime``).

Both engines give the same faces: onnxruntime's pass is decoded and suppressed here
exactly as ``FaceDetectorYN`` does it (a test compares them), and runs about 1.7x faster
on this CPU (BENCHMARKS.md)."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from maskflow.detection.onnx_base import OnnxFinder, PassResult, _session
from maskflow.detection.weights import free_input_size

RUNTIMES = ("onnxruntime", "opencv")
# OpenCV's log level is process-wide: finders built on several threads at once take turns,
# so no build restores the level while another still needs it quiet.
_QUIET_BUILD = threading.Lock()


class YuNetFinder(OnnxFinder):
    """YuNet on BGR input of any size, padded to a multiple of 32. Per stride (8, 16, 32)
    one prior per cell: class and objectness scores (a face scores sqrt(cls x obj)), a box
    as centre offset and log size in strides, five landmarks as offsets."""

    name = "yunet"
    tiles = False
    own_nms = True
    STRIDES = (8, 16, 32)

    # runtime: models registered before 2026-12-06 store none; they were evaluated with OpenCV's.
    def __init__(self, model_path: Path, runtime: str = "opencv", top_k: int = 5000, **kwargs) -> None:
        super().__init__(model_path, **kwargs)
        if runtime not in RUNTIMES:
            raise ValueError(f"finders.yunet.runtime={runtime!r}; choose from {list(RUNTIMES)}")
        self.runtime, self.top_k = runtime, int(top_k)
        # Candidates from this score on are suppressed; min_score filters after merging passes.
        self._candidate_score = min(self.min_score, 0.9)
        if runtime == "onnxruntime":
            self._session = _session(free_input_size(self.model_path))
            self._input = self._session.get_inputs()[0].name
            self._outputs = [o.name for o in self._session.get_outputs()]
            self._grids: dict[tuple[int, int], dict[int, np.ndarray]] = {}
            return
        # OpenCV 5 warns here that its new graph engine ignores the target it sets itself:
        # nothing a user can act on, so its log is kept to errors while the net is built.
        with _QUIET_BUILD:
            level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            try:
                self._net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320), self._candidate_score,
                                                      self.nms_iou, self.top_k)
            finally:
                cv2.utils.logging.setLogLevel(level)
        self._size: tuple[int, int] | None = None
        self._net_lock = threading.Lock()  # setInputSize + detect: one image at a time per net

    def _pass(self, rgb: np.ndarray) -> PassResult:
        return self._pass_onnxruntime(rgb) if self.runtime == "onnxruntime" else self._pass_opencv(rgb)

    def _pass_opencv(self, rgb: np.ndarray) -> PassResult:
        h, w = rgb.shape[:2]
        with self._net_lock:
            if (w, h) != self._size:
                self._net.setInputSize((w, h))
                self._size = (w, h)
            _, rows = self._net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if rows is None or not len(rows):
            return PassResult.empty()
        rows = np.asarray(rows, np.float64)
        x, y, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        return PassResult(np.stack([x, y, x + bw, y + bh], 1), rows[:, 14], rows[:, 4:14])

    def _pass_onnxruntime(self, rgb: np.ndarray) -> PassResult:
        candidates = self._candidates(rgb)
        if not len(candidates.scores):
            return candidates
        # As FaceDetectorYN: NMS over the boxes (x, y, w, h) truncated to whole pixels, best first.
        corners = candidates.corners
        rects = np.c_[corners[:, :2], corners[:, 2:] - corners[:, :2]].astype(np.int32)
        keep = cv2.dnn.NMSBoxes(rects.tolist(), candidates.scores.astype(np.float32).tolist(),
                                self._candidate_score, self.nms_iou, top_k=self.top_k)
        keep = np.asarray(keep, int).reshape(-1)
        return PassResult(corners[keep], candidates.scores[keep], candidates.landmarks[keep])

    def _candidates(self, rgb: np.ndarray) -> PassResult:
        """Every prior scoring at least the candidate score, decoded to the image's pixels."""
        h, w = rgb.shape[:2]
        padded_h, padded_w = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, padded_h, padded_w), np.float32)
        blob[0, :, :h, :w] = rgb[:, :, ::-1].transpose(2, 0, 1)  # BGR 0-255, as the model was trained
        named = dict(zip(self._outputs, self._session.run(None, {self._input: blob})))
        cells = self._cells(padded_h, padded_w)
        corners, scores, marks = [], [], []
        for stride in self.STRIDES:
            cls = np.clip(named[f"cls_{stride}"][0, :, 0], 0, 1)
            obj = np.clip(named[f"obj_{stride}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = np.flatnonzero(score >= self._candidate_score)
            if not len(keep):
                continue
            cell = cells[stride][keep]
            box = named[f"bbox_{stride}"][0][keep]
            centre = (cell + box[:, :2]) * stride
            size = np.exp(box[:, 2:]) * stride
            corners.append(np.concatenate([centre - size / 2, centre + size / 2], 1))
            marks.append((named[f"kps_{stride}"][0][keep] + np.tile(cell, 5)) * stride)
            scores.append(score[keep])
        if not scores:
            return PassResult.empty()
        return PassResult(np.concatenate(corners).astype(np.float64), np.concatenate(scores).astype(np.float64),
                          np.concatenate(marks).astype(np.float64))

    def _cells(self, height: int, width: int) -> dict[int, np.ndarray]:
        """Per stride, each cell's (column, row), row-major as the outputs list them."""
        grids = self._grids.get((height, width))
        if grids is None:
            grids = {}
            for stride in self.STRIDES:
                rows, cols = np.mgrid[: height // stride, : width // stride]
                grids[stride] = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float32)
            if len(self._grids) < 64:  # a video repeats one size; a folder of photos has a few
                self._grids[(height, width)] = grids
        return grids
