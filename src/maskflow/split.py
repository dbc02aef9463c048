"""Leak-free, deterministic train/val/test split.

Images are grouped before splitting, and a whole group lands in one split:
- exact duplicates (same sha256),
- near duplicates (perceptual-hash Hamming distance <= ``phash_max_distance`` of 64 bits),
- same-source files (file-name patterns, e.g. one person's RMFD photos, "x copy 3.jpg";
  for scene sets every face of one scene image).
Groups are stratified by class: within each class they are ordered by a hash of their
key (not by listing order), and test, then val, are filled to their fractions of that
class's images. The order does not depend on which other files exist, so adding images
moves only groups that sit near a split boundary; the data report lists the realised
counts per class and split.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def source_key(stem: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that matches ``stem`` names its source (group ``source`` or 1)."""
    for pattern in patterns:
        match = re.match(pattern, stem)
        if match:
            groups = match.groupdict()
            return groups.get("source") or (match.group(1) if match.groups() else match.group(0))
    return None


def near_duplicate_pairs(phashes: Sequence[str], max_distance: int) -> list[tuple[int, int]]:
    """All index pairs whose 64-bit perceptual hashes differ in <= max_distance bits."""
    valid = [i for i, h in enumerate(phashes) if h]
    if not valid:
        return []
    values = np.array([int(phashes[i], 16) for i in valid], dtype=np.uint64)
    pairs = []
    for a in range(len(values) - 1):
        dist = np.bitwise_count(values[a + 1 :] ^ values[a])
        for b in np.nonzero(dist <= max_distance)[0]:
            pairs.append((valid[a], valid[a + 1 + int(b)]))
    return pairs


@dataclass(frozen=True)
class SplitResult:
    split: list[str]  # per item: "train" | "val" | "test"
    group: list[int]  # per item: group id
    n_groups: int
    n_near_duplicate_groups: int  # groups joined by a perceptual-hash match
    n_exact_duplicate_groups: int
    n_source_groups: int  # groups joined by a file-name source pattern
    n_mixed_label_groups: int  # groups whose members carry different labels


def assign_splits(
    sha256: Sequence[str],
    phash: Sequence[str],
    source: Sequence[str | None],
    labels: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    phash_max_distance: int,
    seed: int = 0,
    files: Sequence[str] | None = None,
) -> SplitResult:
    """Group and split samples. ``files`` names each sample's file (several face crops
    of one scene share it); duplicate statistics then count distinct files only."""
    n = len(sha256)
    files = list(files) if files is not None else [str(i) for i in range(n)]
    uf = _UnionFind(n)
    exact, near, by_source = _UnionFind(n), _UnionFind(n), _UnionFind(n)

    first_by_sha: dict[str, int] = {}
    for i, s in enumerate(sha256):
        if s in first_by_sha:
            uf.union(i, first_by_sha[s])
            if files[i] != files[first_by_sha[s]]:
                exact.union(i, first_by_sha[s])
        else:
            first_by_sha[s] = i
    if phash_max_distance >= 0:
        for a, b in near_duplicate_pairs(phash, phash_max_distance):
            uf.union(a, b)
            if sha256[a] != sha256[b] and files[a] != files[b]:
                near.union(a, b)
    first_by_source: dict[str, int] = {}
    for i, key in enumerate(source):
        if key is None:
            continue
        if key in first_by_source:
            uf.union(i, first_by_source[key])
            if files[i] != files[first_by_source[key]]:
                by_source.union(i, first_by_source[key])
        else:
            first_by_source[key] = i

    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[uf.find(i)].append(i)

    # Each group belongs to its majority class. Within a class, groups are ordered by a
    # hash of their key and the first ones (by image count) fill test, then val: the
    # split is stratified, and adding images moves only groups near a boundary.
    split = [""] * n
    group = [0] * n
    by_class: dict[str, list[tuple[float, int, list[int]]]] = defaultdict(list)
    for gid, (root, idx) in enumerate(sorted(members.items())):
        key = min(sha256[i] for i in idx)
        u = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)
        majority = max(sorted({labels[i] for i in idx}), key=lambda lab: sum(labels[i] == lab for i in idx))
        by_class[majority].append((u, gid, idx))
    for groups in by_class.values():
        total = sum(len(idx) for _, _, idx in groups)
        filled = 0
        for u, gid, idx in sorted(groups):
            # A group goes where the midpoint of its images falls on the cumulative scale.
            mid = (filled + len(idx) / 2.0) / total
            name = "test" if mid < test_fraction else "val" if mid < test_fraction + val_fraction else "train"
            filled += len(idx)
            for i in idx:
                split[i] = name
                group[i] = gid

    def count_multi(sub: _UnionFind) -> int:
        sizes: dict[int, int] = defaultdict(int)
        for i in range(n):
            sizes[sub.find(i)] += 1
        return sum(1 for s in sizes.values() if s > 1)

    mixed = sum(1 for idx in members.values() if len({labels[i] for i in idx}) > 1)
    return SplitResult(
        split=split,
        group=group,
        n_groups=len(members),
        n_near_duplicate_groups=count_multi(near),
        n_exact_duplicate_groups=count_multi(exact),
        n_source_groups=count_multi(by_source),
        n_mixed_label_groups=mixed,
    )
