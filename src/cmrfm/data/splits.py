"""Patient-level data splits: stratified k-fold and few-shot subsets, with their seeds recorded.

Splits are always over subjects, never over 2D items, so no subject's slices appear on both
sides. Stratification keeps each group's (disease, infarct yes/no, vendor...) share similar in
every fold. Everything is deterministic given the seed, and the seed travels with the split.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cmrfm.errors import ConfigError, InputError


@dataclass(frozen=True)
class Split:
    """One fold of a k-fold split.

    Attributes:
        fold: Fold index (0-based); the validation part is this fold.
        k: Number of folds.
        seed: Seed the split was drawn with.
        train: Training subject ids (sorted).
        val: Validation subject ids (sorted).
    """

    fold: int
    k: int
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]


def _subject_groups(subject_ids: Sequence[str], groups: Sequence[Hashable] | None) -> dict[str, Hashable]:
    """Subject -> group, de-duplicated; the same subject with two groups is an error."""
    if groups is not None and len(groups) != len(subject_ids):
        raise ConfigError(f"{len(subject_ids)} subject ids but {len(groups)} groups")
    mapping: dict[str, Hashable] = {}
    for i, subject in enumerate(subject_ids):
        group = None if groups is None else groups[i]
        if subject in mapping and mapping[subject] != group:
            raise ConfigError(f"subject {subject!r} appears with two groups ({mapping[subject]}, {group})")
        mapping[str(subject)] = group
    return mapping


def _stratified_order(mapping: dict[str, Hashable], seed: int) -> list[str]:
    """Subjects interleaved across groups in a seeded order.

    Each group is shuffled, then groups are taken round-robin in proportion to their sizes, so
    any prefix of the result is as close to stratified as its length allows.
    """
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[str]] = {}
    for subject in sorted(mapping):
        by_group.setdefault(repr(mapping[subject]), []).append(subject)
    queues = {g: list(rng.permutation(members)) for g, members in sorted(by_group.items())}
    total = len(mapping)
    taken = dict.fromkeys(queues, 0)
    order: list[str] = []
    tie_break = {g: float(v) for g, v in zip(queues, rng.random(len(queues)), strict=True)}
    for position in range(total):
        # The group furthest behind its proportional share goes next.
        def deficit(g: str, position: int = position) -> tuple[float, float]:
            share = len(queues[g]) * (position + 1) / total
            return (share - taken[g], tie_break[g])

        group = max((g for g in queues if taken[g] < len(queues[g])), key=deficit)
        order.append(str(queues[group][taken[group]]))
        taken[group] += 1
    return order


def kfold_splits(
    subject_ids: Sequence[str], groups: Sequence[Hashable] | None = None, k: int = 5, seed: int = 0
) -> list[Split]:
    """Patient-level k-fold splits stratified by group.

    Args:
        subject_ids: Subject ids (repeats allowed, e.g. one per 2D item; they are merged).
        groups: Group of each entry of ``subject_ids`` (None: unstratified).
        k: Number of folds (2 ≤ k ≤ number of subjects).
        seed: Random seed; recorded in every :class:`Split`.

    Returns:
        ``k`` splits; validation parts are disjoint and cover every subject once.

    Raises:
        ConfigError: On bad ``k`` or a subject given two groups.
    """
    mapping = _subject_groups(subject_ids, groups)
    if not 2 <= k <= len(mapping):
        raise ConfigError(f"k must be between 2 and the number of subjects ({len(mapping)}), got {k}")
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[str]] = {}
    for subject in sorted(mapping):
        by_group.setdefault(repr(mapping[subject]), []).append(subject)
    fold_of: dict[str, int] = {}
    offset = 0
    for _, members in sorted(by_group.items()):
        # Round-robin inside each group, continuing where the last group stopped: every fold
        # gets within one subject of its share of each group, and fold sizes differ by ≤ 1.
        for j, subject in enumerate(rng.permutation(members)):
            fold_of[str(subject)] = (offset + j) % k
        offset = (offset + len(members)) % k
    subjects = sorted(mapping)
    splits = []
    for i in range(k):
        val = tuple(s for s in subjects if fold_of[s] == i)
        train = tuple(s for s in subjects if fold_of[s] != i)
        splits.append(Split(fold=i, k=k, seed=seed, train=train, val=val))
    return splits


def fewshot_subset(
    train_ids: Sequence[str], groups: Sequence[Hashable] | None, k_subjects: int, seed: int
) -> list[str]:
    """``k_subjects`` training subjects drawn stratified by group.

    Subsets drawn with the same seed are nested (the 5-subject subset contains the 2-subject
    one), so few-shot curves compare like with like.

    Args:
        train_ids: Candidate subjects (repeats merged).
        groups: Group of each entry (None: unstratified).
        k_subjects: How many subjects (1 ≤ k ≤ number of candidates).
        seed: Random seed.

    Returns:
        Sorted subject ids.
    """
    mapping = _subject_groups(train_ids, groups)
    if not 1 <= k_subjects <= len(mapping):
        raise ConfigError(f"k_subjects must be between 1 and {len(mapping)}, got {k_subjects}")
    return sorted(_stratified_order(mapping, seed)[:k_subjects])


def save_splits(splits: Sequence[Split], path: str | Path) -> None:
    """Writes splits (with their seeds) as JSON."""
    Path(path).write_text(json.dumps([asdict(s) for s in splits], indent=1))


def load_splits(path: str | Path) -> list[Split]:
    """Reads splits written by :func:`save_splits`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return [
            Split(fold=d["fold"], k=d["k"], seed=d["seed"], train=tuple(d["train"]), val=tuple(d["val"]))
            for d in data
        ]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(path, f"not a splits file ({err})") from None
