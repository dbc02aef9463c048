"""What the detector reads: images, folders of them (recursive), video files, cameras and
streams, as :class:`~maskflow.imageio.Frame` objects. Every input that cannot be read is
named with its reason, never skipped silently."""
from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

import cv2

from maskflow.imageio import MIN_IMAGE_SIDE, DecodeError, Frame, read_image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def iter_sources(sources: Sequence[str], errors: list[str]) -> Iterator[Frame]:
    """The frames of ``sources`` in order; each input that fails adds ``source: reason`` to
    ``errors`` and is named on stderr."""
    for source in sources:
        if source.isdigit() or "://" in source:
            yield from _video(source, errors, camera=source.isdigit())
            continue
        path = Path(source)
        if path.is_dir():
            for p in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS):
                if p.is_file():
                    yield from _file(p, errors)
                elif p.is_dir():
                    _report(errors, str(p), "a directory named like an image or video")
                elif p.is_symlink():
                    _report(errors, str(p), "a dangling or looping symbolic link")
        elif path.is_file():
            yield from _file(path, errors)
        else:
            _report(errors, source, "not found")


def _file(path: Path, errors: list[str]) -> Iterator[Frame]:
    if path.suffix.lower() in VIDEO_EXTS:
        yield from _video(str(path), errors)
        return
    try:
        rgb = read_image(path).rgb
    except (DecodeError, OSError) as exc:
        _report(errors, str(path), getattr(exc, "reason", None) or f"unreadable: {exc}")
        return
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        _report(errors, str(path), f"tiny_image ({rgb.shape[1]}x{rgb.shape[0]} px, under {MIN_IMAGE_SIDE} px)")
        return
    yield Frame(str(path), 0, rgb, False)


def _video(source: str, errors: list[str], camera: bool = False) -> Iterator[Frame]:
    """Frames decoded on a reader thread (OpenCV releases the GIL), so decoding overlaps
    detection and classification on the other core."""
    cap = cv2.VideoCapture(int(source) if camera else source)
    if not cap.isOpened():
        _report(errors, source, "cannot open camera" if camera else "cannot open video or stream")
        return
    frames: queue.Queue = queue.Queue(maxsize=8)

    def read() -> None:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.put((index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            index += 1
        frames.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    count = 0
    while (item := frames.get()) is not None:
        count += 1
        yield Frame(source, item[0], item[1], True)
    reader.join()
    cap.release()
    if count == 0:
        _report(errors, source, "no decodable frames")


def _report(errors: list[str], source: str, reason: str) -> None:
    errors.append(f"{source}: {reason}")
    print(f"maskflow: skipped {source}: {reason}", file=sys.stderr)

