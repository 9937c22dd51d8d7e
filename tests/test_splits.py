"""Patient-level k-fold and few-shot splits: disjointness, stratification, determinism, nesting."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cmrfm.data.splits import Split, fewshot_subset, kfold_splits, load_splits, save_splits
from cmrfm.errors import ConfigError

GROUPS = ("NOR", "MINF", "DCM", "HCM", "ARV")


def acdc_like(n_per_group: int = 20) -> tuple[list[str], list[str]]:
    ids = [f"patient{i:03d}" for i in range(1, 5 * n_per_group + 1)]
    return ids, [GROUPS[i // n_per_group] for i in range(len(ids))]


@pytest.mark.parametrize("trial", range(25))
def test_property_no_subject_on_both_sides(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(6, 60))
    ids = [f"s{i}" for i in rng.permutation(n)]
    groups = [str(g) for g in rng.integers(0, int(rng.integers(1, 5)), n)]
    # repeated entries (one per 2D item) collapse to one subject
    items = [(s, g) for s, g in zip(ids, groups, strict=True) for _ in range(int(rng.integers(1, 4)))]
    k = int(rng.integers(2, min(n, 8) + 1))
    splits = kfold_splits([s for s, _ in items], [g for _, g in items], k=k, seed=trial)
    assert len(splits) == k
    seen = []
    for split in splits:
        assert not set(split.train) & set(split.val)
        assert set(split.train) | set(split.val) == set(ids)
        assert split.seed == trial and split.k == k
        seen += split.val
    assert sorted(seen) == sorted(ids)  # every subject validated exactly once
    sizes = [len(s.val) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    group_of = dict(zip(ids, groups, strict=True))
    for group in set(groups):
        per_fold = [sum(group_of[s] == group for s in split.val) for split in splits]
        assert max(per_fold) - min(per_fold) <= 1, group


def test_acdc_like_is_balanced_and_deterministic():
    ids, groups = acdc_like()
    splits = kfold_splits(ids, groups, k=5, seed=3)
    group_of = dict(zip(ids, groups, strict=True))
    for split in splits:
        assert Counter(group_of[s] for s in split.val) == dict.fromkeys(GROUPS, 4)
    assert kfold_splits(ids, groups, k=5, seed=3) == splits
    assert kfold_splits(ids, groups, k=5, seed=4) != splits


def test_fewshot_stratified_nested_and_seeded():
    ids, groups = acdc_like()
    group_of = dict(zip(ids, groups, strict=True))
    five = fewshot_subset(ids, groups, 5, seed=1)
    assert sorted(group_of[s] for s in five) == sorted(GROUPS)  # one per group
    ten = fewshot_subset(ids, groups, 10, seed=1)
    assert Counter(group_of[s] for s in ten) == dict.fromkeys(GROUPS, 2)
    for k in range(1, 30):
        assert set(fewshot_subset(ids, groups, k, seed=1)) <= set(fewshot_subset(ids, groups, k + 1, seed=1))
    assert fewshot_subset(ids, groups, 5, seed=1) == five
    assert any(fewshot_subset(ids, groups, 5, seed=s) != five for s in range(2, 6))
    train = kfold_splits(ids, groups, k=5, seed=0)[0].train
    subset = fewshot_subset(list(train), [group_of[s] for s in train], 7, seed=0)
    assert set(subset) <= set(train) and len(subset) == 7


def test_unstratified_and_errors(tmp_path):
    ids = [f"s{i}" for i in range(7)]
    splits = kfold_splits(ids, None, k=3, seed=0)
    assert sorted(len(s.val) for s in splits) == [2, 2, 3]
    assert len(fewshot_subset(ids, None, 3, seed=0)) == 3
    with pytest.raises(ConfigError):
        kfold_splits(ids, None, k=8)
    with pytest.raises(ConfigError):
        kfold_splits(["a", "a", "b"], ["x", "y", "x"], k=2)
    with pytest.raises(ConfigError):
        kfold_splits(ids, ["x"], k=2)
    with pytest.raises(ConfigError):
        fewshot_subset(ids, None, 0, seed=0)
    save_splits(splits, tmp_path / "splits.json")
    loaded = load_splits(tmp_path / "splits.json")
    assert loaded == splits and isinstance(loaded[0], Split)
