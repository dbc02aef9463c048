"""The split keeps duplicates and sources together, is stratified and stable."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from maskflow.split import assign_splits, near_duplicate_pairs, source_key


def _items(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sha = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    phash = [f"{int(v):016x}" for v in rng.integers(0, 2**63, n, dtype=np.int64)]
    labels = ["a" if i % 3 else "b" for i in range(n)]
    return sha, phash, labels


def test_near_duplicates_found_by_hamming_distance():
    base = 0x0F0F0F0F0F0F0F0F
    hashes = [f"{base:016x}", f"{base ^ 0b111:016x}", f"{base ^ (2**40 - 1):016x}"]
    assert near_duplicate_pairs(hashes, 3) == [(0, 1)]
    assert near_duplicate_pairs(hashes, 2) == []


def test_groups_never_straddle_splits():
    sha, phash, labels = _items(400)
    # Make near-duplicate pairs, exact duplicates and named sources.
    for i in range(0, 100, 2):
        phash[i + 1] = f"{int(phash[i], 16) ^ 0b101:016x}"
    sha[200] = sha[201]
    source = [f"person{i % 7}" if 300 <= i < 350 else None for i in range(400)]
    result = assign_splits(sha, phash, source, labels, 0.15, 0.15, phash_max_distance=4)
    for i in range(0, 100, 2):
        assert result.split[i] == result.split[i + 1]
    assert result.split[200] == result.split[201]
    by_person = {}
    for i in range(300, 350):
        by_person.setdefault(source[i], set()).add(result.split[i])
    assert all(len(s) == 1 for s in by_person.values())
    assert result.n_near_duplicate_groups == 50
    assert result.n_exact_duplicate_groups == 1


def test_stratified_by_class():
    sha, phash, labels = _items(1000)
    result = assign_splits(sha, phash, [None] * 1000, labels, 0.15, 0.15, phash_max_distance=0)
    for label in ("a", "b"):
        counts = Counter(s for s, lab in zip(result.split, labels) if lab == label)
        total = sum(counts.values())
        assert abs(counts["test"] / total - 0.15) < 0.01
        assert abs(counts["val"] / total - 0.15) < 0.01


def test_adding_images_moves_few_existing_ones():
    sha, phash, labels = _items(1000)
    before = assign_splits(sha, phash, [None] * 1000, labels, 0.15, 0.15, 0).split
    sha2, phash2, labels2 = _items(20, seed=1)
    after = assign_splits(sha + sha2, phash + phash2, [None] * 1020, labels + labels2, 0.15, 0.15, 0).split
    moved = sum(a != b for a, b in zip(before, after[:1000]))
    assert moved <= 20  # only groups at a split boundary can move


def test_deterministic():
    sha, phash, labels = _items(300)
    a = assign_splits(sha, phash, [None] * 300, labels, 0.2, 0.2, 6)
    b = assign_splits(sha, phash, [None] * 300, labels, 0.2, 0.2, 6)
    assert a.split == b.split


def test_source_patterns():
    patterns = [r"^\d+_\d+_(?P<source>[a-z]+)_\d+$", r"^(?P<source>.+?) copy( \d+)*$"]
    assert source_key("0_0_anhu_0012", patterns) == "anhu"
    assert source_key("0_0_0 copy 10", patterns) == "0_0_0"
    assert source_key("with_mask123", patterns) is None
