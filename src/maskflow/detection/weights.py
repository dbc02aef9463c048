"""Model files of the pretrained finders: found by name, checked by sha256, before use.

A finder's settings name its file and the file's sha256. The file is looked up in the
folders given (a registered model's own artifacts first, then ``paths.face_weights_dir``),
so a served model never depends on ``../shared`` at run time, and a missing or corrupt
file fails at start with a message naming the file and its expected checksum.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from maskflow.cache import sha256_file
from maskflow.errors import UserError


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
