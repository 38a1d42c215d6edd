"""The seeded, stratified subset of labelled instances (data.labelled_fraction / labels_per_class)."""

from __future__ import annotations

import numpy as np
import pytest

from pathoucc.data.labelled import labelled_subset
from pathoucc.errors import PathouccError

LABELS = np.repeat(np.arange(10), [1000, 1100, 900, 1000, 1000, 1000, 1000, 1000, 1000, 1000])


def test_fraction_is_stratified_per_class_and_seeded() -> None:
    rows = labelled_subset(LABELS, fraction=0.005, seed=0)
    counts = np.bincount(LABELS[rows], minlength=10)
    np.testing.assert_array_equal(counts, [5, 6, 4, 5, 5, 5, 5, 5, 5, 5])  # round(0.005 * n_c)
    np.testing.assert_array_equal(rows, labelled_subset(LABELS, fraction=0.005, seed=0))
    assert not np.array_equal(rows, labelled_subset(LABELS, fraction=0.005, seed=1))
    assert np.all(np.diff(rows) > 0)


def test_larger_shares_keep_the_smaller_ones_and_tiny_classes_get_one() -> None:
    small, large = labelled_subset(LABELS, fraction=0.001, seed=2), labelled_subset(LABELS, fraction=0.01, seed=2)
    assert set(small.tolist()) <= set(large.tolist())
    assert np.bincount(LABELS[small], minlength=10).min() == 1  # 0.1 % of 900 rounds to 1, never 0


def test_per_class_count_and_unlabelled_rows() -> None:
    labels = np.concatenate([LABELS, np.full(50, -1)])
    rows = labelled_subset(labels, per_class=3, seed=0)
    assert len(rows) == 30 and (labels[rows] >= 0).all()
    np.testing.assert_array_equal(np.bincount(labels[rows]), [3] * 10)
    with pytest.raises(PathouccError, match="class 2 has only 900"):
        labelled_subset(LABELS, per_class=901)
    with pytest.raises(PathouccError, match="one of"):
        labelled_subset(LABELS)
