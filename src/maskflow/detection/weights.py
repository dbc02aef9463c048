"""Model files of the pretrained finders: found by name, checked by sha256, before use.

A finder's settings name its file and the file's sha256. The file is looked up in the
folders given (a registered model's own artifacts first, then ``paths.face_weights_dir``),
so a served model never depends on ``../shared`` at run time, and a missing or corrupt
file fails at start with a message naming the file and its expected checksum.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from maskflow.cache import atomic_write_bytes, sha256_file
from maskflow.errors import UserError

log = logging.getLogger(__name__)


class FinderFileError(UserError, FileNotFoundError):
    """A finder's model file is missing or does not match its checksum."""


_VERIFIED: dict[tuple[str, float], str] = {}  # (path, mtime) -> sha256, so a file is hashed once per process


def resolve(file: str, sha256: str | None, folders: Sequence[str | Path]) -> Path:
    """The path of ``file`` in the first folder that has it, checked against ``sha256``;
    ``$MASKFLOW_FACE_WEIGHTS_DIR``, where set, is searched after ``folders`` (so the CLI
    can use a finder that a registered model does not carry)."""
    folders = [*folders, os.environ.get("MASKFLOW_FACE_WEIGHTS_DIR", "")]
    candidates = [Path(file)] if Path(file).is_absolute() else [Path(d) / file for d in folders if d]
    for path in candidates:
        if not path.is_file():
            continue
        if sha256:
            key = (str(path), path.stat().st_mtime)
            actual = _VERIFIED.get(key) or sha256_file(path)
            if actual != sha256:
                raise FinderFileError(f"face finder file {path} is corrupt: sha256 {actual}, expected {sha256} "
                                      f"(replace it with the file of that checksum)")
            _VERIFIED[key] = actual
        return path
    where = ", ".join(str(p.parent) for p in candidates) or "no folder given"
    raise FinderFileError(f"face finder file {file} (sha256 {sha256 or 'unchecked'}) not found in: {where}. "
                          "Point paths.face_weights_dir, MASKFLOW_FACE_WEIGHTS_DIR or detect --finder-dir at the folder that holds it")


def user_cache_dir() -> Path:
    """Where derived finder files are kept between runs: ``$MASKFLOW_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/maskflow`` (``~/.cache/maskflow``)."""
    if os.environ.get("MASKFLOW_CACHE_DIR"):
        return Path(os.environ["MASKFLOW_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskflow"


def free_input_size(path: Path) -> Path | bytes:
    """An ONNX file whose input has a fixed height and width, rewritten with both free
    (onnxruntime then runs it at any size, as OpenCV's engine does): the same graph and
    weights. Kept by the source's sha256 in :func:`user_cache_dir`, so the rewrite (and
    the import of ``onnx``, 0.6 s) happens once per machine; the bytes themselves where
    that folder cannot be written."""
    target = user_cache_dir() / "finders" / f"{sha256_file(path)}.free-size-v1.onnx"  # v: this rewrite's version
    if target.is_file():
        return target
    try:
        import onnx
    except ImportError as exc:
        raise FinderFileError(f"{path.name} takes one input size only, and rewriting it needs the onnx package: "
                              "pip install onnx, or set finders.<name>.runtime=opencv") from exc
    model = onnx.load(str(path))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.Clear()
        dim.dim_param = name
    for output in model.graph.output:  # the outputs' sizes follow the input's: onnxruntime infers them
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.Clear()
            dim.dim_param = f"{output.name}_{axis}"
    del model.graph.value_info[:]  # inner shapes inferred for 640x640; onnxruntime infers them again
    data = model.SerializeToString()
    try:
        atomic_write_bytes(target, data)
    except OSError as exc:
        log.info("face finder: %s not writable (%s); the size-free model stays in memory", target.parent, exc)
        return data
    return target
